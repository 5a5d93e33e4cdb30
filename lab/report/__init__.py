"""Results to reports: results, statistics, findings, markdown, plots, compare, writing. No TensorFlow."""

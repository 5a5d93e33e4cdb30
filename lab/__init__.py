"""The transfer-learning lab as a library: data, models, freezing, timing and reports."""

"""Running: training and timing, seeding, distribution, saving, the environment, Keras internals."""

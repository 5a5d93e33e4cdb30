"""The basement: timing, seeding, distribution, saving, TensorBoard's HParams, the environment, Keras internals."""

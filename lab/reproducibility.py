"""One seed for every generator, and TensorFlow's op determinism on request."""

from __future__ import annotations

import keras
import tensorflow as tf


def seed_everything(seed: int) -> None:
    """Seeds Python's `random`, NumPy and TensorFlow (and with them Keras) from one number."""
    keras.utils.set_random_seed(seed)


def enable_determinism() -> None:
    """Turns on TensorFlow's op determinism: slower deterministic kernels, and no XLA.

    The suite compiles without XLA anyway (see lab/models.py), but its timings still change.
    """
    tf.config.experimental.enable_op_determinism()

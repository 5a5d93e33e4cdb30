"""One seed for every generator, and TensorFlow's op determinism on request."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import keras
import tensorflow as tf

from lab.runtime import keras_internals


def seed_everything(seed: int) -> None:
    """Seeds Python's `random`, NumPy, Keras and TensorFlow from one number.

    What `keras.utils.set_random_seed` does, except that TensorFlow's kernel cache is kept.
    Setting TensorFlow's global seed empties that cache, so that stateful random kernels start
    their sequences again; it also drops every traced function's instantiation, and a function
    run again after it (a compiled model reused for another seed) is set up anew at its next
    call: 0.7 s for MobileNetV2's training step on two CPU cores. The lab has no stateful random
    kernel to restart: Keras draws with stateless operations, and every tf.data shuffle has its
    own seed. Python's, NumPy's, Keras's and TensorFlow's seeds are set as Keras sets them.
    """
    # Private: TensorFlow offers no way to set its global seed and keep its kernel cache.
    with keras_internals.kernel_cache_kept():
        keras.utils.set_random_seed(seed)


@contextlib.contextmanager
def seeded_after(seed: int) -> Iterator[None]:
    """Seeds every generator with `seed` again when the block ends, however it ends.

    For a product that a session makes once and its tests share (a saved base model, a rate
    search): the test that makes it draws from the generators while the others find it made, so
    without this what a test draws next would depend on which tests ran before it.
    """
    try:
        yield
    finally:
        seed_everything(seed)


def enable_determinism() -> None:
    """Turns on TensorFlow's op determinism: slower deterministic kernels, and no XLA.

    Keras's `jit_compile="auto"` (`--xla auto`) then compiles without XLA; its timings change too.
    """
    tf.config.experimental.enable_op_determinism()

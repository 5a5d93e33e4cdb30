"""One pass of a model over a dataset of batches, with its graph traced once.

Keras's `predict` feeds its traced function one batch at a time and traces it for the first
batch's shape; a smaller last batch (100 validation images in batches of 32) makes it trace
again, with the batch dimension relaxed. For a model that predicts once or twice, as every
feature extraction, prefix pass and evaluation here does, that second trace doubles the
cost of the pass. Tracing it first for the dataset's own element spec, whose batch dimension
is already unknown, gives the one graph every batch runs through.
"""

from __future__ import annotations

import keras
import tensorflow as tf


def predict(model: keras.Model, batches: tf.data.Dataset):
    """`model.predict(batches)`, traced once however the batches' sizes vary.

    Args:
        model: any Keras model.
        batches: a dataset of batched inputs, or of (inputs, labels) pairs, as `predict` takes.

    Returns:
        What `model.predict` returns: an array, or a list of arrays for several outputs.
    """
    if _feeds_batches_as_they_are(model):
        model.make_predict_function()
        model.predict_function.get_concrete_function([batches.element_spec])
    return model.predict(batches, verbose=0)


def _feeds_batches_as_they_are(model: keras.Model) -> bool:
    """Whether `predict` hands its traced function one of the dataset's batches per call, unchanged.

    Not when it runs eagerly (nothing is traced), with several steps per call, or under a
    distribution strategy (which feeds per-replica values).
    """
    return (
        not model.run_eagerly
        and model.steps_per_execution == 1
        and not tf.distribute.has_strategy()
        and model.distribute_strategy is tf.distribute.get_strategy()
    )

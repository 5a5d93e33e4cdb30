"""The fast path for a frozen base: compute its pooled features once, train the head on them.

A frozen base computes the same features for an image every epoch; caching them turns each
epoch into a pass of a single Dense layer. The trained head then goes back on the base.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from lab.inputs.data import batched_pairs
from lab.networks.models import HEAD_LAYER_NAME, compile_for_classification
from lab.runtime import prediction


def feature_extractor(classifier: keras.Model) -> keras.Model:
    """The classifier up to its head's input: preprocessing, base and pooling."""
    head = classifier.get_layer(HEAD_LAYER_NAME)
    return keras.Model(classifier.inputs, head.input, name="feature_extractor")


def extract_features(classifier: keras.Model, *images: tf.data.Dataset) -> tuple[np.ndarray, ...]:
    """Runs the frozen part of `classifier` once over each dataset of batched images in [0, 1].

    One extractor serves them all: each new model traces its own predict graph, which takes
    longer than the pass itself at the smoke profile's sizes.
    """
    extractor = feature_extractor(classifier)
    return tuple(prediction.predict(extractor, batches) for batches in images)


def standalone_head(classifier: keras.Model) -> keras.Model:
    """A model of just the classifier's head, on pooled features, starting from its weights."""
    head = classifier.get_layer(HEAD_LAYER_NAME)
    features = keras.Input((head.input.shape[-1],), name="features")
    copy = keras.layers.Dense(head.units, activation=head.activation, name=HEAD_LAYER_NAME, dtype=head.dtype_policy)
    model = keras.Model(features, copy(features), name="cached_features_head")
    copy.set_weights(head.get_weights())
    compile_for_classification(model)
    return model


def features_dataset(
    features: np.ndarray, labels: np.ndarray, batch_size: int, seed: int | None
) -> tf.data.Dataset:
    """Batches of (features, labels), shuffled each epoch with `seed` unless it is None."""
    return batched_pairs(features, labels, batch_size, seed)


def put_head_back(classifier: keras.Model, head_model: keras.Model) -> None:
    """Copies the head trained on cached features into the full classifier."""
    classifier.get_layer(HEAD_LAYER_NAME).set_weights(
        head_model.get_layer(HEAD_LAYER_NAME).get_weights()
    )

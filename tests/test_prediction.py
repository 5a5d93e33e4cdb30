"""lab/runtime/prediction.py: one pass over batches of uneven size, traced once, predicting what Keras does."""

import keras
import numpy as np
import tensorflow as tf

from lab.runtime import prediction


def counted_model() -> tuple[keras.Model, list[int]]:
    """A small Dense model, the same weights on every call, and a list its traced predict steps append to."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(3, activation="softmax")])
    traces = []
    keras_step = model.predict_step

    def predict_step(data):
        traces.append(1)
        return keras_step(data)

    model.predict_step = predict_step
    return model, traces


# 100 inputs in batches of 32: the last batch holds 4.
PAIRS = tf.data.Dataset.from_tensor_slices(
    (np.random.default_rng(0).random((100, 8), dtype=np.float32), np.zeros(100, np.int64))
).batch(32)


def test_a_pass_with_a_smaller_last_batch_is_traced_once_and_predicts_what_keras_predicts():
    keras_model, keras_traces = counted_model()
    expected = keras_model.predict(PAIRS, verbose=0)
    # What the helper is for: Keras traces again for the smaller last batch.
    assert len(keras_traces) == 2

    model, traces = counted_model()
    predicted = prediction.predict(model, PAIRS)

    assert len(traces) == 1
    np.testing.assert_array_equal(predicted, expected)
    prediction.predict(model, PAIRS.map(lambda images, labels: images))
    assert len(traces) == 2, "another element structure is another graph, traced once"


def test_an_eager_model_predicts_without_a_graph():
    model, traces = counted_model()
    model.compile(loss="sparse_categorical_crossentropy", run_eagerly=True)

    assert prediction.predict(model, PAIRS).shape == (100, 3)
    assert len(traces) == 4, "one eager step per batch"

"""Experiment 1: train the lab's small CNN on tf_flowers, and save it for experiment 2.

tf_flowers, classes counted from the dataset's metadata, every image resized to 32x32, cast
to float and divided by 255. Three 5x5 convolutions with max pooling, Flatten, Dense(128) and
a softmax over the classes. The session fixture `saved_base_model` trains and saves it once;
this test checks what it built and records what it measured.
"""

import keras
import numpy as np
import pytest

from lab.finetune.freezing import trainable_parameter_count
from lab.measurements import FitResult
from lab.networks import models
from lab.networks.training import predicted_classes
from lab.report.results import Table
from lab.runtime import storage

pytestmark = pytest.mark.experiment(1)

FILTER_WIDTHS = {"lab": (32, 64, 128), "narrow": (16, 32, 64)}
LAB_CNN = Table("The lab CNN on tf_flowers", keys=("filters",))


@pytest.mark.parametrize("filters", FILTER_WIDTHS.values(), ids=FILTER_WIDTHS.keys())
def test_base_model(filters, seed, flowers_small, saved_base_model, profile, record):
    saved = saved_base_model(filters, seed)
    model = storage.load_model(saved["path"])

    conv, pool = keras.layers.Conv2D, keras.layers.MaxPooling2D
    expected_types = [conv, pool] * 3 + [keras.layers.Flatten, keras.layers.Dense, keras.layers.Dense]
    assert [type(layer) for layer in model.layers] == expected_types
    assert [layer.filters for layer in model.layers if isinstance(layer, conv)] == list(filters)
    convolutions = [layer for layer in models.feature_layers(model) if isinstance(layer, conv)]
    assert all(layer.kernel_size == (5, 5) and layer.padding == "same" for layer in convolutions)
    assert model.output_shape == (None, flowers_small.num_classes)
    assert len(model.trainable_weights) == 10
    assert model.count_params() == models.lab_cnn_parameter_count(
        flowers_small.num_classes, flowers_small.image_size, filters
    )

    history = saved["history"]

    assert storage.weights_digest(model) == saved["weights_digest"]
    probe = flowers_small.scaled("validation", limit=len(saved["probe_predictions"]))
    np.testing.assert_allclose(model.predict(probe, verbose=0), saved["probe_predictions"], rtol=1e-5, atol=1e-6)

    result = FitResult(**history)
    predictions = predicted_classes(model, flowers_small.batches("validation", profile.batch_size))
    record(
        LAB_CNN,
        {
            "filters": "-".join(map(str, filters)),
            "dataset": f"{flowers_small.name} ({flowers_small.source})",
            "input": f"{flowers_small.image_size}px",
            "train images": saved["train_images"],
            "validation images": saved["validation_images"],
            "epochs": saved["epochs"],
            "parameters": model.count_params(),
            "trainable parameters": trainable_parameter_count(model),
            **result.summary(),
            "training loss fell": result.loss_fell(),
        },
        label=f"filters {'-'.join(map(str, filters))}",
        curves=result.curves(),
        validation=flowers_small,
        predictions=predictions,
    )

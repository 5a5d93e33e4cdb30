"""Experiment 2: reuse the flowers CNN's convolutions on CIFAR-10.

Load the model experiment 1 saved, keep every convolution and pooling layer, put a new
Dense(128, relu) and Dense(10, softmax) on the flattened output, and train the whole model on
CIFAR-10. The same architecture from a random initialisation, on the same data and budget,
shows what the transferred weights are worth.
"""

import numpy as np
import pytest

from lab.finetune.freezing import trainable_parameter_count
from lab.networks import models
from lab.networks.training import fit_on, lab_cnn_name, predicted_classes, tensorboard_callbacks
from lab.report.results import Table
from lab.runtime import atomic, storage
from lab.runtime.hparams import FitSettings

pytestmark = pytest.mark.experiment(2)

LAB_FILTERS = (32, 64, 128)
TRANSFER = Table("Transferred against scratch on CIFAR-10", keys=("initialisation",))


@pytest.mark.parametrize("initialisation", ["transferred", "scratch"])
def test_transfer_to_cifar10(
    initialisation, seed, saved_base_model, cifar10, profile, keras_verbose, tensorboard_dir, record
):
    saved = saved_base_model(LAB_FILTERS, seed)
    saved_file_digest = atomic.file_digest(saved["path"])
    saved_model = storage.load_model(saved["path"])
    saved_feature_weights = [layer.get_weights() for layer in models.feature_layers(saved_model)]
    if initialisation == "transferred":
        base = saved_model
    else:
        base = models.lab_cnn(saved_model.output_shape[-1], cifar10.image_size, LAB_FILTERS)

    model = models.transfer_model(base, cifar10.num_classes)
    models.compile_for_classification(model)

    carried = models.feature_layers(model)
    assert [(type(layer), layer.name) for layer in carried] == [
        (type(layer), layer.name) for layer in models.feature_layers(saved_model)
    ]
    carried_equal = [
        all(np.array_equal(a, b) for a, b in zip(layer.get_weights(), weights, strict=True))
        for layer, weights in zip(carried, saved_feature_weights, strict=True)
    ]
    if initialisation == "transferred":
        assert all(carried_equal), "transferred layers differ from the saved model before training"
    else:
        assert not any(carried_equal[0::2]), "scratch convolutions equal the saved ones"
    assert model.output_shape == (None, 10)
    assert len(model.trainable_weights) == 10

    settings = FitSettings(
        experiment=2, seed=seed, backbone=lab_cnn_name(LAB_FILTERS), weights=initialisation,
        image_size=cifar10.image_size, train_images=cifar10.train_count,
    )
    result = fit_on(
        model, cifar10, profile.cnn_epochs, profile.batch_size, seed, keras_verbose,
        tensorboard_callbacks(tensorboard_dir, settings=settings),
    )

    assert atomic.file_digest(saved["path"]) == saved_file_digest, "training changed the saved base file"
    record(
        TRANSFER,
        {
            "initialisation": initialisation,
            "dataset": f"{cifar10.name} ({cifar10.source})",
            "train images": cifar10.train_count,
            "validation images": cifar10.validation_count,
            "epochs": profile.cnn_epochs,
            "parameters": model.count_params(),
            "trainable parameters": trainable_parameter_count(model),
            **result.summary(),
            "training loss fell": result.loss_fell(),
        },
        label=initialisation,
        curves=result.curves(),
        validation=cifar10,
        predictions=predicted_classes(model, cifar10.batches("validation", profile.batch_size)),
    )

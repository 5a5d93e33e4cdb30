"""Fit helpers: variables made at compile, TensorBoard logs (--tensorboard), a structural run's profile overrides."""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest
import tensorflow as tf

from lab.config import build_config
from lab.errors import LabInputError
from lab.networks import models, training
from lab.networks.backbones import get_backbone
from lab.profiles import FULL, SMOKE, with_overrides
from lab.runtime.hparams import FitSettings

SETTINGS = FitSettings(experiment=5, seed=0, backbone="tiny", weights="none", image_size=4, train_images=16)


def tiny_classifier() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def tiny_batches() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(
        (rng.random((16, 4), dtype=np.float32), rng.integers(0, 3, 16))
    ).batch(8)


def logged_scalars(folder) -> set[str]:
    """The scalar tags of every event file in `folder`."""
    tags = set()
    for path in folder.glob("events.out.tfevents.*"):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            tags.update(value.tag for value in event.summary.value)
    return tags


def test_test_names_become_safe_folders(tmp_path):
    log_dir = training.tensorboard_log_dir(
        str(tmp_path), ["test_5_gradual_unfreeze", "test_unfreeze_strategy[vgg16-gradual blocks/3]"], 7
    )
    expected = tmp_path / "test_5_gradual_unfreeze" / "test_unfreeze_strategy-vgg16-gradual-blocks-3" / "seed7"
    assert log_dir == str(expected)


def test_each_fit_writes_its_learning_curves_in_its_own_folder(tmp_path):
    log_dir = training.tensorboard_log_dir(str(tmp_path), ["test_module", "test_case[a]"], 0)
    model = tiny_classifier()
    for stage in ("stage0", "stage1"):
        training.fit(
            model, tiny_batches(), 2, validation=tiny_batches(),
            callbacks=training.tensorboard_callbacks(log_dir, stage, settings=SETTINGS),
        )

    for stage in ("stage0", "stage1"):
        folder = tmp_path / "test_module" / "test_case-a" / "seed0" / stage
        assert {"epoch_loss", "epoch_accuracy"} <= logged_scalars(folder / "train")
        assert {"epoch_loss", "epoch_accuracy"} <= logged_scalars(folder / "validation")


def test_no_tensorboard_folder_adds_no_callback():
    assert training.tensorboard_callbacks(None, "stage0", settings=SETTINGS) == []


def test_tensorboard_folder_that_is_a_file_is_refused(tmp_path):
    not_a_folder = tmp_path / "logs"
    not_a_folder.write_text("")
    with pytest.raises(LabInputError, match="--tensorboard .* is a file"):
        build_config("smoke", "mock", None, 0, None, None, "none", None, tensorboard_dir=str(not_a_folder))


def test_overrides_replace_every_epoch_count_and_backbone_size():
    cheap = with_overrides(FULL, epochs=2, backbone_image_size=32)

    changed = {
        field.name
        for field in dataclasses.fields(FULL)
        if getattr(cheap, field.name) != getattr(FULL, field.name)
    }
    assert changed == {"cnn_epochs", "backbone_epochs", "cached_head_epochs", "stage_epochs", "backbone_image_size"}
    assert {cheap.cnn_epochs, cheap.backbone_epochs, cheap.cached_head_epochs, cheap.stage_epochs} == {2}
    assert [cheap.image_size_of(get_backbone(name)) for name in ("vgg16", "resnet50")] == [32, 32]
    assert FULL.image_size_of(get_backbone("vgg16")) == 224
    assert with_overrides(SMOKE) == SMOKE


@pytest.mark.parametrize(
    ("overrides", "option"),
    [({"epochs": 1}, "--epochs must be at least 2"), ({"backbone_image_size": 31}, "--image-size must be at least 32")],
)
def test_overrides_too_small_for_the_experiments_are_refused(overrides, option):
    with pytest.raises(LabInputError, match=option):
        with_overrides(FULL, **overrides)


def two_input_classifier() -> keras.Model:
    """Two inputs, as the top of a stage cut across a residual connection has."""
    first, second = keras.Input((4,)), keras.Input((4,))
    outputs = keras.layers.Dense(3, activation="softmax")(keras.layers.Add()([first, second]))
    return keras.Model([first, second], outputs)


@pytest.mark.parametrize("inputs", [1, 2])
def test_compile_creates_every_variable_so_the_first_fit_traces_once(inputs):
    # A variable created while tracing makes TensorFlow trace the train step a second time.
    model = two_input_classifier() if inputs == 2 else keras.Sequential([keras.Input((4,)), keras.layers.Dense(3)])
    models.compile_for_classification(model)
    features, labels = next(iter(tiny_batches().unbatch().batch(16)))
    x = [features, features] if inputs == 2 else features
    created = []

    def recording(next_creator, **kwargs):
        created.append(kwargs.get("name"))
        return next_creator(**kwargs)

    with tf.variable_creator_scope(recording):
        model.fit(x, labels, validation_data=(x, labels), epochs=1, batch_size=8, verbose=0)

    assert created == []
    assert model.optimizer.built and model.metrics_variables

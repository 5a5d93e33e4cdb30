"""TensorBoard's HParams dashboard (--tensorboard): each fit's settings and final metrics, as TensorBoard reads them."""

from __future__ import annotations

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorboard.backend.event_processing import plugin_event_multiplexer
from tensorboard.plugins.hparams import metadata
from tensorboard.util import tensor_util

from lab.networks import training
from lab.runtime import hparams

SETTINGS = hparams.FitSettings(
    experiment=5, seed=3, backbone="mobilenet_v2", weights="imagenet", image_size=32, train_images=16,
    strategy="gradual-blocks", schedule="cosine", rates="head 1.0e-03, top 3.3e-04", lr_factor=3.0,
)


def tiny_classifier() -> keras.Model:
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def random_batches() -> tf.data.Dataset:
    rng = np.random.default_rng(0)
    return tf.data.Dataset.from_tensor_slices(
        (rng.random((16, 4), dtype=np.float32), rng.integers(0, 3, 16))
    ).batch(8)


def read_runs(log_dir) -> plugin_event_multiplexer.EventMultiplexer:
    """Every run under `log_dir`, loaded by the reader TensorBoard's own server uses."""
    runs = plugin_event_multiplexer.EventMultiplexer()
    runs.AddRunsFromDirectory(str(log_dir))
    runs.Reload()
    return runs


def session_hparams(runs: plugin_event_multiplexer.EventMultiplexer, run: str) -> dict:
    """The settings a run's HParams session start info holds, as plain values."""
    content = runs.PluginRunToTagToContent(metadata.PLUGIN_NAME)[run][metadata.SESSION_START_INFO_TAG]
    start = metadata.parse_session_start_info_plugin_data(content)
    return {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}


def last_scalar(runs: plugin_event_multiplexer.EventMultiplexer, run: str, tag: str) -> tuple[int, float]:
    """The step and value of a run's last scalar `tag`."""
    event = runs.Tensors(run, tag)[-1]
    return event.step, float(tensor_util.make_ndarray(event.tensor_proto))


def test_every_fit_logs_its_settings_and_final_metrics_as_an_hparams_session(tmp_path):
    model = tiny_classifier()
    # Two stages of one session, then a later session's first stage into the same folder.
    fits = {"stage0": (0, "cosine"), "stage1": (1, "cosine"), "stage0-run2": (0, "constant")}
    results = {}
    for run, (stage, schedule) in fits.items():
        settings = hparams.FitSettings(**{**SETTINGS.hparams(), "stage": stage, "schedule": schedule})
        results[run] = training.fit(
            model, random_batches(), 1, validation=random_batches(),
            callbacks=training.tensorboard_callbacks(str(tmp_path), f"stage{stage}", settings=settings),
        )

    runs = read_runs(tmp_path)
    for run, (stage, schedule) in fits.items():
        result = results[run]
        assert session_hparams(runs, run) == {**SETTINGS.hparams(), "stage": stage, "schedule": schedule}
        assert [last_scalar(runs, run, name) for name in hparams.METRICS] == [
            (1, pytest.approx(result.final_validation_accuracy)),
            (1, pytest.approx(result.loss[-1])),
            (1, pytest.approx(sum(result.epoch_seconds))),
        ]
        # The learning curves of keras.callbacks.TensorBoard sit under the session, as its metrics' groups.
        assert {f"{run}/train", f"{run}/validation"} <= set(runs.Runs())


def test_settings_that_do_not_apply_are_left_out():
    settings = hparams.FitSettings(
        experiment=1, seed=0, backbone="lab_cnn-32-64-128", weights="none", image_size=32, train_images=100
    )
    assert settings.hparams() == {
        "experiment": 1, "seed": 0, "backbone": "lab_cnn-32-64-128", "weights": "none",
        "image_size": 32, "train_images": 100,
    }


def test_final_metrics_are_of_the_epoch_early_stopping_kept():
    result = training.FitResult(
        loss=[1.0, 0.8, 0.9], accuracy=[0.3, 0.5, 0.4], validation_accuracy=[0.2, 0.6, 0.5],
        epoch_seconds=[2.0, 1.0, 1.0], stopped_epoch=3, best_epoch=2,
    )
    assert hparams.final_metrics(result) == {"validation_accuracy": 0.6, "loss": 0.8, "seconds": 4.0}


def test_a_fit_without_validation_data_logs_no_validation_accuracy():
    result = training.FitResult(loss=[1.0], accuracy=[0.3], validation_accuracy=[], epoch_seconds=[2.0])
    assert hparams.final_metrics(result) == {"loss": 1.0, "seconds": 2.0}

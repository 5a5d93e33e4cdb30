"""Training loops shared by the experiments: fit with epoch timing and a compact history."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from lab.inputs.data import ImageData
from lab.measurements import FitResult
from lab.runtime import prediction, timesplit
from lab.runtime.hparams import FitSettings, HParamsLog
from lab.runtime.timing import EpochTimes


def fit(
    model: keras.Model,
    train: tf.data.Dataset,
    epochs: int,
    validation: tf.data.Dataset | None = None,
    verbose: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    early_stopping_patience: int | None = None,
) -> FitResult:
    """Trains `model` (already compiled) and returns its per-epoch history and epoch times.

    Its epochs count as tracing and training in the session's time split (`lab.runtime.timesplit`).

    `callbacks` run after the epoch timer, so that their work is not timed as training. An
    `HParamsLog` among them (`tensorboard_callbacks`) gets the fit's result.

    Args:
        early_stopping_patience: stop once validation accuracy has not improved for this
            many epochs, and end with the weights of its best epoch
            (`keras.callbacks.EarlyStopping`, `restore_best_weights=True`); None trains
            every epoch. Needs `validation`.
    """
    timer = EpochTimes()
    stopping = []
    if early_stopping_patience is not None:
        if validation is None:
            raise ValueError("early stopping watches validation accuracy: pass validation data")
        stopping = [
            keras.callbacks.EarlyStopping(
                monitor="val_accuracy", mode="max", patience=early_stopping_patience, restore_best_weights=True
            )
        ]
    history = model.fit(
        train, validation_data=validation, epochs=epochs, callbacks=[timer, *callbacks, *stopping], verbose=verbose
    ).history
    timesplit.add_fit(timer.seconds)
    loss = [float(value) for value in history["loss"]]
    result = FitResult(
        loss=loss,
        accuracy=[float(value) for value in history.get("accuracy", [])],
        validation_accuracy=[float(value) for value in history.get("val_accuracy", [])],
        epoch_seconds=timer.seconds,
        stopped_epoch=len(loss) if stopping else None,
        best_epoch=stopping[0].best_epoch + 1 if stopping else None,
    )
    for callback in callbacks:
        if isinstance(callback, HParamsLog):
            callback.log_result(result)
    return result


def fit_on(
    model: keras.Model,
    data: ImageData,
    epochs: int,
    batch_size: int,
    seed: int,
    verbose: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    early_stopping_patience: int | None = None,
) -> FitResult:
    """Trains `model` on `data`'s training images (shuffled with `seed`), validating on the rest.

    `early_stopping_patience` as in `fit`.
    """
    return fit(
        model,
        data.batches("train", batch_size, seed=seed),
        epochs,
        validation=data.batches("validation", batch_size),
        verbose=verbose,
        callbacks=callbacks,
        early_stopping_patience=early_stopping_patience,
    )


def predicted_classes(model: keras.Model, batches: tf.data.Dataset) -> np.ndarray:
    """The class `model` predicts for each input of a dataset of batches (of inputs, or of pairs).

    Its seconds count as evaluation in the session's time split.
    """
    with timesplit.evaluating():
        return np.argmax(prediction.predict(model, batches), axis=-1)


def tensorboard_log_dir(root: str, names: Sequence[str], seed: int) -> str:
    """Where one run's TensorBoard logs go: `root/<name>/.../seed<seed>`.

    Each name (a test module, a test with its parameters) becomes a folder name that is safe
    on any file system: `test_x[resnet50-none]` becomes `test_x-resnet50-none`.
    """
    folders = [re.sub(r"[^A-Za-z0-9._=-]+", "-", name).strip("-") for name in names]
    return os.path.join(root, *folders, f"seed{seed}")


def tensorboard_callbacks(
    log_dir: str | None, *subfolders: str, settings: FitSettings
) -> list[keras.callbacks.Callback]:
    """Callbacks that log a fit into `log_dir/subfolders...` (`unused_folder`); none without `log_dir`.

    A `keras.callbacks.TensorBoard` writes the learning curves, and an `HParamsLog` the fit's
    `settings` and final metrics, for TensorBoard's HParams dashboard. Give every fit of one
    test its own subfolder, named for what sets it apart (`stage1`).
    """
    if log_dir is None:
        return []
    folder = unused_folder(os.path.join(log_dir, *subfolders))
    return [keras.callbacks.TensorBoard(folder), HParamsLog(folder, settings)]


def unused_folder(folder: str) -> str:
    """`folder`, or if it exists (an earlier session's logs), the first of `folder-run2`, `-run3`... that does not.

    A fit logged into a folder that holds logs would start again at step 0 and draw over their
    curves, and TensorBoard would pair the earlier session's settings with this one's metrics.
    """
    candidate, number = folder, 1
    while os.path.exists(candidate):
        number += 1
        candidate = f"{folder}-run{number}"
    return candidate


# Validation images whose predictions are stored with a saved model, to check a reload.
PROBE_IMAGES = 16


def lab_cnn_name(filters: Sequence[int]) -> str:
    """The lab CNN with these filter widths, as TensorBoard's settings name it: `lab_cnn-32-64-128`."""
    return "-".join(["lab_cnn", *map(str, filters)])


def train_lab_cnn(
    flowers: ImageData,
    filters: tuple[int, int, int],
    epochs: int,
    batch_size: int,
    seed: int,
    path: str,
    verbose: int = 0,
    tensorboard_dir: str | None = None,
) -> dict:
    """Experiment 1's training: the lab CNN on tf_flowers, saved atomically to `path`.

    With `tensorboard_dir` the fit logs there (`tensorboard_callbacks`).

    Returns:
        JSON-able metadata: the path, filters, image counts, the `FitResult` history, a digest
        of the weights and the predictions on `PROBE_IMAGES` validation images at save time.
    """
    from lab.networks.models import compile_for_classification, lab_cnn
    from lab.runtime.reproducibility import seed_everything
    from lab.runtime.storage import atomic_save_model, weights_digest

    seed_everything(seed)
    model = lab_cnn(flowers.num_classes, flowers.image_size, filters)
    compile_for_classification(model)
    settings = FitSettings(
        experiment=1, seed=seed, backbone=lab_cnn_name(filters), weights="none",
        image_size=flowers.image_size, train_images=flowers.train_count,
    )
    callbacks = tensorboard_callbacks(tensorboard_dir, settings=settings)
    result = fit_on(model, flowers, epochs, batch_size, seed, verbose, callbacks)
    atomic_save_model(model, path)
    probe = flowers.scaled("validation", limit=PROBE_IMAGES)
    return {
        "path": path,
        "filters": list(filters),
        "train_images": flowers.train_count,
        "validation_images": flowers.validation_count,
        "epochs": epochs,
        "history": result.as_dict(),
        "weights_digest": weights_digest(model),
        "probe_predictions": model.predict(probe, verbose=0).tolist(),
    }

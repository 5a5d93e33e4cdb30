"""Training loops shared by the experiments: fit with epoch timing and a compact history."""

from __future__ import annotations

import dataclasses
import os
import re
import statistics
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from lab import prediction, timesplit
from lab.data import ImageData
from lab.results import Curves
from lab.timing import EpochTimes


@dataclasses.dataclass
class FitResult:
    """What one `fit` measured, in plain types for the report.

    Attributes:
        loss: training loss per epoch.
        accuracy: training accuracy per epoch.
        validation_accuracy: validation accuracy per epoch (empty without validation data).
        epoch_seconds: wall time per epoch; the first includes graph tracing.
        stopped_epoch: with early stopping, the last epoch that ran (1-based); None without.
        best_epoch: with early stopping, the epoch of best validation accuracy (1-based), whose
            weights the model holds after the fit; None without.
    """

    loss: list[float]
    accuracy: list[float]
    validation_accuracy: list[float]
    epoch_seconds: list[float]
    stopped_epoch: int | None = None
    best_epoch: int | None = None

    @property
    def final_validation_accuracy(self) -> float | None:
        """Validation accuracy of the weights the model holds after the fit.

        The best epoch's when early stopping restored its weights, else the last epoch's.
        """
        if not self.validation_accuracy:
            return None
        return self.validation_accuracy[self.best_epoch - 1 if self.best_epoch else -1]

    @property
    def steady_epoch_seconds(self) -> float | None:
        """Median seconds of the epochs after the first (tracing excluded)."""
        later = self.epoch_seconds[1:]
        return statistics.median(later) if later else None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    def summary(self) -> dict:
        """The report's columns for a fit: final accuracies and epoch times."""
        return {
            "train accuracy": self.accuracy[-1],
            "validation accuracy": self.final_validation_accuracy,
            "first epoch s": self.epoch_seconds[0],
            "s/epoch": self.steady_epoch_seconds,
            **self.early_stopping_summary(),
        }

    def early_stopping_summary(self) -> dict:
        """The epoch the fit stopped at and its best epoch; empty without early stopping."""
        if self.stopped_epoch is None:
            return {}
        return {"stopped at epoch": self.stopped_epoch, "best epoch": self.best_epoch}

    def curves(self) -> Curves:
        """Accuracy per epoch, for the report's learning-curve plots."""
        return Curves(train_accuracy=self.accuracy, validation_accuracy=self.validation_accuracy)


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

    Its epochs count as tracing and training in the session's time split (`lab.timesplit`).

    `callbacks` run after the epoch timer, so that their work is not timed as training.

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
    return FitResult(
        loss=loss,
        accuracy=[float(value) for value in history.get("accuracy", [])],
        validation_accuracy=[float(value) for value in history.get("val_accuracy", [])],
        epoch_seconds=timer.seconds,
        stopped_epoch=len(loss) if stopping else None,
        best_epoch=stopping[0].best_epoch + 1 if stopping else None,
    )


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


def tensorboard_callbacks(log_dir: str | None, *subfolders: str) -> list[keras.callbacks.Callback]:
    """A `keras.callbacks.TensorBoard` writing to `log_dir/subfolders...`; none without `log_dir`.

    Give every fit of one test its own subfolder: a second fit into the same folder starts
    again at step 0 and draws over the first fit's curves.
    """
    if log_dir is None:
        return []
    return [keras.callbacks.TensorBoard(os.path.join(log_dir, *subfolders))]


# Validation images whose predictions are stored with a saved model, to check a reload.
PROBE_IMAGES = 16


def train_lab_cnn(
    flowers: ImageData,
    filters: tuple[int, int, int],
    epochs: int,
    batch_size: int,
    seed: int,
    path: str,
    verbose: int = 0,
    callbacks: Sequence[keras.callbacks.Callback] = (),
) -> dict:
    """Experiment 1's training: the lab CNN on tf_flowers, saved atomically to `path`.

    Returns:
        JSON-able metadata: the path, filters, image counts, the `FitResult` history, a digest
        of the weights and the predictions on `PROBE_IMAGES` validation images at save time.
    """
    from lab.models import compile_for_classification, lab_cnn
    from lab.reproducibility import seed_everything
    from lab.storage import atomic_save_model, weights_digest

    seed_everything(seed)
    model = lab_cnn(flowers.num_classes, flowers.image_size, filters)
    compile_for_classification(model)
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

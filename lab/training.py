"""Training loops shared by the experiments: fit with epoch timing and a compact history."""

from __future__ import annotations

import dataclasses
import statistics

import keras
import tensorflow as tf

from lab.data import ImageData
from lab.timing import EpochTimes


@dataclasses.dataclass
class FitResult:
    """What one `fit` measured, in plain types for the report.

    Attributes:
        loss: training loss per epoch.
        accuracy: training accuracy per epoch.
        validation_accuracy: validation accuracy per epoch (empty without validation data).
        epoch_seconds: wall time per epoch; the first includes graph tracing.
    """

    loss: list[float]
    accuracy: list[float]
    validation_accuracy: list[float]
    epoch_seconds: list[float]

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
            "validation accuracy": self.validation_accuracy[-1] if self.validation_accuracy else None,
            "first epoch s": self.epoch_seconds[0],
            "s/epoch": self.steady_epoch_seconds,
        }

    def curves(self) -> dict:
        """Accuracy per epoch, for the report's learning-curve plots."""
        return {"train_accuracy": self.accuracy, "validation_accuracy": self.validation_accuracy}


def fit(
    model: keras.Model,
    train: tf.data.Dataset,
    epochs: int,
    validation: tf.data.Dataset | None = None,
    verbose: int = 0,
) -> FitResult:
    """Trains `model` (already compiled) and returns its per-epoch history and epoch times."""
    timer = EpochTimes()
    history = model.fit(
        train, validation_data=validation, epochs=epochs, callbacks=[timer], verbose=verbose
    ).history
    return FitResult(
        loss=[float(value) for value in history["loss"]],
        accuracy=[float(value) for value in history.get("accuracy", [])],
        validation_accuracy=[float(value) for value in history.get("val_accuracy", [])],
        epoch_seconds=timer.seconds,
    )


def fit_on(
    model: keras.Model, data: ImageData, epochs: int, batch_size: int, seed: int, verbose: int = 0
) -> FitResult:
    """Trains `model` on `data`'s training images (shuffled with `seed`), validating on the rest."""
    return fit(
        model,
        data.batches("train", batch_size, seed=seed),
        epochs,
        validation=data.batches("validation", batch_size),
        verbose=verbose,
    )


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
    result = fit_on(model, flowers, epochs, batch_size, seed, verbose)
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

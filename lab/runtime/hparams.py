"""Every fit's settings and final metrics, for TensorBoard's HParams dashboard (`--tensorboard`).

Each fit's TensorBoard folder becomes one HParams session: its settings, and its final
metrics as scalars under the stable names of `METRICS`, written next to the `train` and
`validation` folders of `keras.callbacks.TensorBoard`. The dashboard then lines up every fit
under the folder TensorBoard is pointed at, whichever session or experiment wrote it.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

import keras
import tensorflow as tf
from tensorboard.plugins.hparams import api as hp

if TYPE_CHECKING:
    from lab.measurements import FitResult

VALIDATION_ACCURACY = "validation_accuracy"
LOSS = "loss"
SECONDS = "seconds"
METRICS = (VALIDATION_ACCURACY, LOSS, SECONDS)


@dataclasses.dataclass(frozen=True)
class FitSettings:
    """What sets one fit apart: the dashboard's hyperparameter columns; None leaves a column out.

    Attributes:
        experiment: the lab's experiment number, 1 to 5.
        seed: the seed of the fit's data split, shuffling and initial weights.
        backbone: the network under the head (`lab_cnn-32-64-128`, `mobilenet_v2`...).
        weights: what the network starts from (`imagenet`, `none`, `transferred`, `scratch`).
        image_size: side of the square input images, in pixels.
        train_images: images in one training epoch.
        strategy: experiment 5's fine-tuning strategy.
        stage: experiment 5's stage within the strategy, from 0.
        schedule: experiment 5's learning-rate schedule within each compile.
        rates: each parameter group's learning rate, as the report writes them.
        lr_factor: the discriminative division of the rate per block going down.
    """

    experiment: int
    seed: int
    backbone: str
    weights: str
    image_size: int
    train_images: int
    strategy: str | None = None
    stage: int | None = None
    schedule: str | None = None
    rates: str | None = None
    lr_factor: float | None = None

    def hparams(self) -> dict[str, int | float | str]:
        """The settings that apply to this fit, by name."""
        return {name: value for name, value in dataclasses.asdict(self).items() if value is not None}


def final_metrics(result: FitResult) -> dict[str, float]:
    """`METRICS` of a fit: of the weights the model holds after it, and the seconds of its epochs.

    Without validation data there is no validation accuracy, so it is left out.
    """
    metrics = {LOSS: result.loss[result.final_epoch - 1], SECONDS: sum(result.epoch_seconds)}
    if result.final_validation_accuracy is not None:
        metrics[VALIDATION_ACCURACY] = result.final_validation_accuracy
    return metrics


class HParamsLog(keras.callbacks.Callback):
    """Writes a fit's settings into `log_dir` as it starts, and its final metrics once `fit` has them.

    The settings go first, so that a fit that fails still has its row, without metrics.
    `lab.networks.training.fit` calls `log_result`: only it knows which epoch's weights early stopping kept.
    """

    def __init__(self, log_dir: str, settings: FitSettings):
        super().__init__()
        self.log_dir = log_dir
        self.settings = settings
        self._writer: tf.summary.SummaryWriter | None = None

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._writer = tf.summary.create_file_writer(self.log_dir)
        with self._writer.as_default():
            hp.hparams(self.settings.hparams())
        self._writer.flush()

    def log_result(self, result: FitResult) -> None:
        """Writes the fit's `final_metrics`, at the step of its epoch count."""
        with self._writer.as_default():
            for name, value in final_metrics(result).items():
                tf.summary.scalar(name, value, step=len(result.loss))
        self._writer.close()

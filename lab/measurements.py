"""What training, evaluation and timing measured, as plain types: the bottom of lab's imports.

`inputs/`, `runtime/`, `networks/` and `finetune/` fill them in; `report/` records, renders and
compares them. They import nothing of the lab, so every package can use them without
importing the one that reads them.
"""

from __future__ import annotations

import dataclasses
import statistics


@dataclasses.dataclass
class Curves:
    """Accuracy (and training loss) per epoch of one fit."""

    train_accuracy: list[float]
    validation_accuracy: list[float]
    train_loss: list[float] = dataclasses.field(default_factory=list)


@dataclasses.dataclass
class StageCurve:
    """Validation accuracy after each stage of a gradual-unfreezing schedule."""

    stages: list[str]
    accuracy: list[float]


@dataclasses.dataclass(frozen=True)
class LearningRateSearch:
    """One learning-rate range test (`lab.finetune.lr_finder`): what was tried, what the loss did, and the
    rate it suggests.

    Attributes:
        rates: the learning rate of each step run (the fastest group's, under discriminative
            rates), rising exponentially.
        losses: the training loss of each step's batch, before that step's update.
        smoothed: the bias-corrected exponential moving average of `losses`.
        rule: the rule that chose the suggestion (`lab.finetune.lr_finder.RULE`).
        found: whether the loss fell enough for the rule to read a suggestion off it.
        suggestion: the suggested rate; None where not `found`.
        reason: why there is no suggestion; empty where `found`.
        diverged_at: the rate at which the test stopped on divergence; None if it ran to the end.
    """

    rates: list[float]
    losses: list[float]
    smoothed: list[float]
    rule: str
    found: bool
    suggestion: float | None
    reason: str
    diverged_at: float | None


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
    def final_epoch(self) -> int:
        """The epoch (1-based) whose weights the model holds after the fit.

        The best epoch when early stopping restored its weights, else the last epoch.
        """
        return self.best_epoch or len(self.loss)

    @property
    def final_validation_accuracy(self) -> float | None:
        """Validation accuracy of the weights the model holds after the fit (`final_epoch`)."""
        if not self.validation_accuracy:
            return None
        return self.validation_accuracy[self.final_epoch - 1]

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

    def loss_fell(self) -> str:
        """Whether the training loss fell from the first epoch to the last, as a report cell: a
        learning outcome, recorded (`no: 2.290 -> 2.295` flags a fit too short to learn), not asserted."""
        first, last = self.loss[0], self.loss[-1]
        return "yes" if last < first else f"no: {first:.3f} -> {last:.3f}"

    def early_stopping_summary(self) -> dict:
        """The epoch the fit stopped at and its best epoch; empty without early stopping."""
        if self.stopped_epoch is None:
            return {}
        return {"stopped at epoch": self.stopped_epoch, "best epoch": self.best_epoch}

    def curves(self) -> Curves:
        """Accuracy and training loss per epoch, for the report's learning-curve plots and MLflow."""
        return Curves(train_accuracy=self.accuracy, validation_accuracy=self.validation_accuracy, train_loss=self.loss)


@dataclasses.dataclass
class ValidationSet:
    """The validation images of one dataset at one size, which every seed and arm predicts.

    Args:
        name: what records name it by (`tf_flowers (sample), 32px, 100 images`).
        num_classes: classes of the dataset.
        labels: the true class of each image, in the order predictions are recorded.
        images_digest: SHA-256 of the images' pixels and labels (`ImageData.validation_digest`);
            None in results from before it was kept.
    """

    name: str
    num_classes: int
    labels: list[int]
    images_digest: str | None = None


@dataclasses.dataclass
class TimeSplit:
    """Where the seconds of one experiment's tests went (or, with `experiment` None, the rest
    of the session: start-up, collection, unit tests and the session's own work).

    The parts add up to `total_seconds`: the experiment's tests' setup, call and teardown
    durations plus the data its tests loaded before any test ran.

    Args:
        experiment: 1..5, or None for the rest of the session.
        data_seconds: loading and resizing datasets (before the first test, in this suite).
        tracing_seconds: first epoch minus a steady epoch, over every fit: graph tracing.
        training_seconds: every other second of the fits' epochs (validation included).
        evaluation_seconds: predicting the validation images whose predictions are recorded.
        other_seconds: the rest: building and compiling models, loading saved ones, checks.
    """

    experiment: int | None
    data_seconds: float = 0.0
    tracing_seconds: float = 0.0
    training_seconds: float = 0.0
    evaluation_seconds: float = 0.0
    other_seconds: float = 0.0

    @property
    def total_seconds(self) -> float:
        return (
            self.data_seconds + self.tracing_seconds + self.training_seconds
            + self.evaluation_seconds + self.other_seconds
        )

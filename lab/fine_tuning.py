"""One fine-tuning stage's optimizer and learning rates, as experiment 5 compiles and reports them.

A stage trains either at one rate (every trainable weight, Adam) or at discriminative rates
(a sub-optimizer per parameter group, `lab.optimizers`). Either follows the run's learning-rate
schedule over the steps of its compile. What each group actually used is recorded per epoch
by `lab.optimizers.GroupLearningRates` and lined up across stages by `RateCurves`.
"""

from __future__ import annotations

import dataclasses
import math

import keras

from lab import optimizers
from lab.adam import adam
from lab.backbones import Backbone
from lab.freezing import Stage

# The name of a stage's single Adam, and so of its one parameter group in the rate records.
SINGLE_GROUP = "all"


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Training steps of one epoch: the last batch may be smaller, it still counts."""
    return math.ceil(train_images / batch_size)


def stage_optimizer(
    model: keras.Model, backbone: Backbone, stage: Stage, schedule: str, factor: float, steps: int
) -> keras.optimizers.Optimizer:
    """A fresh optimizer for `stage`: build one for every compile, never reuse one.

    Args:
        model: the classifier being compiled, its layers' `trainable` set for the stage.
        backbone: the registry entry of its base.
        stage: the stage; its `learning_rate` is the head's rate (discriminative) or every
            weight's.
        schedule: one of `lab.optimizers.LR_SCHEDULES`.
        factor: the discriminative division per block going down.
        steps: training steps the compile spans, for the schedule.
    """
    if stage.discriminative:
        groups = optimizers.parameter_groups(model, backbone, stage.learning_rate, factor)
        return optimizers.discriminative_optimizer(groups, schedule=schedule, steps=steps)
    return adam(
        optimizers.learning_rate_schedule(schedule, stage.learning_rate, steps), name=SINGLE_GROUP
    )


def stage_rates(model: keras.Model, backbone: Backbone, stage: Stage, factor: float) -> dict[str, float]:
    """The (peak) rate of each parameter group that trains in `stage`, top down.

    Read from the model's trainable weights after `set_base_trainable`: a discriminative
    stage lists the head and each block with a trainable weight; a single-rate stage is one
    group, `SINGLE_GROUP`.
    """
    if not stage.discriminative:
        return {SINGLE_GROUP: stage.learning_rate}
    trainable = {weight.path for weight in model.trainable_weights}
    return {
        group.name: group.learning_rate
        for group in optimizers.parameter_groups(model, backbone, stage.learning_rate, factor)
        if trainable.intersection(group.variable_paths)
    }


def describe_rates(rates: dict[str, float]) -> str:
    """`head 1.0e-03, top_conv 3.8e-04, ...`: a report cell."""
    return ", ".join(f"{name} {rate:.1e}" for name, rate in rates.items())


@dataclasses.dataclass
class RateCurves:
    """The rate each parameter group used per epoch, lined up over a run's consecutive fits.

    Attributes:
        epochs: epochs added so far.
        rates: group name -> one entry per epoch: the rate of the group's last step in that
            epoch, or None where the group did not train (frozen, or a stage without it).
    """

    epochs: int = 0
    rates: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)

    def add_fit(self, per_epoch: dict[str, list[float]], epochs: int) -> None:
        """Appends one fit of `epochs` epochs, from `GroupLearningRates.per_epoch` of that fit.

        A group with fewer entries than `epochs` missed its first epochs: only steps that
        loss scaling skips (at the start, while it lowers the scale) leave a whole epoch out.
        """
        for name, trained in per_epoch.items():
            if len(trained) > epochs:
                raise ValueError(f"group {name} has rates for {len(trained)} epochs of a {epochs}-epoch fit")
            self.rates.setdefault(name, [None] * self.epochs)
        for name, curve in self.rates.items():
            trained = per_epoch.get(name, [])
            curve += [None] * (epochs - len(trained)) + list(trained)
        self.epochs += epochs

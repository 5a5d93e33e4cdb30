"""Discriminative learning rates and learning-rate schedules for fine-tuning a classifier.

ULMFiT (Howard and Ruder, 2018) trains each layer group of a pretrained network at its own
rate, dividing the rate by 2.6 per group going down, and varies the rate within a stage along a
slanted triangle. Here the groups are the classifier's head and the registry's blocks of its
base, each with its own sub-optimizer in a `keras.optimizers.MultiOptimizer`, so `fit` and
loss scaling work unchanged. A MultiOptimizer has no single `learning_rate`: what each group
used is read from its sub-optimizer (`GroupLearningRates`).
"""

from __future__ import annotations

import collections
import dataclasses
import math
from collections.abc import Callable, Sequence

import keras
from keras import ops

from lab.errors import LabInputError
from lab.networks.adam import adam
from lab.networks.backbones import Backbone
from lab.networks.models import BASE_LAYER_NAME, HEAD_LAYER_NAME

DISCRIMINATIVE_FACTOR = 2.6
LR_SCHEDULES = ("constant", "cosine", "triangular")
# Cosine: the share of a stage's steps spent warming up linearly to the group's rate.
COSINE_WARMUP_FRACTION = 0.1
# ULMFiT's slanted triangle: rise during the first tenth of the steps; peak = 32 x lowest rate.
TRIANGULAR_CUT_FRACTION = 0.1
TRIANGULAR_RATIO = 32.0


@dataclasses.dataclass(frozen=True)
class ParameterGroup:
    """Weights that share one learning rate: the head, or one registry block of the base.

    Attributes:
        name: `head` (the head layer's name), or the registry's name of the block.
        depth: 0 for the head, 1 for the topmost block, 2 for the next one down, ...
        learning_rate: the group's rate (the peak rate under a schedule).
        variable_paths: `variable.path` of every weight of the group, trainable or not.
    """

    name: str
    depth: int
    learning_rate: float
    variable_paths: tuple[str, ...]


def parameter_groups(
    model: keras.Model, backbone: Backbone, head_rate: float, factor: float = DISCRIMINATIVE_FACTOR
) -> list[ParameterGroup]:
    """The head and each block of the base, top down, at `head_rate / factor ** depth`.

    Block membership comes from the registry (`Backbone.stages_top_down`) and the weights the
    blocks' layers own: variables of a nested keras.applications base have paths without the
    base's name (`block_16_expand/kernel`), so their names alone cannot say where they belong.
    The head group holds every weight of `model` outside the base.

    Args:
        model: a classifier built by `lab.networks.models.backbone_classifier` on `backbone`.
        backbone: the registry entry of its base.
        head_rate: the head's learning rate.
        factor: the division per block going down; 1 gives every group the head's rate.

    Raises:
        LabInputError: `factor` is below 1 or `head_rate` is not positive.
    """
    if not factor >= 1:
        raise LabInputError(
            f"discriminative factor {factor} is below 1: lower blocks would learn faster than "
            f"the head; use a factor of at least 1 (ULMFiT uses {DISCRIMINATIVE_FACTOR})"
        )
    if not head_rate > 0:
        raise LabInputError(f"learning rate {head_rate} is not positive: use a rate above 0")
    paths = [weight.path for weight in model.weights]
    repeated = sorted(path for path, count in collections.Counter(paths).items() if count > 1)
    if repeated:
        raise ValueError(f"{model.name} has weights sharing a path, so not routable apart: {', '.join(repeated)}")
    base = model.get_layer(BASE_LAYER_NAME)
    blocks = backbone.stages_top_down(base)
    in_blocks = {id(layer) for _, layers in blocks for layer in layers}
    outside = [layer.name for layer in base.layers if layer.weights and id(layer) not in in_blocks]
    if outside:
        raise ValueError(
            f"{backbone.name}: base layers {', '.join(outside)} have weights but belong to no "
            "registry block; the block_starts in lab/networks/backbones.py miss them"
        )
    base_paths = {weight.path for weight in base.weights}
    groups = [ParameterGroup(HEAD_LAYER_NAME, 0, head_rate, tuple(path for path in paths if path not in base_paths))]
    for depth, (name, layers) in enumerate(blocks, start=1):
        block_paths = tuple(weight.path for layer in layers for weight in layer.weights)
        groups.append(ParameterGroup(name, depth, head_rate / factor**depth, block_paths))
    return groups


def discriminative_optimizer(
    groups: Sequence[ParameterGroup],
    optimizer_class: Callable[..., keras.optimizers.Optimizer] = adam,
    schedule: str = "constant",
    steps: int | None = None,
) -> keras.optimizers.MultiOptimizer:
    """A MultiOptimizer with a fresh sub-optimizer per group, each at its group's rate.

    Build a new one for every `compile()`: a built optimizer holds slots for the variables it
    was built on, and a stage that thaws more layers needs slots for those too. Groups with no
    trainable variable at compile time (frozen blocks) are never built and never step. Each
    sub-optimizer is named after its group, and counts its own steps from 0, so a schedule
    restarts with every stage.

    Args:
        groups: from `parameter_groups`; every trainable variable must be in one of them.
        optimizer_class: builds each sub-optimizer from `learning_rate` and `name` (the run's
            `--adam` by default, `lab.networks.adam.adam`).
        schedule: one of `LR_SCHEDULES`, applied to every group at its own rate.
        steps: training steps of the stage (epochs x batches), for `cosine` and `triangular`.
    """
    sub_optimizers = [
        optimizer_class(learning_rate=learning_rate_schedule(schedule, group.learning_rate, steps), name=group.name)
        for group in groups
    ]
    routes = GroupRoutes(sub_optimizers, [list(group.variable_paths) for group in groups])
    return keras.optimizers.MultiOptimizer(routes)


@keras.saving.register_keras_serializable(package="lab")
class GroupRoutes:
    """Sends each variable to the optimizer of the group holding its path; refuses any other.

    A callable for `keras.optimizers.MultiOptimizer`. Unlike `keras.optimizers.OptimizerMap`,
    it has no default optimizer: a variable in no group is an error, not a silent head rate.

    Args:
        optimizers: one optimizer per group.
        paths: per group, the `variable.path` of each of its variables.
    """

    def __init__(self, optimizers: list[keras.optimizers.Optimizer], paths: list[list[str]]):
        if len(optimizers) != len(paths):
            raise ValueError(f"{len(optimizers)} optimizers for {len(paths)} groups of paths")
        self.optimizers = optimizers
        self.paths = paths
        self._by_path: dict[str, keras.optimizers.Optimizer] = {}
        for optimizer, group_paths in zip(optimizers, paths, strict=True):
            for path in group_paths:
                if path in self._by_path:
                    raise ValueError(f"{path} is in two groups: {self._by_path[path].name} and {optimizer.name}")
                self._by_path[path] = optimizer

    def values(self) -> list[keras.optimizers.Optimizer]:
        """The optimizers, in group order (MultiOptimizer registers them from this)."""
        return self.optimizers

    def __call__(self, variable) -> keras.optimizers.Optimizer:
        try:
            return self._by_path[variable.path]
        except KeyError:
            raise ValueError(
                f"trainable variable {variable.path} is in no parameter group: build the groups "
                "with lab.networks.optimizers.parameter_groups from the model being compiled"
            ) from None

    def get_config(self) -> dict:
        return {
            "optimizers": [keras.optimizers.serialize(optimizer) for optimizer in self.optimizers],
            "paths": self.paths,
        }

    @classmethod
    def from_config(cls, config: dict) -> GroupRoutes:
        return cls([keras.optimizers.deserialize(optimizer) for optimizer in config["optimizers"]], config["paths"])


def learning_rate_schedule(
    kind: str, learning_rate: float, steps: int | None = None
) -> float | keras.optimizers.schedules.LearningRateSchedule:
    """The learning rate of one group through a stage of `steps` training steps.

    Args:
        kind: `constant` (the rate throughout), `cosine` (a linear warm-up over
            `COSINE_WARMUP_FRACTION` of the steps, then a cosine decay towards 0) or
            `triangular` (`SlantedTriangular`).
        learning_rate: the constant rate, or the schedule's peak.
        steps: training steps of the stage; needed by `cosine` and `triangular`.
    """
    if kind not in LR_SCHEDULES:
        raise LabInputError(
            f"unknown learning-rate schedule {kind!r}: use --lr-schedule with one of {', '.join(LR_SCHEDULES)}"
        )
    if kind == "constant":
        return learning_rate
    if steps is None or steps < 1:
        raise ValueError(f"a {kind} schedule needs the stage's number of steps (at least 1), got {steps}")
    if kind == "triangular":
        return SlantedTriangular(learning_rate, steps)
    warmup_steps = max(1, round(steps * COSINE_WARMUP_FRACTION))
    # Starting the ramp at rate / (warmup_steps + 1) rather than 0 wastes no step: step k of
    # the warm-up trains at (k + 1) / (warmup_steps + 1) of the rate.
    return keras.optimizers.schedules.CosineDecay(
        learning_rate / (warmup_steps + 1),
        max(1, steps - warmup_steps),
        warmup_target=learning_rate,
        warmup_steps=warmup_steps,
    )


@keras.saving.register_keras_serializable(package="lab")
class SlantedTriangular(keras.optimizers.schedules.LearningRateSchedule):
    """ULMFiT's slanted triangular learning rate: a short linear rise, then a long linear fall.

    The rate rises from `peak_learning_rate / ratio` at step 0 to `peak_learning_rate` at step
    `cut = max(1, floor(total_steps * cut_fraction))`, then falls linearly back to
    `peak_learning_rate / ratio` at `total_steps` (Howard and Ruder 2018, equation 3, with the
    fall spread over exactly the steps left, so that it ends at the lowest rate whatever the
    rounding of `cut`). Later steps stay at the lowest rate.

    Args:
        peak_learning_rate: the rate at the top of the triangle.
        total_steps: training steps the triangle spans.
        cut_fraction: the share of the steps spent rising.
        ratio: how many times the peak rate is the lowest one.
    """

    def __init__(
        self,
        peak_learning_rate: float,
        total_steps: int,
        cut_fraction: float = TRIANGULAR_CUT_FRACTION,
        ratio: float = TRIANGULAR_RATIO,
        name: str = "SlantedTriangular",
    ):
        super().__init__()
        if total_steps < 1 or not 0 < cut_fraction < 1 or ratio < 1:
            raise ValueError(
                f"SlantedTriangular needs total_steps >= 1, 0 < cut_fraction < 1 and ratio >= 1; got "
                f"total_steps={total_steps}, cut_fraction={cut_fraction}, ratio={ratio}"
            )
        self.peak_learning_rate = peak_learning_rate
        self.total_steps = total_steps
        self.cut_fraction = cut_fraction
        self.ratio = ratio
        self.name = name

    @property
    def cut(self) -> int:
        """The step at which the rate peaks."""
        return max(1, math.floor(self.total_steps * self.cut_fraction))

    def __call__(self, step):
        step = ops.cast(step, "float32")
        cut = float(self.cut)
        rising = step / cut
        falling = 1.0 - (step - cut) / max(self.total_steps - cut, 1.0)
        position = ops.where(step < cut, rising, ops.where(step < self.total_steps, falling, 0.0))
        position = ops.clip(position, 0.0, 1.0)
        return self.peak_learning_rate * (1.0 + position * (self.ratio - 1.0)) / self.ratio

    def get_config(self) -> dict:
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "total_steps": self.total_steps,
            "cut_fraction": self.cut_fraction,
            "ratio": self.ratio,
            "name": self.name,
        }


def group_optimizers(optimizer: keras.optimizers.Optimizer) -> dict[str, keras.optimizers.Optimizer]:
    """The sub-optimizers of a `discriminative_optimizer` that train something, by group name.

    Sees through the LossScaleOptimizer that `compile()` wraps around an optimizer under a
    `mixed_float16` policy. A plain optimizer is one group, under its own name.
    """
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    if not isinstance(inner, keras.optimizers.MultiOptimizer):
        return {inner.name: inner}
    return {sub.name: sub for sub in inner.optimizers if sub.built}


class GroupLearningRates(keras.callbacks.Callback):
    """Records the learning rate each parameter group applied, step by step, during `fit`.

    Reads each sub-optimizer's `learning_rate` before every step, which is the rate that step
    applies (a schedule is evaluated at the sub-optimizer's own step count), and keeps it once
    the step has counted: a step that loss scaling skipped for non-finite gradients applied
    nothing and is left out. Frozen groups train nothing and are not recorded. One recorder
    can follow several stages: a stage's new groups are added as they appear.

    Attributes:
        per_step: group name -> the rate of every step it applied, in order.
        per_epoch: group name -> the rate of the last step it applied in each epoch it trained in.
    """

    def __init__(self):
        super().__init__()
        self.per_step: dict[str, list[float]] = {}
        self.per_epoch: dict[str, list[float]] = {}
        self._pending: list[tuple[str, keras.optimizers.Optimizer, int, float]] = []
        self._latest: dict[str, float] = {}

    def on_train_begin(self, logs=None):
        # Without a distribution strategy Keras builds the optimizer inside the first traced
        # step, after this step's rate would be read; this builds it as a strategy would.
        if not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)

    def on_epoch_begin(self, epoch, logs=None):
        self._latest = {}

    def on_train_batch_begin(self, batch, logs=None):
        self._pending = [
            (name, optimizer, _number(optimizer.iterations), _number(optimizer.learning_rate))
            for name, optimizer in group_optimizers(self.model.optimizer).items()
        ]

    def on_train_batch_end(self, batch, logs=None):
        for name, optimizer, count, rate in self._pending:
            if _number(optimizer.iterations) > count:
                self.per_step.setdefault(name, []).append(rate)
                self._latest[name] = rate

    def on_epoch_end(self, epoch, logs=None):
        for name, rate in self._latest.items():
            self.per_epoch.setdefault(name, []).append(rate)


def _number(value) -> float:
    """A scalar variable or tensor as a Python number, mirrored variables included."""
    return keras.ops.convert_to_numpy(keras.ops.convert_to_tensor(value)).item()

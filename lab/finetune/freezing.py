"""Freezing and unfreezing a classifier's base: whole, or gradually from the top.

Changing `trainable` only takes effect at the next `compile()`, so gradual unfreezing is a
loop of compile + fit stages rather than a callback. Every layer's flag is set explicitly at
every stage: setting `trainable = True` on a model whose own flag is already True does not
reach layers that were frozen one by one.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np

from lab.errors import LabInputError
from lab.networks.backbones import Backbone, has_weights_to_train
from lab.networks.models import BASE_LAYER_NAME, HEAD_LAYER_NAME

SCHEDULE_KINDS = ("blocks", "layers")
STRATEGIES = ("gradual-blocks", "gradual-layers", "head-only", "full", "gradual-discriminative", "full-discriminative")
# Learning rates: a new head learns at the usual Adam rate; pretrained weights at a tenth of it.
HEAD_LEARNING_RATE = 1e-3
FINE_TUNING_LEARNING_RATE = 1e-4


def base_of(model: keras.Model) -> keras.Model:
    """The backbone nested inside a classifier built by `lab.networks.models.backbone_classifier`."""
    return model.get_layer(BASE_LAYER_NAME)


def set_base_trainable(model: keras.Model, trainable_layers: set[str], train_bn: bool = False) -> None:
    """Makes exactly the named base layers trainable, and the head.

    Args:
        model: a classifier built by `lab.networks.models.backbone_classifier`.
        trainable_layers: names of the base layers to train.
        train_bn: whether named BatchNormalization layers train too (Lightning's name for
            the flag; every helper here takes it, with this default). Frozen by default, as the
            Keras fine-tuning guide advises: a frozen BatchNormalization layer runs in inference
            mode, so its moving statistics stay as pretrained. A trainable one normalises with
            batch statistics and updates them.
    """
    base = base_of(model)
    base.trainable = True
    for layer in base.layers:
        is_batch_norm = isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = layer.name in trainable_layers and (train_bn or not is_batch_norm)
    model.get_layer(HEAD_LAYER_NAME).trainable = True


def freeze_base(model: keras.Model) -> None:
    """Freezes every base layer; only the head trains."""
    set_base_trainable(model, set())


def unfreeze_base(model: keras.Model, train_bn: bool = False) -> None:
    """Makes every base layer trainable; `train_bn=True` is the plain `trainable = True` of the lab."""
    set_base_trainable(model, {layer.name for layer in base_of(model).layers}, train_bn)


def expected_trainable_tensors(layers: list[keras.layers.Layer], train_bn: bool = False) -> int:
    """The tensors a fully thawed set of `layers` trains, counted from layer types and options.

    Independent of Keras's own trainable bookkeeping: kernels and biases of convolutions and
    Dense layers, LayerNormalization's scale and shift, BatchNormalization's when `train_bn`;
    for any other layer type (SeparableConv2D, ConvNeXt's LayerScale), the variables it made
    trainable, whatever its `trainable` flag says now.
    """
    weighted = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)
    count = 0
    for layer in layers:
        if isinstance(layer, weighted):
            count += 1 + bool(layer.use_bias)
        elif isinstance(layer, keras.layers.BatchNormalization):
            count += (int(layer.scale) + int(layer.center)) * train_bn
        elif isinstance(layer, keras.layers.LayerNormalization):
            count += int(layer.scale) + int(layer.center)
        else:
            count += sum(variable.trainable for variable in layer.weights)
    return count


def trainable_parameter_count(model: keras.Model) -> int:
    """Trainable scalars of `model`."""
    return int(sum(np.prod(weight.shape) for weight in model.trainable_weights))


def weight_bytes(layers: list[keras.layers.Layer]) -> dict[str, bytes]:
    """The exact bytes of every weight of `layers`, trainable or not, keyed by weight path."""
    return {weight.path: weight.numpy().tobytes() for layer in layers for weight in layer.weights}


def changed_weights(before: dict[str, bytes], after: dict[str, bytes]) -> list[str]:
    """The paths of the weights whose bytes differ between two `weight_bytes` snapshots."""
    return [path for path, value in before.items() if after[path] != value]


def batch_norm_statistics(model: keras.Model) -> dict[str, bytes]:
    """Moving means and variances of every BatchNormalization layer in the base."""
    layers = [layer for layer in base_of(model).layers if isinstance(layer, keras.layers.BatchNormalization)]
    return {
        weight.path: weight.numpy().tobytes()
        for layer in layers
        for weight in (layer.moving_mean, layer.moving_variance)
    }


@dataclasses.dataclass(frozen=True)
class Stage:
    """One stage of a gradual-unfreezing schedule.

    Attributes:
        name: `head` for stage 0, else the blocks thawed so far.
        trainable_layers: names of the base layers trainable in this stage.
        learning_rate: the stage's learning rate; with `discriminative`, the head's.
        epochs: epochs the stage trains for.
        discriminative: each block of the base trains at its own rate, the head's divided by
            a factor per block going down (`lab.networks.optimizers.parameter_groups`).
    """

    name: str
    trainable_layers: tuple[str, ...]
    learning_rate: float
    epochs: int
    discriminative: bool = False


def gradual_schedule(
    backbone: Backbone,
    base: keras.Model,
    kind: str,
    stages: int,
    epochs_per_stage: int,
    learning_rate: float = HEAD_LEARNING_RATE,
    learning_rate_decay: float = 10.0,
    discriminative: bool = False,
) -> list[Stage]:
    """Stage 0 trains the head; each later stage thaws the next part of the base, top down.

    Args:
        backbone: the registry entry, whose named blocks `kind="blocks"` follows.
        base: the backbone model inside the classifier.
        kind: `blocks` (one registry block per stage) or `layers` (the registry's
            `layers_per_stage` weighted layers per stage, counted from the top).
        stages: how many stages thaw part of the base, after the head stage.
        epochs_per_stage: epochs of every stage.
        learning_rate: the head stage's learning rate.
        learning_rate_decay: each later stage divides the rate by this, so that the
            pretrained weights move less as more of them thaw.
        discriminative: every stage keeps `learning_rate` for the head and trains each thawed
            block at its discriminative rate instead (ULMFiT's gradual unfreezing);
            `learning_rate_decay` is then unused.
    """
    if kind not in SCHEDULE_KINDS:
        raise LabInputError(f"unknown schedule {kind!r}: use one of {', '.join(SCHEDULE_KINDS)}")
    if kind == "blocks":
        groups = [(name, [layer.name for layer in layers]) for name, layers in backbone.stages_top_down(base)]
    else:
        weighted = [layer.name for layer in reversed(base.layers) if has_weights_to_train(layer)]
        step = backbone.layers_per_stage
        groups = [
            (f"top {min(start + step, len(weighted))} layers", weighted[start : start + step])
            for start in range(0, len(weighted), step)
        ]
    if stages > len(groups):
        unit = "blocks" if kind == "blocks" else f"groups of {backbone.layers_per_stage} layers"
        raise LabInputError(
            f"{backbone.name} has {len(groups)} {unit} to unfreeze, fewer than the {stages} stages asked"
        )
    schedule = [Stage("head", (), learning_rate, epochs_per_stage, discriminative)]
    thawed: list[str] = []
    for index, (name, layer_names) in enumerate(groups[:stages], start=1):
        thawed += layer_names
        schedule.append(
            Stage(
                f"+{name}" if kind == "blocks" else name,
                tuple(thawed),
                learning_rate if discriminative else learning_rate / learning_rate_decay**index,
                epochs_per_stage,
                discriminative,
            )
        )
    return schedule


def strategy_stages(
    strategy: str,
    backbone: Backbone,
    base: keras.Model,
    stages: int,
    epochs_per_stage: int,
    head_rate: float = HEAD_LEARNING_RATE,
) -> list[Stage]:
    """The stages of one fine-tuning strategy, all on the same budget of epochs.

    `gradual-blocks` and `gradual-layers` follow `gradual_schedule`; `head-only` keeps the base
    frozen throughout; `full` trains every base layer (BatchNormalization frozen) from the start
    at the fine-tuning rate. `gradual-discriminative` thaws a block per stage as
    `gradual-blocks` does, and `full-discriminative` trains what `full` trains; both keep the
    head at the head's rate and train each block at its discriminative rate below it.
    Each has `stages + 1` stages of `epochs_per_stage` epochs. Every rate follows `head_rate`
    (`HEAD_LEARNING_RATE`, or one a learning-rate search found): `full` trains at a tenth of it.
    """
    if strategy not in STRATEGIES:
        raise LabInputError(f"unknown strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    if strategy == "gradual-discriminative":
        return gradual_schedule(backbone, base, "blocks", stages, epochs_per_stage, head_rate, discriminative=True)
    if strategy.startswith("gradual-"):
        return gradual_schedule(backbone, base, strategy.removeprefix("gradual-"), stages, epochs_per_stage, head_rate)
    discriminative = strategy == "full-discriminative"
    if strategy == "head-only":
        layers, rate = (), head_rate
    else:
        layers = tuple(layer.name for layer in base.layers)
        rate = head_rate if discriminative else head_rate * FINE_TUNING_LEARNING_RATE / HEAD_LEARNING_RATE
    return [
        Stage(
            f"epochs {i * epochs_per_stage + 1}-{(i + 1) * epochs_per_stage}",
            layers,
            rate,
            epochs_per_stage,
            discriminative,
        )
        for i in range(stages + 1)
    ]


def compile_spans(stages: list[Stage]) -> list[int]:
    """For each stage, the epochs of the compile it starts, or 0 where it goes on with the last one.

    A stage that trains what the previous one trained, at the same rates, keeps its compiled
    model and optimizer state; a learning-rate schedule then spans every stage of that compile.
    """
    spans: list[int] = []
    for number, stage in enumerate(stages):
        previous = stages[number - 1] if number else None
        if previous and _trains_alike(previous, stage):
            start = max(index for index, span in enumerate(spans) if span)
            spans[start] += stage.epochs
            spans.append(0)
        else:
            spans.append(stage.epochs)
    return spans


def _trains_alike(first: Stage, second: Stage) -> bool:
    return (first.trainable_layers, first.learning_rate, first.discriminative) == (
        second.trainable_layers,
        second.learning_rate,
        second.discriminative,
    )


def trainable_base_layers(model: keras.Model) -> list[str]:
    """Names of the base layers that now have trainable weights, bottom up."""
    return [layer.name for layer in base_of(model).layers if layer.trainable_weights]


def weighted_base_layers(model: keras.Model) -> list[str]:
    """Names of the base layers a gradual schedule can thaw (weights, not BatchNormalization)."""
    return [layer.name for layer in base_of(model).layers if has_weights_to_train(layer)]

"""A stage of gradual unfreezing on cached activations: run its frozen prefix once, train its top.

At a stage of gradual unfreezing, every layer below the lowest trainable one computes the same
activations every epoch. `cache_stage` cuts the classifier there into a prefix, from the images
to every tensor that crosses the cut (several where a residual connection crosses it), and a
top that takes all of those tensors. The prefix runs once over the training and validation
images; the top trains on its activations. A later stage cuts lower, below layers that have
not trained yet either: the same pass gives its activations too (`stage_cuts`, `later_cuts`).

The top is built from the classifier's own layer objects (Keras builds a Functional model from
intermediate tensors by sharing layers), not from clones: training the top trains the classifier,
and there are no weights to copy back and no copy to get wrong. Frozen BatchNormalization layers
in the top are the classifier's frozen layers, so they stay in inference mode as they do end to
end.

The cache is used only where it gives the same training as the end-to-end path: every layer
of the prefix must compute the same thing in training as in the prefix pass (no trainable
BatchNormalization, nothing that draws random numbers, such as dropout or augmentation), and
the activations must fit a memory budget, counted before they are computed. Otherwise
`cache_stage` says why, its batches are the images', and the caller trains end to end.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

from lab.finetune import freezing
from lab.inputs.data import ImageData, batched_pairs
from lab.networks.models import BASE_LAYER_NAME, HEAD_LAYER_NAME
from lab.runtime import keras_internals, prediction

DEFAULT_CACHE_BUDGET = 2 * 1024**3


@dataclasses.dataclass(frozen=True)
class Cut:
    """Where a classifier splits into a frozen prefix and a trainable top, before any model is built.

    Attributes:
        cut_layer: the lowest layer with trainable weights, the first layer of the top.
        inside_base: whether `cut_layer` is a layer of the nested base (else of the classifier).
        prefix_layers: every layer below the cut, nested models flattened, inputs first.
        crossing: the tensors that cross the cut, in the top's input order.
    """

    cut_layer: str
    inside_base: bool
    prefix_layers: tuple[keras.layers.Layer, ...]
    crossing: tuple[keras.KerasTensor, ...]

    @property
    def crossing_names(self) -> tuple[str, ...]:
        """The layers whose outputs cross the cut, in the top's input order."""
        return tuple(keras_internals.producing_operation(tensor).name for tensor in self.crossing)

    def cache_bytes(self, images: int) -> int:
        """Bytes the activations of `images` images take, from the crossing tensors' shapes."""
        per_image = sum(
            int(np.prod(tensor.shape[1:])) * np.dtype(tensor.dtype).itemsize for tensor in self.crossing
        )
        return per_image * images


@dataclasses.dataclass
class CachedStage:
    """One stage's frozen prefix, run once, and the top that trains on its activations.

    Where the stage cannot be cached, `reason` says why, `top` is None, the activations are
    empty and the batches are the images': the caller trains the classifier end to end
    (`lab.finetune.reuse.CompiledRun.span_model` gives it the model to compile).

    Attributes:
        reason: why the stage is not cached, or None when it is.
        cut_layer: the top's first layer (None when nothing in the classifier trains).
        crossing: the layers whose outputs cross the cut, in the top's input order.
        cache_bytes: the activations' size, counted before they were computed.
        prefix_seconds: wall time of the prefix pass over training and validation images, or
            of finding an earlier pass's activations.
        prefix_shared: whether the activations are an earlier stage's, of the same frozen
            weights over the same images (`PrefixActivations`).
        top: the crossing tensors -> class probabilities, on the classifier's own layers;
            not compiled (unless passed in as `split` to `cache_stage`).
        prefix: the images -> the crossing tensors, on the classifier's own layers.
        train_activations: per crossing tensor, its values for every training image, in order.
        validation_activations: likewise for the validation images.
        data: the images and labels the stage trains on; None for a stage made without them,
            which has no batches to give.
    """

    reason: str | None
    cut_layer: str | None
    crossing: tuple[str, ...] = ()
    cache_bytes: int = 0
    prefix_seconds: float = 0.0
    prefix_shared: bool = False
    top: keras.Model | None = None
    prefix: keras.Model | None = None
    train_activations: tuple[np.ndarray, ...] = ()
    validation_activations: tuple[np.ndarray, ...] = ()
    data: ImageData | None = dataclasses.field(default=None, repr=False)

    @property
    def cached(self) -> bool:
        return self.reason is None

    @property
    def path(self) -> str:
        """How the stage trains, for the report: on cached activations, or end to end and why."""
        if not self.cached:
            return f"end to end: {self.reason}"
        return "cached, prefix pass shared" if self.prefix_shared else "cached"

    def features_all_zero(self) -> bool:
        """Whether every cached activation the top trains on is exactly zero (a random MobileNet's
        pooled features can be): a top with no input to follow. False where not cached."""
        return self.cached and not any(np.any(activations) for activations in self.train_activations)

    @property
    def split(self) -> StageModels | None:
        """The prefix and the top, to pass to `cache_stage` again for the same stage; None if not cached."""
        return StageModels(self.prefix, self.top) if self.cached else None

    def train_batches(self, batch_size: int, seed: int | None) -> tf.data.Dataset:
        """Batches of (activations, labels), or of (images, labels) where not cached, shuffled each
        epoch with `seed` unless it is None.

        The same seed shuffles the same way as `ImageData.batches` over the images, so the
        cached and the end-to-end paths see the same batches.
        """
        data = self._data()
        if not self.cached:
            return data.batches("train", batch_size, seed=seed)
        return batched_pairs(_top_inputs(self.train_activations), data.train_labels, batch_size, seed)

    def validation_batches(self, batch_size: int) -> tf.data.Dataset:
        """Batches of validation (activations, labels), or of (images, labels) where not cached, in the stored order."""
        data = self._data()
        if not self.cached:
            return data.batches("validation", batch_size)
        return batched_pairs(_top_inputs(self.validation_activations), data.validation_labels, batch_size, None)

    def _data(self) -> ImageData:
        if self.data is None:
            raise ValueError(f"the stage ({self.path}) was made without its images: batch them yourself")
        return self.data


def _top_inputs(activations: tuple[np.ndarray, ...]) -> np.ndarray | tuple[np.ndarray, ...]:
    return activations[0] if len(activations) == 1 else activations


def find_cut(classifier: keras.Model) -> Cut | None:
    """Finds the lowest layer with trainable weights and the tensors that cross below it.

    Args:
        classifier: a Functional classifier with its base nested as the layer
            `lab.networks.models.BASE_LAYER_NAME`, as `lab.networks.models.backbone_classifier` builds it.

    Returns:
        The cut, or None when no layer of the classifier has trainable weights.
    """
    outer = classifier.layers
    outer_cut = _lowest_trainable(outer)
    if outer_cut is None:
        return None
    layer = outer[outer_cut]
    below = tuple(leaf for lower in outer[:outer_cut] for leaf in _leaf_layers(lower))
    if layer.name != BASE_LAYER_NAME:
        return Cut(layer.name, False, below, _crossing(classifier, layer))
    base_cut = _lowest_trainable(layer.layers)
    below += tuple(leaf for lower in layer.layers[:base_cut] for leaf in _leaf_layers(lower))
    return Cut(layer.layers[base_cut].name, True, below, _crossing(layer, layer.layers[base_cut]))


def _lowest_trainable(layers: list[keras.layers.Layer]) -> int | None:
    return next((index for index, layer in enumerate(layers) if layer.trainable_weights), None)


def _leaf_layers(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    if isinstance(layer, keras.Model):
        return [leaf for inner in layer.layers for leaf in _leaf_layers(inner)]
    return [layer]


def _crossing(model: keras.Model, cut_layer: keras.layers.Layer) -> tuple[keras.KerasTensor, ...]:
    """The tensors made below `cut_layer` of `model` and used at or above it.

    `model.operations` is in topological order (Keras sorts it by depth), so every operation
    below the cut depends only on operations below it. Operations, not layers: a graph such as
    ConvNeXt's has plain operations (`Add`) between its layers, which make tensors too.
    """
    operations = model.operations
    start = next(index for index, operation in enumerate(operations) if operation is cut_layer)
    above = {id(operation) for operation in operations[start:]}
    order = {id(operation): index for index, operation in enumerate(operations)}
    crossing = {}
    for node in keras_internals.graph_nodes(model):
        if id(node.operation) not in above or node.is_input:
            continue
        for tensor in node.input_tensors:
            if id(keras_internals.producing_operation(tensor)) not in above:
                crossing[id(tensor)] = tensor

    def made_at(tensor: keras.KerasTensor) -> tuple[int, int]:
        return order[id(keras_internals.producing_operation(tensor))], keras_internals.output_index(tensor)

    return tuple(sorted(crossing.values(), key=made_at))


def stage_cuts(classifier: keras.Model, trainable_per_stage: Sequence[set[str]]) -> list[Cut | None]:
    """The cut of each stage, from the base layers it trains (as `lab.finetune.freezing.set_base_trainable` sets them).

    Leaves the classifier's layers as trainable as they were.
    """
    base = freezing.base_of(classifier)
    # The base first: setting its flag sets every layer's inside it.
    before = [(layer, layer.trainable) for layer in (base, *base.layers, classifier.get_layer(HEAD_LAYER_NAME))]
    try:
        cuts = []
        for trainable in trainable_per_stage:
            freezing.set_base_trainable(classifier, trainable)
            cuts.append(find_cut(classifier))
        return cuts
    finally:
        for layer, trainable in before:
            layer.trainable = trainable


def prefix_problems(cut: Cut) -> list[str]:
    """Why the prefix below `cut` would compute other activations in training than once; [] if none."""
    problems = []
    for layer in cut.prefix_layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable:
            problems.append(
                f"BatchNormalization {layer.name} below the cut is trainable: it would normalise "
                "with batch statistics and update them"
            )
        weights = {id(weight) for weight in layer.weights}
        # Keras counts seed generators' states in `variables`, not in `weights`.
        if any(id(variable) not in weights for variable in layer.variables):
            problems.append(
                f"{type(layer).__name__} {layer.name} below the cut draws random numbers in training"
            )
    if not any(layer.weights for layer in cut.prefix_layers):
        problems.append(f"no weights below {cut.cut_layer}: nothing frozen to cache")
    return problems


@dataclasses.dataclass(frozen=True)
class _PrefixPass:
    data: ImageData
    train: tuple[np.ndarray, ...]
    validation: tuple[np.ndarray, ...]

    @property
    def bytes(self) -> int:
        return sum(array.nbytes for array in (*self.train, *self.validation))


class PrefixActivations:
    """Prefix passes already run in this process, to run each frozen prefix once over its images.

    Gradual unfreezing thaws from the top, so the layers below any stage's cut have never
    trained: the stages of every strategy that cut the same base at the same place, from the
    same starting weights (ImageNet weights are the same for every seed), over the same images,
    compute the same activations. A pass is found by the crossing tensors, a digest of every
    weight below the cut (BatchNormalization statistics included), and the data object itself.

    Args:
        budget_bytes: the most the kept activations may take; the oldest go first.
    """

    def __init__(self, budget_bytes: int = DEFAULT_CACHE_BUDGET):
        self.budget_bytes = budget_bytes
        self._passes: collections.OrderedDict[tuple, _PrefixPass] = collections.OrderedDict()

    @staticmethod
    def key(cut: Cut) -> tuple:
        """What decides a prefix's activations besides its images: its layers, weights and cut.

        Layers count by their type and configuration without their names, which Keras numbers
        anew in every model built (`input_layer_3`).
        """
        digest = hashlib.blake2b(digest_size=16)
        for layer in cut.prefix_layers:
            config = {key: value for key, value in layer.get_config().items() if key != "name"}
            digest.update(f"{type(layer).__name__}:{json.dumps(config, sort_keys=True, default=str)}".encode())
            for weight in layer.weights:
                digest.update(np.ascontiguousarray(keras.ops.convert_to_numpy(weight)).tobytes())
        return cut.cut_layer, cut.crossing_names, digest.hexdigest()

    def find(self, key: tuple, data: ImageData) -> _PrefixPass | None:
        found = self._passes.get(key)
        if found is None or found.data is not data:
            return None
        self._passes.move_to_end(key)
        return found

    def keep(self, key: tuple, prefix_pass: _PrefixPass) -> None:
        self._passes[key] = prefix_pass
        while sum(kept.bytes for kept in self._passes.values()) > self.budget_bytes:
            self._passes.popitem(last=False)


@dataclasses.dataclass(frozen=True)
class StageModels:
    """The two models of a cut: the frozen prefix and the trainable top, sharing the classifier's layers."""

    prefix: keras.Model
    top: keras.Model


def split_models(classifier: keras.Model, cut: Cut) -> StageModels:
    """Builds the prefix (images -> crossing tensors) and the top (crossing tensors -> outputs)."""
    if not cut.inside_base:
        return StageModels(
            keras.Model(classifier.inputs, list(cut.crossing), name="frozen_prefix"),
            keras.Model(list(cut.crossing), classifier.outputs, name="trainable_top"),
        )
    base = classifier.get_layer(BASE_LAYER_NAME)
    (base_node,) = [node for node in keras_internals.graph_nodes(classifier) if node.operation is base]
    around = _crossing(classifier, base)
    if {id(tensor) for tensor in around} != {id(tensor) for tensor in base_node.input_tensors}:
        raise ValueError(f"{classifier.name} passes tensors around its base; cut it outside the base")
    base_prefix = keras.Model(base.inputs, list(cut.crossing), name="base_prefix")
    base_top = keras.Model(list(cut.crossing), base.outputs, name="base_top")
    tail = keras.Model(base_node.output_tensors, classifier.outputs, name="tail")
    prefix_outputs = base_prefix(base_node.arguments.args[0])
    prefix = keras.Model(classifier.inputs, _as_list(prefix_outputs), name="frozen_prefix")
    top_inputs = [
        keras.Input(batch_shape=tensor.shape, dtype=tensor.dtype, name=f"cut_{name}")
        for tensor, name in zip(cut.crossing, cut.crossing_names, strict=True)
    ]
    top = keras.Model(top_inputs, tail(base_top(top_inputs)), name="trainable_top")
    return StageModels(prefix, top)


def _as_list(outputs) -> list:
    return list(outputs) if isinstance(outputs, (list, tuple)) else [outputs]


def joint_prefix(classifier: keras.Model, cuts: Sequence[Cut]) -> keras.Model:
    """One model from the images to the crossing tensors of every cut, cut after cut: one pass gives them all.

    It computes each layer once, up to the highest tensor it gives, on the classifier's own layers.
    """
    inner = [tensor for cut in cuts if cut.inside_base for tensor in cut.crossing]
    outer = [tensor for cut in cuts if not cut.inside_base for tensor in cut.crossing]
    if not inner:
        return keras.Model(classifier.inputs, outer, name="joint_prefix")
    base = classifier.get_layer(BASE_LAYER_NAME)
    (base_node,) = [node for node in keras_internals.graph_nodes(classifier) if node.operation is base]
    through_base = keras.Model(base.inputs, [*inner, *base.outputs] if outer else inner, name="joint_base_prefix")
    values = _as_list(through_base(base_node.arguments.args[0]))
    inner_values = iter(values[: len(inner)])
    outer_values = iter(
        _as_list(keras.Model(list(base_node.output_tensors), outer, name="joint_tail")(values[len(inner):]))
        if outer
        else []
    )
    outputs = [next(inner_values if cut.inside_base else outer_values) for cut in cuts for _ in cut.crossing]
    return keras.Model(classifier.inputs, outputs, name="joint_prefix")


def cache_stage(
    classifier: keras.Model,
    data: ImageData,
    batch_size: int,
    budget_bytes: int = DEFAULT_CACHE_BUDGET,
    split: StageModels | None = None,
    earlier_passes: PrefixActivations | None = None,
    later_cuts: Sequence[Cut | None] = (),
) -> CachedStage:
    """Runs the frozen prefix of `classifier`'s current stage once, or says why it cannot.

    Set the stage's trainable layers first (`lab.finetune.freezing.set_base_trainable`). Compile and
    fit `top` as the classifier would be: its trainable weights are the classifier's.

    Args:
        classifier: a classifier as `lab.networks.models.backbone_classifier` builds it.
        data: the images; the prefix runs over all training and validation images, in order.
        batch_size: images per batch of the prefix pass.
        budget_bytes: the most memory the activations may take.
        split: the `CachedStage.split` of an earlier call on this classifier with the same
            trainable layers (its weights may have changed since): its prefix and its top,
            compiled or not, are used again, so that their traced functions are too.
        earlier_passes: the process's prefix passes: one of the same frozen weights over the
            same images is used instead of running the prefix again, and a new one is kept.
        later_cuts: the cuts of the classifier's later stages (`stage_cuts`), whose layers
            below have not trained either: with `earlier_passes`, a prefix pass that runs
            gives their activations too, within the budget, and keeps them for those stages.

    Raises:
        ValueError: the classifier's graph passes tensors around its base (not a classifier
            `backbone_classifier` builds), or `split` trains other weights than the classifier.
    """
    cut = find_cut(classifier)
    if cut is None:
        return CachedStage("nothing in the classifier is trainable", None, data=data)
    size = cut.cache_bytes(data.train_count + data.validation_count)
    stage = CachedStage(None, cut.cut_layer, cut.crossing_names, size, data=data)
    problems = prefix_problems(cut)
    if problems:
        return dataclasses.replace(stage, reason="; ".join(problems))
    if size > budget_bytes:
        return dataclasses.replace(
            stage,
            reason=f"activations below {cut.cut_layer} would take {size / 2**20:.1f} MiB, "
            f"over the cache budget of {budget_bytes / 2**20:.1f} MiB",
        )
    if split is None:
        split = split_models(classifier, cut)
    elif [id(weight) for weight in split.top.trainable_weights] != [
        id(weight) for weight in classifier.trainable_weights
    ]:
        raise ValueError(
            f"the top passed to cache_stage does not train the trainable weights of {classifier.name}: "
            "it was split from another classifier or at another stage"
        )
    started = time.perf_counter()
    # Passes are kept by image: a split per seed runs over the images it was drawn from, so
    # one pass serves every seed's split.
    images = data.pool or data
    key = PrefixActivations.key(cut) if earlier_passes else None
    prefix_pass = earlier_passes.find(key, images) if earlier_passes else None
    shared = prefix_pass is not None
    if not shared:
        along = _cuts_along(cut, size, later_cuts, images, budget_bytes, earlier_passes)
        cuts = [cut, *(later for later, _ in along)]
        prefix = joint_prefix(classifier, cuts) if along else split.prefix
        train = _as_list(prediction.predict(prefix, images.batches("train", batch_size)))
        validation = _as_list(prediction.predict(prefix, images.batches("validation", batch_size)))
        passes = []
        for each in cuts:
            width = len(each.crossing)
            passes.append(_PrefixPass(images, tuple(train[:width]), tuple(validation[:width])))
            train, validation = train[width:], validation[width:]
        prefix_pass = passes[0]
        if earlier_passes:
            # This stage's pass last: the most recent is the last the budget would drop.
            for (_, later_key), later_pass in zip(along, passes[1:], strict=True):
                earlier_passes.keep(later_key, later_pass)
            earlier_passes.keep(key, prefix_pass)
    return dataclasses.replace(
        stage,
        prefix_seconds=time.perf_counter() - started,
        prefix_shared=shared,
        top=split.top,
        prefix=split.prefix,
        **_activations_of(prefix_pass, data),
    )


def _activations_of(prefix_pass: _PrefixPass, data: ImageData) -> dict[str, tuple[np.ndarray, ...]]:
    """The pass's activations of `data`'s training and validation images, in `data`'s order."""
    if data.pool is None:
        return {"train_activations": prefix_pass.train, "validation_activations": prefix_pass.validation}
    pooled = [np.concatenate([train, validation]) for train, validation in
              zip(prefix_pass.train, prefix_pass.validation, strict=True)]
    train_indices, validation_indices = data.pool_indices
    return {
        "train_activations": tuple(tensor[train_indices] for tensor in pooled),
        "validation_activations": tuple(tensor[validation_indices] for tensor in pooled),
    }


def _cuts_along(
    cut: Cut,
    cut_bytes: int,
    later_cuts: Sequence[Cut | None],
    data: ImageData,
    budget_bytes: int,
    earlier_passes: PrefixActivations | None,
) -> list[tuple[Cut, tuple]]:
    """The later cuts whose activations the pass below `cut` gives as well, with their keys:
    cacheable, not kept yet, and within the budget together with `cut`'s own."""
    if earlier_passes is None:
        return []
    images = data.train_count + data.validation_count
    along, total = [], cut_bytes
    for later in later_cuts:
        if later is None or later.cut_layer == cut.cut_layer or prefix_problems(later):
            continue
        later_bytes = later.cache_bytes(images)
        if total + later_bytes > budget_bytes:
            continue
        # The key hashes every weight below the cut: only for a cut the budget allows.
        key = PrefixActivations.key(later)
        if earlier_passes.find(key, data) is not None or key in [along_key for _, along_key in along]:
            continue
        along.append((later, key))
        total += later_bytes
    return along

"""The keras.applications backbones the lab supports, and how to build each one.

`--backbones` takes every keras.applications constructor by Keras's own name (`ResNet50`,
`EfficientNetB0`, `ConvNeXtTiny`...), whose entry is derived from Keras itself, and the lab's
four hand-written entries (`resnet50`, `vgg16`, `mobilenet`, `mobilenet_v2`), which keep their
published figures and named blocks. Each entry knows its constructor, its own input
preprocessing, its ImageNet no-top weights file, its input size per profile, and the stages in
which gradual unfreezing thaws it from the top.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import itertools
import logging
import math
import os
import re
import types
from collections.abc import Callable

import h5py
import keras
import numpy as np

from lab.errors import LabInputError
from lab.inputs import network, sample
from lab.runtime import keras_internals

logger = logging.getLogger(__name__)

_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"
# The input side of a derived entry in the smoke profile, as the hand-written entries mostly
# have it, unless the network's minimum is larger.
SMOKE_IMAGE_SIZE = 96
# MobileNetV3 declares no default input size: Keras loads its 224 px ImageNet weights at any size.
IMAGENET_IMAGE_SIZE = 224
# Stages of similar weight count a derived entry's base is split into for gradual unfreezing;
# the hand-written entries have four or five named blocks.
DERIVED_STAGES = 5
# Stage cuts may cross this many tensors where a network has too few single-tensor cuts (NASNet).
MAX_CUT_WIDTH = 2


@dataclasses.dataclass(frozen=True)
class WeightsFile:
    """Keras's ImageNet no-top weights file of a backbone.

    Args:
        name: Keras's official file name, as its cache and --weights-dir hold it.
        url: where Keras downloads it from.
        file_hash: the hash Keras checks a download against, where Keras has one.
    """

    name: str
    url: str
    file_hash: str | None = None


@dataclasses.dataclass(frozen=True)
class PublishedFigures:
    """What a hand-written entry states, from Keras's documentation and the lab's choice of blocks.

    Args:
        weights: Keras's ImageNet no-top weights file.
        block_starts: (stage name, first layer of the stage), bottom up.
        layer_count: layers of the no-top network, its input layer included.
        parameter_count: parameters of the no-top network.
        feature_channels: channels of the network's last feature map.
        layers_per_stage: weighted layers one stage thaws in the `layers` unfreezing schedule.
    """

    weights: WeightsFile
    block_starts: tuple[tuple[str, str], ...]
    layer_count: int
    parameter_count: int
    feature_channels: int
    layers_per_stage: int


@dataclasses.dataclass(frozen=True)
class DerivedFigures:
    """A backbone's figures counted on the no-top network Keras builds (random weights)."""

    layer_count: int
    parameter_count: int
    feature_channels: int
    weighted_layer_count: int


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One keras.applications network, without its classification top.

    A hand-written entry carries `published` figures; a derived one counts them on the built
    network the first time they are asked for, and asks Keras for its weights file the first
    time ImageNet weights are.

    Args:
        name: the name in reports: Keras's constructor name, or the hand-written entry's.
        constructor: builds the network given `input_shape`, `include_top` and `weights`.
        preprocess_input: the network's own scaling, applied to images in 0..255.
        minimum_image_size: the smallest input side Keras accepts for it.
        image_size: input side per profile name.
        published: the hand-written entry's figures; None for an entry derived from Keras.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocess_input: Callable
    minimum_image_size: int
    image_size: dict[str, int]
    published: PublishedFigures | None = None

    @functools.cached_property
    def derived(self) -> DerivedFigures:
        """The figures of the network Keras builds now, at its minimum input size."""
        return figures_of(self.build(self.minimum_image_size, None))

    @functools.cached_property
    def weights(self) -> WeightsFile:
        """Keras's ImageNet no-top weights file: published, or the one Keras's own loader asks for."""
        if self.published:
            return self.published.weights
        return keras_weights_file(self.constructor, self.image_size["full"])

    @property
    def keras_name(self) -> str:
        """The keras.applications call that builds it: `MobileNetV2(alpha=0.35)`, `ResNet50`."""
        if isinstance(self.constructor, functools.partial):
            arguments = ", ".join(f"{key}={value!r}" for key, value in self.constructor.keywords.items())
            return f"{self.constructor.func.__name__}({arguments})"
        return self.constructor.__name__

    @property
    def weights_file(self) -> str:
        """Keras's official file name of the ImageNet no-top weights."""
        return self.weights.name

    @property
    def weights_url(self) -> str:
        """Where Keras publishes the ImageNet weights file."""
        return self.weights.url

    @property
    def layer_count(self) -> int:
        """Layers of the no-top network, its input layer included."""
        return self.published.layer_count if self.published else self.derived.layer_count

    @property
    def parameter_count(self) -> int:
        """Parameters of the no-top network."""
        return self.published.parameter_count if self.published else self.derived.parameter_count

    @property
    def feature_channels(self) -> int:
        """Channels of the network's last feature map."""
        return self.published.feature_channels if self.published else self.derived.feature_channels

    @property
    def layers_per_stage(self) -> int:
        """Weighted layers one stage thaws in the `layers` schedule; a derived entry's split in
        `DERIVED_STAGES` groups."""
        if self.published:
            return self.published.layers_per_stage
        return math.ceil(self.derived.weighted_layer_count / DERIVED_STAGES)

    @property
    def block_starts(self) -> tuple[tuple[str, str], ...]:
        """A hand-written entry's named blocks, bottom up; () for a derived entry, whose stages
        come from its graph (`graph_stages`)."""
        return self.published.block_starts if self.published else ()

    def check_image_size(self, image_size: int) -> None:
        """Raises LabInputError naming the minimum if `image_size` is below it."""
        if image_size < self.minimum_image_size:
            raise LabInputError(
                f"{self.name} takes images of at least {self.minimum_image_size}x{self.minimum_image_size} "
                f"pixels, not {image_size}: use --image-size {self.minimum_image_size} or more"
            )

    def build(self, image_size: int, weights: str | None, name: str | None = None) -> keras.Model:
        """Builds the no-top network for square RGB images of side `image_size`.

        Args:
            image_size: input side in pixels.
            weights: a weights file path, or None for a random initialisation.
            name: the model's name; Keras's own when None.
        """
        self.check_image_size(image_size)
        try:
            model = self.constructor(input_shape=(image_size, image_size, 3), include_top=False, weights=weights)
        except (ValueError, KeyError, OSError) as error:
            if weights is None:
                raise
            raise LabInputError(
                f"weights file {weights} does not fit {self.name} ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:160]}): pass a folder holding {self.weights_file} "
                "with --weights-dir, or --weights none"
            ) from None
        # Named after construction: EfficientNetV2 looks its block settings up by its `name`.
        if name:
            model.name = name
        return model

    def stages_top_down(self, base: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
        """Splits the layers of `base` (built by `build`) into named stages, topmost first.

        A hand-written entry's stages are its named blocks; a derived entry's are
        `DERIVED_STAGES` groups of its graph's cut points (`graph_stages`).
        """
        if not self.published:
            return graph_stages(base, DERIVED_STAGES)
        names = [layer.name for layer in base.layers]
        starts = []
        for stage, first_layer in self.block_starts:
            if first_layer not in names:
                raise LabInputError(
                    f"{self.name}: block boundary {first_layer!r} is not a layer of {base.name}; "
                    "the registry in lab/networks/backbones.py does not match this Keras version"
                )
            starts.append((stage, names.index(first_layer)))
        stages = []
        for position, (stage, start) in enumerate(starts):
            end = starts[position + 1][1] if position + 1 < len(starts) else len(names)
            stages.append((stage, base.layers[start:end]))
        return stages[::-1]


def figures_of(base: keras.Model) -> DerivedFigures:
    """The figures of a no-top network Keras built."""
    return DerivedFigures(
        layer_count=len(base.layers),
        parameter_count=base.count_params(),
        feature_channels=base.output_shape[-1],
        weighted_layer_count=sum(has_weights_to_train(layer) for layer in base.layers),
    )


def has_weights_to_train(layer: keras.layers.Layer) -> bool:
    """Whether a gradual schedule thaws `layer`: it has variables made trainable (whatever its flag
    says now; EfficientNet's Normalization layer holds only fixed statistics) and is no
    BatchNormalization, which stays frozen (lab/finetune/freezing.py)."""
    trainable = any(variable.trainable for variable in layer.weights)
    return trainable and not isinstance(layer, keras.layers.BatchNormalization)


REGISTRY: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            name="resnet50",
            constructor=keras.applications.ResNet50,
            preprocess_input=keras.applications.resnet50.preprocess_input,
            minimum_image_size=32,
            image_size={"smoke": 96, "full": 224},
            published=PublishedFigures(
                weights=WeightsFile(
                    "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    _WEIGHTS_URL + "resnet/resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
                ),
                block_starts=(
                    ("stem", "conv1_pad"),
                    ("conv2", "conv2_block1_1_conv"),
                    ("conv3", "conv3_block1_1_conv"),
                    ("conv4", "conv4_block1_1_conv"),
                    ("conv5", "conv5_block1_1_conv"),
                ),
                layer_count=175,
                parameter_count=23_587_712,
                feature_channels=2048,
                layers_per_stage=16,
            ),
        ),
        Backbone(
            name="vgg16",
            constructor=keras.applications.VGG16,
            preprocess_input=keras.applications.vgg16.preprocess_input,
            minimum_image_size=32,
            image_size={"smoke": 64, "full": 224},
            published=PublishedFigures(
                weights=WeightsFile(
                    "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                    _WEIGHTS_URL + "vgg16/vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
                ),
                block_starts=tuple((f"block{i}", f"block{i}_conv1") for i in range(1, 6)),
                layer_count=19,
                parameter_count=14_714_688,
                feature_channels=512,
                layers_per_stage=3,
            ),
        ),
        Backbone(
            name="mobilenet",
            constructor=functools.partial(keras.applications.MobileNet, alpha=0.25),
            preprocess_input=keras.applications.mobilenet.preprocess_input,
            minimum_image_size=32,
            image_size={"smoke": 96, "full": 224},
            published=PublishedFigures(
                weights=WeightsFile(
                    "mobilenet_2_5_224_tf_no_top.h5", _WEIGHTS_URL + "mobilenet/mobilenet_2_5_224_tf_no_top.h5"
                ),
                block_starts=(
                    ("stem", "conv1"),
                    ("blocks_1-5", "conv_dw_1"),
                    ("blocks_6-11", "conv_pad_6"),
                    ("blocks_12-13", "conv_pad_12"),
                ),
                layer_count=86,
                parameter_count=218_544,
                feature_channels=256,
                layers_per_stage=8,
            ),
        ),
        Backbone(
            name="mobilenet_v2",
            constructor=functools.partial(keras.applications.MobileNetV2, alpha=0.35),
            preprocess_input=keras.applications.mobilenet_v2.preprocess_input,
            minimum_image_size=32,
            image_size={"smoke": 96, "full": 224},
            published=PublishedFigures(
                weights=WeightsFile(
                    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
                    _WEIGHTS_URL + "mobilenet_v2/mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
                ),
                block_starts=(
                    ("stem", "Conv1"),
                    ("blocks_1-5", "block_1_expand"),
                    ("blocks_6-12", "block_6_expand"),
                    ("blocks_13-16", "block_13_expand"),
                    ("top_conv", "Conv_1"),
                ),
                layer_count=154,
                parameter_count=410_208,
                feature_channels=1280,
                layers_per_stage=20,
            ),
        ),
    )
}


def keras_application_names() -> list[str]:
    """Every network constructor of keras.applications, by Keras's own name."""
    return sorted(name for name in dir(keras.applications) if name[:1].isupper())


def application_module(constructor: Callable) -> types.ModuleType:
    """The keras.applications module a constructor is defined in, which holds its `preprocess_input`.

    The defining module, not the public alias: `keras.applications.mobilenet_v3` has no public
    module, and its `preprocess_input` (the network scales its own input) is there.
    """
    return keras_internals.application_source_module(constructor)


def family_of(constructor: Callable) -> str:
    """The Keras source module a constructor comes from: one family of networks (`resnet`, `convnext`)."""
    return application_module(constructor).__name__.rsplit(".", 1)[-1]


def input_sizes(constructor: Callable) -> tuple[int, int]:
    """The (minimum, default) input side Keras states for a constructor, without building it.

    Asks the constructor for a 1x1 input: Keras's own check refuses it, naming the minimum,
    before any layer is made; its shape helper is called with the default size.
    """
    with keras_internals.input_size_checks_recorded() as declared:
        try:
            constructor(input_shape=(1, 1, 3), include_top=False, weights=None)
        except ValueError as error:
            stated = re.search(r"at least (\d+)x\1", str(error))
            if stated:
                declared.setdefault("minimum", int(stated.group(1)))
    if "minimum" not in declared:
        raise LookupError(f"{family_of(constructor)}: Keras states no minimum input size")
    return declared["minimum"], declared.get("default", IMAGENET_IMAGE_SIZE)


def keras_weights_file(constructor: Callable, image_size: int) -> WeightsFile:
    """The ImageNet no-top weights file Keras's `weights="imagenet"` loads for `constructor`.

    Keras names these files in each application's code (a constant in some modules, a name put
    together from the model's options in others), so the name is taken from Keras's own
    request: the network is built with `weights="imagenet"` and stopped when it asks for the
    file, before anything is downloaded.
    """
    request = keras_internals.requested_weights_file(
        lambda: constructor(input_shape=(image_size, image_size, 3), include_top=False, weights="imagenet")
    )
    if request is not None:
        return WeightsFile(*request)
    raise LookupError(f"{family_of(constructor)}: Keras loaded ImageNet weights without asking for a file")


@functools.cache
def derived_backbone(name: str) -> Backbone:
    """The entry of keras.applications' `name`, derived from Keras itself."""
    constructor = getattr(keras.applications, name)
    minimum, default = input_sizes(constructor)
    return Backbone(
        name=name,
        constructor=constructor,
        preprocess_input=application_module(constructor).preprocess_input,
        minimum_image_size=minimum,
        image_size={"smoke": max(SMOKE_IMAGE_SIZE, minimum), "full": default},
    )


def get_backbone(name: str) -> Backbone:
    """The hand-written entry `name`, or the entry derived from keras.applications' `name`.

    Raises:
        LabInputError: `name` is neither, listing the close matches.
    """
    if name in REGISTRY:
        return REGISTRY[name]
    if name in keras_application_names():
        return derived_backbone(name)
    known = [*REGISTRY, *keras_application_names()]
    lowered = {known_name.lower() for known_name in known}
    matches = difflib.get_close_matches(name.lower(), lowered, n=4, cutoff=0.6)
    # resnet50 and ResNet50 match alike: both are named, the lab's first.
    close = [known_name for match in matches for known_name in known if known_name.lower() == match][:4]
    suggestion = f"did you mean {' or '.join(close)}? " if close else ""
    raise LabInputError(
        f"unknown backbone {name!r}: {suggestion}--backbones takes any keras.applications network by "
        f"Keras's name ({', '.join(keras_application_names())}) or the lab's {', '.join(REGISTRY)}"
    )


def cut_points(base: keras.Model, width: int = 1) -> list[int]:
    """The layer indices `i` of `base` where at most `width` tensors connect `base.layers[:i]` to the rest.

    With `width=1`, the places where exactly one tensor does: the block boundaries of a
    network, below which nothing but that tensor is needed above. Counted on `base.operations`
    (in topological order), which also holds the plain operations (`x + 3.0`) some applications
    use between layers.

    Returns:
        Sorted indices, each above the input layer.
    """
    widths = boundary_widths(base)
    return [index for index in range(1, len(base.layers)) if widths[index] <= width]


def boundary_widths(base: keras.Model) -> list[int]:
    """For each layer index `i` of `base`, the fewest tensors connecting `base.layers[:i]` to the rest.

    Between two layers may lie plain operations, which go with either side: the narrowest place
    among them counts. Index 0 (nothing below) is 0.
    """
    operations = base.operations
    position = {id(operation): index for index, operation in enumerate(operations)}
    spans: dict[int, list[int]] = {}
    for node in keras_internals.graph_nodes(base):
        if node.is_input:
            continue
        used_at = position[id(node.operation)]
        for tensor in node.input_tensors:
            made_at = position[id(keras_internals.producing_operation(tensor))]
            span = spans.setdefault(id(tensor), [made_at, used_at])
            span[1] = max(span[1], used_at)
    for tensor in base.outputs:
        spans[id(tensor)] = [position[id(keras_internals.producing_operation(tensor))], len(operations)]
    # A tensor made by operation m and last used by operation u crosses every cut before p, m < p <= u.
    changes = np.zeros(len(operations) + 2, dtype=np.int64)
    for made_at, used_at in spans.values():
        changes[made_at + 1] += 1
        changes[used_at + 1] -= 1
    crossing = np.cumsum(changes)
    widths = [0]
    for lower, upper in itertools.pairwise(base.layers):
        widths.append(int(crossing[position[id(lower)] + 1 : position[id(upper)] + 1].min()))
    return widths


def graph_stages(base: keras.Model, count: int) -> list[tuple[str, list[keras.layers.Layer]]]:
    """Up to `count` stages of similar weight count, cut at `cut_points`, topmost first.

    Single-tensor cuts where the graph has enough of them; else cuts of up to
    `MAX_CUT_WIDTH` tensors (a NASNet cell takes the outputs of the two cells below it, so
    NASNet has no single-tensor cut between its cells), never between a layer with weights and
    the normalization or activation that finishes it. Each stage is named by its first and
    last layer and holds weights to train; fewer than `count` come back only where even the
    wider cuts are too few.
    """
    layers = base.layers
    sizes = [
        sum(int(np.prod(weight.shape)) for weight in layer.weights) if has_weights_to_train(layer) else 0
        for layer in layers
    ]
    below = np.concatenate([[0], np.cumsum(sizes)])
    first = next(index for index, layer in enumerate(layers) if not isinstance(layer, keras.layers.InputLayer))
    widths = boundary_widths(base)
    for width in range(1, MAX_CUT_WIDTH + 1):
        cuts = [
            index
            for index in range(first + 1, len(layers))
            if widths[index] <= width and not _finishes_the_layer_below(layers, index)
        ]
        boundaries = _balanced_boundaries(below, first, cuts, count)
        if len(boundaries) == count:
            break
    ends = [*boundaries[1:], len(layers)]
    stages = [
        (f"{layers[start].name}..{layers[end - 1].name}", layers[start:end])
        for start, end in zip(boundaries, ends, strict=True)
    ]
    return stages[::-1]


def _finishes_the_layer_below(layers: list[keras.layers.Layer], index: int) -> bool:
    # A normalization or activation right above a layer with weights completes it (conv, then
    # batch norm, then relu): a stage does not start there.
    followers = (
        keras.layers.BatchNormalization,
        keras.layers.LayerNormalization,
        keras.layers.Activation,
        keras.layers.ReLU,
    )
    return isinstance(layers[index], followers) and bool(layers[index - 1].weights)


def _balanced_boundaries(below: np.ndarray, first: int, cuts: list[int], count: int) -> list[int]:
    """The first layer of each of up to `count` stages, chosen among `cuts` to split the weights
    (`below[i]`: weights of the layers under `i`) evenly; every stage has some."""
    total = below[-1]
    usable = [cut for cut in cuts if below[first] < below[cut] < total]
    boundaries = [first]
    for stage in range(1, count):
        options = [
            cut
            for position, cut in enumerate(usable)
            if below[cut] > below[boundaries[-1]] and len(usable) - position > count - 1 - stage
        ]
        if not options:
            break
        target = total * stage / count
        boundaries.append(min(options, key=lambda cut: abs(below[cut] - target)))
    return boundaries


def weights_file_tensors(path: str) -> list[list[np.ndarray]]:
    """The tensors of a Keras HDF5 weights file, per layer with weights, in the file's order."""
    with h5py.File(path, "r") as stream:
        group = stream["model_weights"] if "model_weights" in stream else stream
        layers = []
        for layer_name in group.attrs["layer_names"]:
            layer = group[_text(layer_name)]
            names = [_text(name) for name in layer.attrs["weight_names"]]
            if names:
                layers.append([np.asarray(layer[name]) for name in names])
        return layers


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Which weights a backbone starts from, and where they came from (for the report)."""

    kind: str
    path: str | None
    origin: str


def resolve_weights(backbone: Backbone, weights: str, weights_dir: str | None) -> WeightsSource:
    """Finds `backbone`'s weights: --weights-dir, the embedded sample, Keras's cache, a download, or none.

    Args:
        backbone: the registry entry.
        weights: `imagenet` or `none`.
        weights_dir: a folder that may hold the official weights file under its own name.

    Raises:
        LabInputError: `imagenet` was asked for, no file is at hand and the download server
            cannot be reached (raised within seconds), or the sample's file is altered.
    """
    if weights == "none":
        return WeightsSource("none", None, "random initialisation (--weights none)")
    if weights != "imagenet":
        raise LabInputError(f"unknown weights {weights!r}: use --weights imagenet or --weights none")
    if weights_dir:
        local = os.path.join(weights_dir, backbone.weights_file)
        if os.path.isfile(local):
            logger.info("%s: ImageNet weights from --weights-dir: %s", backbone.name, local)
            return WeightsSource("imagenet", local, f"file {local}")
        logger.info("%s: no %s in --weights-dir %s; looking further", backbone.name, backbone.weights_file, weights_dir)
    embedded = sample.embedded_weights(backbone.weights_file)
    if embedded:
        return WeightsSource("imagenet", embedded, f"embedded sample {embedded}")
    cached = os.path.join(keras_home(), "models", backbone.weights_file)
    if os.path.isfile(cached):
        logger.info("%s: ImageNet weights from Keras's cache: %s", backbone.name, cached)
        return WeightsSource("imagenet", cached, f"Keras cache {cached}")
    if not network.can_reach():
        where = f"in {weights_dir}, " if weights_dir else ""
        raise LabInputError(
            f"ImageNet weights for {backbone.name} ({backbone.weights_file}) are not {where}"
            f"in the embedded sample, in Keras's cache, and {network.DOWNLOAD_HOST} cannot be reached: pass "
            "--weights-dir with a folder holding that file, or --weights none"
        )
    logger.info("%s: downloading ImageNet weights %s into Keras's cache", backbone.name, backbone.weights_url)
    path = keras.utils.get_file(
        backbone.weights_file, backbone.weights_url, cache_subdir="models", file_hash=backbone.weights.file_hash
    )
    return WeightsSource("imagenet", path, f"downloaded {backbone.weights_url}")


def keras_home() -> str:
    """Keras's own cache folder, as keras.utils.get_file uses it."""
    return os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))

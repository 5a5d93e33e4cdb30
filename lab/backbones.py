"""The keras.applications backbones the lab supports, and how to build each one.

Each entry knows its constructor, its own input preprocessing, the official file name of its
ImageNet no-top weights, its input size per profile, and where its blocks start, so that
gradual unfreezing can thaw it stage by stage from the top.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
from collections.abc import Callable

import h5py
import keras
import numpy as np

from lab import network, sample
from lab.errors import LabInputError

logger = logging.getLogger(__name__)

_WEIGHTS_URL = "https://storage.googleapis.com/tensorflow/keras-applications/"


@dataclasses.dataclass(frozen=True)
class Backbone:
    """One supported keras.applications network, without its classification top.

    Args:
        name: the name used on the command line and in reports.
        constructor: builds the network given `input_shape` and `weights`.
        preprocess_input: the network's own scaling, applied to images in 0..255.
        weights_file: Keras's official file name of the ImageNet no-top weights.
        weights_subdir: the folder of that file under Keras's download address.
        image_size: input side per profile name.
        block_starts: (stage name, first layer of the stage), bottom up.
        layer_count: layers of the no-top network, its input layer included.
        parameter_count: parameters of the no-top network.
        feature_channels: channels of the network's last feature map.
        layers_per_stage: weighted layers one stage thaws in the `layers` unfreezing schedule.
    """

    name: str
    constructor: Callable[..., keras.Model]
    preprocess_input: Callable
    weights_file: str
    weights_subdir: str
    image_size: dict[str, int]
    block_starts: tuple[tuple[str, str], ...]
    layer_count: int
    parameter_count: int
    feature_channels: int
    layers_per_stage: int

    @property
    def weights_url(self) -> str:
        """Where Keras publishes the ImageNet weights file."""
        return _WEIGHTS_URL + self.weights_subdir + "/" + self.weights_file

    def build(self, image_size: int, weights: str | None, name: str | None = None) -> keras.Model:
        """Builds the no-top network for square RGB images of side `image_size`.

        Args:
            image_size: input side in pixels.
            weights: a weights file path, or None for a random initialisation.
            name: the model's name; Keras's own when None.
        """
        naming = {"name": name} if name else {}
        try:
            return self.constructor(
                input_shape=(image_size, image_size, 3), include_top=False, weights=weights, **naming
            )
        except (ValueError, KeyError, OSError) as error:
            if weights is None:
                raise
            raise LabInputError(
                f"weights file {weights} does not fit {self.name} ({type(error).__name__}: "
                f"{str(error).splitlines()[0][:160]}): pass a folder holding {self.weights_file} "
                "with --weights-dir, or --weights none"
            ) from None

    def stages_top_down(self, base: keras.Model) -> list[tuple[str, list[keras.layers.Layer]]]:
        """Splits the layers of `base` (built by `build`) into named stages, topmost first."""
        names = [layer.name for layer in base.layers]
        starts = []
        for stage, first_layer in self.block_starts:
            if first_layer not in names:
                raise LabInputError(
                    f"{self.name}: block boundary {first_layer!r} is not a layer of {base.name}; "
                    "the registry in lab/backbones.py does not match this Keras version"
                )
            starts.append((stage, names.index(first_layer)))
        stages = []
        for position, (stage, start) in enumerate(starts):
            end = starts[position + 1][1] if position + 1 < len(starts) else len(names)
            stages.append((stage, base.layers[start:end]))
        return stages[::-1]


REGISTRY: dict[str, Backbone] = {
    backbone.name: backbone
    for backbone in (
        Backbone(
            name="resnet50",
            constructor=keras.applications.ResNet50,
            preprocess_input=keras.applications.resnet50.preprocess_input,
            weights_file="resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_subdir="resnet",
            image_size={"smoke": 96, "full": 224},
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
        Backbone(
            name="vgg16",
            constructor=keras.applications.VGG16,
            preprocess_input=keras.applications.vgg16.preprocess_input,
            weights_file="vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
            weights_subdir="vgg16",
            image_size={"smoke": 64, "full": 224},
            block_starts=tuple((f"block{i}", f"block{i}_conv1") for i in range(1, 6)),
            layer_count=19,
            parameter_count=14_714_688,
            feature_channels=512,
            layers_per_stage=3,
        ),
        Backbone(
            name="mobilenet",
            constructor=functools.partial(keras.applications.MobileNet, alpha=0.25),
            preprocess_input=keras.applications.mobilenet.preprocess_input,
            weights_file="mobilenet_2_5_224_tf_no_top.h5",
            weights_subdir="mobilenet",
            image_size={"smoke": 96, "full": 224},
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
        Backbone(
            name="mobilenet_v2",
            constructor=functools.partial(keras.applications.MobileNetV2, alpha=0.35),
            preprocess_input=keras.applications.mobilenet_v2.preprocess_input,
            weights_file="mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
            weights_subdir="mobilenet_v2",
            image_size={"smoke": 96, "full": 224},
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
    )
}


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


def get_backbone(name: str) -> Backbone:
    """Returns the registry entry called `name`, or an error that lists the supported ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise LabInputError(
            f"unknown backbone {name!r}: use --backbones with any of {', '.join(REGISTRY)}"
        ) from None


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
    path = keras.utils.get_file(backbone.weights_file, backbone.weights_url, cache_subdir="models")
    return WeightsSource("imagenet", path, f"downloaded {backbone.weights_url}")


def keras_home() -> str:
    """Keras's own cache folder, as keras.utils.get_file uses it."""
    return os.environ.get("KERAS_HOME", os.path.join(os.path.expanduser("~"), ".keras"))

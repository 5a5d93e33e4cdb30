"""Run profiles: how much data, how large, how long, for each experiment."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from lab.errors import LabInputError

if TYPE_CHECKING:
    from lab.networks.backbones import Backbone

# keras.applications refuses inputs smaller than this for a network without its top.
MIN_BACKBONE_IMAGE_SIZE = 32
# Experiments 1 and 2 record whether the training loss fell from the first epoch to the last.
MIN_EPOCHS = 2


@dataclasses.dataclass(frozen=True)
class Profile:
    """The settings that separate a CPU smoke run from the lab's full run.

    Args:
        name: `smoke` or `full`.
        cnn_image_size: side of the images for experiments 1 and 2 (the lab: 32).
        flowers_train: training images of tf_flowers (None: all of them).
        flowers_validation: validation images of tf_flowers (None: the whole held-out part).
        cifar_train: training images of CIFAR-10 (None: all 50,000).
        cifar_validation: validation images of CIFAR-10 (None: the whole test split).
        cnn_epochs: epochs for experiments 1 and 2.
        backbone_train: training images for experiments 3 to 5.
        backbone_validation: validation images for experiments 3 to 5.
        backbone_epochs: epochs of a classifier on a backbone, trained end to end (experiment 4).
        cached_head_epochs: epochs of a head on cached features (experiment 3): each costs
            one Dense layer's pass, so the head can train until it converges.
        batch_size: batch size everywhere.
        benchmark_rounds: timed epochs per benchmark case, after one untimed warm-up epoch.
        benchmark_images: images per timed epoch in experiment 4.
        unfreeze_stages: how many blocks of the base experiment 5 thaws after the head stage.
        stage_epochs: epochs per stage of experiment 5.
        default_backbones: the backbones each experiment covers when --backbones is not given.
        backbone_image_size: one input side for every backbone (--image-size), or None for
            each backbone's own size in this profile.
        test_timeout_seconds: pytest-timeout's limit per test where none is given (`--timeout`),
            or None for no limit.
    """

    name: str
    cnn_image_size: int
    flowers_train: int | None
    flowers_validation: int | None
    cifar_train: int | None
    cifar_validation: int | None
    cnn_epochs: int
    backbone_train: int | None
    backbone_validation: int | None
    backbone_epochs: int
    cached_head_epochs: int
    batch_size: int
    benchmark_rounds: int
    benchmark_images: int | None
    unfreeze_stages: int
    stage_epochs: int
    default_backbones: dict[str, tuple[str, ...]]
    backbone_image_size: int | None = None
    test_timeout_seconds: float | None = None

    def image_size_of(self, backbone: Backbone) -> int:
        """The input side `backbone` gets in this profile."""
        return self.backbone_image_size or backbone.image_size[self.name]


SMOKE = Profile(
    name="smoke",
    cnn_image_size=32,
    flowers_train=400,
    flowers_validation=100,
    cifar_train=1000,
    cifar_validation=500,
    cnn_epochs=8,
    backbone_train=400,
    backbone_validation=100,
    backbone_epochs=5,
    cached_head_epochs=30,
    batch_size=32,
    benchmark_rounds=3,
    benchmark_images=128,
    unfreeze_stages=2,
    stage_epochs=2,
    default_backbones={
        "pretrained": ("resnet50", "mobilenet", "mobilenet_v2"),
        "freeze": ("resnet50", "mobilenet", "mobilenet_v2"),
        "unfreeze": ("mobilenet_v2",),
    },
)

# The lab's own settings, for one modern GPU: whole datasets, 224x224 ResNet50 and VGG16.
# Epoch counts are where the lab's models stop improving on validation accuracy: the CNN
# at 32x32 plateaus after about 15 epochs, a head on frozen ImageNet features after about 10.
FULL = Profile(
    name="full",
    cnn_image_size=32,
    flowers_train=None,
    flowers_validation=None,
    cifar_train=None,
    cifar_validation=None,
    cnn_epochs=15,
    backbone_train=None,
    backbone_validation=None,
    backbone_epochs=10,
    cached_head_epochs=30,
    batch_size=64,
    benchmark_rounds=3,
    benchmark_images=None,
    unfreeze_stages=3,
    stage_epochs=3,
    default_backbones={
        "pretrained": ("resnet50",),
        "freeze": ("resnet50", "mobilenet_v2"),
        "unfreeze": ("vgg16", "mobilenet_v2", "resnet50"),
    },
    # Two hours: the longest test of a full run on one GPU takes minutes; on a CPU, hours.
    test_timeout_seconds=7200.0,
)

PROFILES = {profile.name: profile for profile in (SMOKE, FULL)}


def with_overrides(profile: Profile, epochs: int | None = None, backbone_image_size: int | None = None) -> Profile:
    """`profile` with every epoch count, or every backbone's input side, replaced.

    Made for cheap structural runs: `--profile full --epochs 2 --image-size 32` builds and
    trains every case of the full profile, every backbone and unfreezing stage, on a CPU.
    The timed benchmark rounds of experiment 4 are a measurement's repeats, not training
    epochs, and stay as they are.

    Raises:
        LabInputError: an epoch count or side too small for the experiments, naming the option.
    """
    changes: dict[str, int] = {}
    if epochs is not None:
        if epochs < MIN_EPOCHS:
            raise LabInputError(
                f"--epochs must be at least {MIN_EPOCHS}, got {epochs}: experiments 1 and 2 "
                "record whether the training loss fell from the first epoch to the last"
            )
        changes.update(cnn_epochs=epochs, backbone_epochs=epochs, cached_head_epochs=epochs, stage_epochs=epochs)
    if backbone_image_size is not None:
        if backbone_image_size < MIN_BACKBONE_IMAGE_SIZE:
            raise LabInputError(
                f"--image-size must be at least {MIN_BACKBONE_IMAGE_SIZE} pixels, got {backbone_image_size}: "
                "the smallest input keras.applications backbones accept"
            )
        changes["backbone_image_size"] = backbone_image_size
    return dataclasses.replace(profile, **changes)


def get_profile(name: str) -> Profile:
    """Returns the profile called `name`, or raises an error that lists the known ones."""
    try:
        return PROFILES[name]
    except KeyError:
        raise LabInputError(
            f"unknown profile {name!r}: use --profile with one of {', '.join(PROFILES)}"
        ) from None

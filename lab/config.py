"""The run's settings, from the command line, checked before any data is read."""

from __future__ import annotations

import dataclasses
import os

from lab import backbones, data
from lab.errors import LabInputError
from lab.profiles import Profile, get_profile

WEIGHTS_CHOICES = ("imagenet", "none")
STRATEGIES = ("default", "mirrored")


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a session needs to know about what to run and on what.

    Attributes:
        profile: the profile's settings.
        data_source: `tfds`, `folder` or `mock`.
        data_dir: the image folder for the folder source.
        seed: seeds every generator.
        subset: training images per dataset, overriding the profile.
        backbones: the backbones named with --backbones, or None for the profile's defaults.
        weights: `imagenet` or `none`.
        weights_dir: a folder with official weights files.
        deterministic: TensorFlow op determinism on.
        strategy: `default` or `mirrored`.
        mixed_precision: float16 compute where the device supports it.
    """

    profile: Profile
    data_source: str
    data_dir: str | None
    seed: int
    subset: int | None
    backbones: tuple[str, ...] | None
    weights: str
    weights_dir: str | None
    deterministic: bool = False
    strategy: str = "default"
    mixed_precision: bool = False

    def backbones_for(self, experiment: str) -> tuple[str, ...]:
        """The backbones experiment `pretrained`, `freeze` or `unfreeze` covers."""
        return self.backbones or self.profile.default_backbones[experiment]

    def train_count(self, profile_count: int | None) -> int | None:
        return self.subset if self.subset is not None else profile_count

    def describe_data(self) -> str:
        if self.data_source == "folder":
            return f"folder {self.data_dir}"
        if self.data_source == "mock":
            return "tensorflow-datasets mock data (random images)"
        return "tensorflow-datasets"


def build_config(
    profile: str,
    data_source: str | None,
    data_dir: str | None,
    seed: int,
    subset: int | None,
    backbone_names: str | None,
    weights: str,
    weights_dir: str | None,
    deterministic: bool = False,
    strategy: str = "default",
    mixed_precision: bool = False,
) -> RunConfig:
    """Checks every option and returns the run's settings.

    Raises:
        LabInputError: naming the option to fix.
    """
    if data_source is None:
        data_source = "folder" if data_dir else "tfds"
    if data_source not in data.SOURCES:
        raise LabInputError(f"unknown --data-source {data_source!r}: use one of {', '.join(data.SOURCES)}")
    if data_source == "folder" and not data_dir:
        raise LabInputError("--data-source folder needs --data-dir PATH")
    if data_dir and not os.path.isdir(data_dir):
        raise LabInputError(f"--data-dir {data_dir} is not a folder: give the folder that holds flower_photos/ and cifar10/")
    if subset is not None and subset <= 0:
        raise LabInputError(f"--subset must be a positive number of training images, got {subset}")
    names = None
    if backbone_names:
        names = tuple(name.strip() for name in backbone_names.split(",") if name.strip())
        for name in names:
            backbones.get_backbone(name)
    if weights not in WEIGHTS_CHOICES:
        raise LabInputError(f"unknown --weights {weights!r}: use one of {', '.join(WEIGHTS_CHOICES)}")
    if weights_dir and not os.path.isdir(weights_dir):
        raise LabInputError(f"--weights-dir {weights_dir} is not a folder")
    if strategy not in STRATEGIES:
        raise LabInputError(f"unknown --strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    return RunConfig(
        profile=get_profile(profile),
        data_source=data_source,
        data_dir=os.path.abspath(data_dir) if data_dir else None,
        seed=seed,
        subset=subset,
        backbones=names,
        weights=weights,
        weights_dir=os.path.abspath(weights_dir) if weights_dir else None,
        deterministic=deterministic,
        strategy=strategy,
        mixed_precision=mixed_precision,
    )

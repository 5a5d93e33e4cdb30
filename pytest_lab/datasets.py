"""The datasets a session's tests need, loaded once per process and checked before the first test trains.

The plugin hands its collection and setup hooks to one `SessionDatasets`, kept in the config's
stash; the experiments' data fixtures load through it. A test names the data it needs by the
fixtures it takes (`flowers_small`, `cifar10`, `backbone_data` with its `backbone_name`), and
`needed` reads them from there, so that bad data stops the session before any training.
"""

from __future__ import annotations

import time
from typing import NoReturn

import pytest

from lab.config import RunConfig
from lab.errors import LabInputError
from lab.inputs import data
from lab.inputs.data import ImageData
from lab.inputs.datasets import DatasetSpec
from lab.networks.backbones import Backbone, get_backbone

# `image_data`'s arguments: (dataset, image size, train images, validation images).
DatasetArguments = tuple


def flowers_small_dataset(profile) -> DatasetArguments:
    """Experiment 1's tf_flowers at the lab CNN's size, with the profile's counts."""
    return "tf_flowers", profile.cnn_image_size, profile.flowers_train, profile.flowers_validation


def cifar10_dataset(profile) -> DatasetArguments:
    """Experiment 2's CIFAR-10 at the lab CNN's size, with the profile's counts."""
    return "cifar10", profile.cnn_image_size, profile.cifar_train, profile.cifar_validation


def backbone_dataset(dataset: DatasetSpec, profile, backbone: Backbone) -> DatasetArguments:
    """Experiments 3-5's dataset (--dataset) at `backbone`'s input size, with the profile's counts."""
    return dataset, profile.image_size_of(backbone), profile.backbone_train, profile.backbone_validation


class SessionDatasets:
    """This process's loaded datasets, what loading them cost, and the error that stopped them.

    Args:
        run: the run's checked settings.
        is_worker: whether this process is an xdist worker (which cannot stop its siblings).
        resumed_digests: validation set name -> its images' digest, in the journal `--resume`
            continues: data loaded under one of those names must be the same images.
        baseline_digests: the digests of the validation images `--baseline`'s run predicted: the
            data this session loads must share some of them, or nothing could be compared.
    """

    def __init__(
        self, run: RunConfig, is_worker: bool, resumed_digests: dict[str, str | None] | None = None,
        baseline_digests: set[str] | None = None,
    ):
        self.run = run
        self.is_worker = is_worker
        self.resumed_digests = resumed_digests or {}
        self.baseline_digests = baseline_digests or set()
        self.loaded: dict[DatasetArguments, ImageData | LabInputError] = {}
        # Seconds each dataset loaded before the first test took, and those a test's time split holds.
        self.load_seconds: dict[DatasetArguments, float] = {}
        self.charged: set[DatasetArguments] = set()
        self.error: LabInputError | None = None

    def load(self, dataset: str | DatasetSpec, image_size: int, train: int | None, validation: int | None):
        """The ImageData, or the LabInputError that stopped it, loaded once per process.

        `dataset` is one of the lab's by name (from --data-source), or a spec (experiments 3-5's
        --dataset); `train` is the profile's count, replaced by --subset when given.
        """
        key = (dataset, image_size, train, validation)
        if key not in self.loaded:
            try:
                spec = dataset if isinstance(dataset, DatasetSpec) else data.lab_dataset(
                    dataset, self.run.data_source, self.run.data_dir
                )
                self.loaded[key] = data.load_dataset(
                    spec, image_size, self.run.train_count(train), validation,
                    strict_train_count=self.run.options.subset is not None, data_dir=self.run.data_dir,
                )
            except LabInputError as error:
                self.loaded[key] = error
        return self.loaded[key]

    def needed(self, item: pytest.Item) -> list[DatasetArguments]:
        """The datasets test `item` uses, read from its fixture names."""
        fixtures = getattr(item, "fixturenames", ())
        profile = self.run.profile
        needed = []
        if "flowers_small" in fixtures:
            needed.append(flowers_small_dataset(profile))
        if "cifar10" in fixtures:
            needed.append(cifar10_dataset(profile))
        callspec = getattr(item, "callspec", None)
        backbone_name = callspec.params.get("backbone_name") if callspec else None
        if "backbone_data" in fixtures and backbone_name:
            needed.append(backbone_dataset(self.run.dataset, profile, get_backbone(backbone_name)))
        return needed

    def load_before_tests(self, session: pytest.Session) -> None:
        """Loads every dataset the selected tests need, before the first of them trains.

        Bad data (a corrupt image, a dataset that cannot be had) then stops the session before
        any training; under xdist each worker checks what it collected.
        """
        if session.config.getoption("collectonly"):
            return
        needed = [arguments for item in session.items for arguments in self.needed(item)]
        digests = set()
        for arguments in dict.fromkeys(needed):
            started = time.perf_counter()
            loaded = self.load(*arguments)
            self.load_seconds[arguments] = time.perf_counter() - started
            if not isinstance(loaded, LabInputError):
                loaded = self.resumable(loaded)
            if not isinstance(loaded, LabInputError):
                digests.add(loaded.validation_digest())
            elif not self.is_worker:
                pytest.exit(str(loaded), returncode=pytest.ExitCode.USAGE_ERROR)
            else:
                # A worker that exits during collection crashes xdist's controller; instead it
                # fails its first test with the message and then stops, and the controller with it.
                self.error = loaded
                session.shouldstop = str(loaded)
                return
        if digests and self.baseline_digests and not digests & self.baseline_digests:
            pytest.exit(
                f"--baseline {self.run.options.baseline} predicted none of this session's validation images "
                "(another dataset, size, count or split): give a baseline run on the same data",
                returncode=pytest.ExitCode.USAGE_ERROR,
            )

    def resumable(self, loaded: ImageData) -> ImageData | LabInputError:
        """`loaded`, or the error that refuses `--resume` where the journal's session predicted
        other images under the same name (the data folder changed in between)."""
        validation_set = loaded.validation_set()
        earlier = self.resumed_digests.get(validation_set.name)
        if earlier is None or earlier == validation_set.images_digest:
            return loaded
        return LabInputError(
            f"--resume {self.run.options.resume}: the validation images of {validation_set.name} differ from "
            "those the journal's session predicted (the data changed in between): resume with the same data, "
            "or start a new session"
        )

    def before_test(self, item: pytest.Item) -> None:
        """Fails, before it trains, the test an xdist worker runs after its data check failed.

        Otherwise hands the session the seconds of the datasets loaded before any test ran that
        this test is the first in its process to need (`lab_data_seconds`, for the time split):
        a dataset loaded later is in the durations of the test that loaded it.
        """
        if self.error is not None:
            pytest.fail(str(self.error), pytrace=False)
        needed = [key for key in self.needed(item) if key not in self.charged]
        self.charged.update(needed)
        seconds = sum(self.load_seconds.get(key, 0.0) for key in needed)
        if seconds:
            item.user_properties.append(("lab_data_seconds", seconds))

    def stop_with(self, error: LabInputError) -> NoReturn:
        """Stops the whole session: every later test would fail on the same missing data.

        An xdist worker cannot stop its siblings cleanly, so there the test fails instead.
        """
        if self.is_worker:
            pytest.fail(str(error), pytrace=False)
        pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)

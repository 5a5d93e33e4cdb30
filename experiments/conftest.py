"""Fixtures only the experiments use: their backbones, and the recorders that feed the report.

Each experiment module declares itself with a marker, read here:

    pytestmark = pytest.mark.experiment(4, backbones="freeze")

`4` is its number (titles in `lab.results.EXPERIMENT_TITLES`); `backbones` names the profile's
backbone list (`pretrained`, `freeze`, `unfreeze`) that parametrizes `backbone_name`, unless
--backbones names others.
"""

from __future__ import annotations

import dataclasses

import keras
import pytest

from lab import models
from lab.backbones import Backbone, WeightsSource, get_backbone
from lab.data import ImageData
from lab.results import EXPERIMENT_TITLES, BenchmarkResult, Curves, Record, StageCurve, Table
from pytest_lab import RUN_CONFIG


@dataclasses.dataclass(frozen=True)
class Experiment:
    """What an experiment module's `experiment` marker says about it."""

    number: int
    backbones: str | None


def experiment_of(node: pytest.Item) -> Experiment:
    """Reads the `experiment` marker of a test; an error naming the module if it is malformed."""
    marker = node.get_closest_marker("experiment")
    number = marker.args[0] if marker and marker.args else None
    if number not in EXPERIMENT_TITLES:
        raise pytest.UsageError(
            f"{node.nodeid}: mark its module `pytestmark = pytest.mark.experiment(N)`, N one of "
            f"{', '.join(map(str, EXPERIMENT_TITLES))}"
        )
    return Experiment(number, marker.kwargs.get("backbones"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backbone_name" not in metafunc.fixturenames:
        return
    backbones = experiment_of(metafunc.definition).backbones
    if backbones is None:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} takes backbone_name: give its module's marker "
            "backbones=\"pretrained\", \"freeze\" or \"unfreeze\""
        )
    metafunc.parametrize("backbone_name", metafunc.config.stash[RUN_CONFIG].backbones_for(backbones))


@dataclasses.dataclass(frozen=True)
class BackboneCase:
    """One backbone of experiments 3-5, its weights, and tf_flowers at its input size."""

    backbone: Backbone
    weights: WeightsSource
    flowers: ImageData
    augment: bool = False

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def image_size(self) -> int:
        return self.flowers.image_size

    def classifier(self) -> keras.Model:
        """A new classifier: the backbone with these weights, pooled, under a softmax head
        (behind the augmentation layers with --augment)."""
        return models.backbone_classifier(
            self.backbone, self.image_size, self.flowers.num_classes, self.weights.path, self.augment
        )


@pytest.fixture
def backbone_case(backbone_name, backbone_weights, backbone_flowers, run_config):
    """The setup experiments 3-5 share: `backbone_case(weights=None)` -> BackboneCase.

    `weights` is `imagenet` or `none`; None takes the run's --weights. Weights are resolved
    before any data loads, so that a case without its weights is skipped at once.
    """
    backbone = get_backbone(backbone_name)

    def make(weights: str | None = None) -> BackboneCase:
        resolved = backbone_weights(backbone, weights)
        return BackboneCase(backbone, resolved, backbone_flowers(backbone), run_config.augment)

    return make


@pytest.fixture
def record(request: pytest.FixtureRequest, run_config):
    """Records one row of a report table: `record(TABLE, row, label=..., curves=..., stage_curve=...)`.

    Args of the returned function: `table` (the module's `lab.results.Table`), `row` (column
    -> value; holds the table's key columns), `label` (names the case in plots), `curves`
    (accuracy per epoch), `stage_curve` (accuracy per unfreezing stage), `rate_curves` (the
    learning rate of each parameter group per epoch). The experiment's
    number comes from the module's `experiment` marker.
    """
    experiment = experiment_of(request.node).number

    def add(
        table: Table,
        row: dict,
        label: str = "",
        curves: Curves | None = None,
        stage_curve: StageCurve | None = None,
        rate_curves: dict[str, list[float | None]] | None = None,
    ) -> None:
        missing = [key for key in table.keys if key not in row]
        if missing:
            raise KeyError(f"a row of {table.title!r} lacks its key columns {missing}")
        entry = Record(
            experiment=experiment,
            table=table.title,
            keys=table.keys,
            row=row,
            label=label,
            curves=curves,
            stage_curve=stage_curve,
            rate_curves=rate_curves,
            test=request.node.nodeid,
            seed=run_config.seed,
        )
        # Plain types: under xdist, user properties travel to the controller in test reports.
        request.node.user_properties.append(("lab_record", dataclasses.asdict(entry)))

    return add


@pytest.fixture
def record_benchmark(request: pytest.FixtureRequest):
    """Hands pytest-benchmark's statistics for this test to the report: `record_benchmark(benchmark)`.

    The benchmark's `extra_info` must name `backbone`, `mode`, `image_size` and
    `images_per_epoch`; anything else in it goes to the report as it is. A disabled plugin
    (under xdist, or --benchmark-disable) hands nothing; the report says why.
    """

    def add(benchmark) -> None:
        if benchmark.disabled:
            return
        stats = benchmark.stats.stats
        extra = dict(benchmark.extra_info)
        result = BenchmarkResult(
            test=request.node.name,
            backbone=extra.pop("backbone"),
            mode=extra.pop("mode"),
            image_size=extra.pop("image_size"),
            images_per_epoch=extra.pop("images_per_epoch"),
            median=stats.median,
            mean=stats.mean,
            min=stats.min,
            max=stats.max,
            rounds=stats.rounds,
            extra=extra,
        )
        request.node.user_properties.append(("lab_benchmark", dataclasses.asdict(result)))

    return add

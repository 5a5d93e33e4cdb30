"""Fixtures only the experiments use: their backbones, and the recorders that feed the report.

Each experiment module declares itself with a marker, read here:

    pytestmark = pytest.mark.experiment(4, backbones="freeze")

`4` is its number (titles in `lab.report.results.EXPERIMENT_TITLES`); `backbones` names the profile's
backbone list (`pretrained`, `freeze`, `unfreeze`) that parametrizes `backbone_name`, unless
--backbones names others. A test that takes `seed` (every test that trains) runs once per seed
of --seeds; one that does not (structure checks, epoch timings) runs once.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np
import pytest

from lab.finetune import freezing
from lab.finetune.fine_tuning import FineTuning, FineTuningOptions, HeadRateSearch, search_head_rate
from lab.finetune.reuse import CompiledRun, CompiledRuns
from lab.finetune.stage_cache import PrefixActivations
from lab.inputs import network
from lab.inputs.data import ImageData
from lab.networks import models
from lab.networks.backbones import Backbone, WeightsSource, get_backbone
from lab.report.results import (
    EXPERIMENT_TITLES,
    BenchmarkResult,
    Curves,
    LearningRateSearch,
    Record,
    StageCurve,
    Table,
    ValidationSet,
)
from lab.runtime import timesplit
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
    if "seed" in metafunc.fixturenames:
        seeds = metafunc.config.stash[RUN_CONFIG].seeds
        metafunc.parametrize("seed", seeds, ids=[f"seed{seed}" for seed in seeds], indirect=True)
    if "backbone_name" not in metafunc.fixturenames:
        return
    backbones = experiment_of(metafunc.definition).backbones
    if backbones is None:
        raise pytest.UsageError(
            f"{metafunc.definition.nodeid} takes backbone_name: give its module's marker "
            "backbones=\"pretrained\", \"freeze\" or \"unfreeze\""
        )
    metafunc.parametrize("backbone_name", metafunc.config.stash[RUN_CONFIG].backbones_for(backbones))


@pytest.fixture(autouse=True)
def time_split(request: pytest.FixtureRequest):
    """Measures the seconds this test's fits and predictions spend tracing, training and
    evaluating (`lab.runtime.timesplit`), and hands them to the session's time split."""
    with timesplit.measuring(experiment_of(request.node).number) as measured:
        yield measured
    # Plain types: under xdist, user properties travel to the controller in test reports.
    request.node.user_properties.append(("lab_time_split", dataclasses.asdict(measured)))


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """This test's seed, one of --seeds: a test that takes it runs once per seed, and the
    autouse `seeded` fixture seeds every generator with it. Use it for every shuffle and fit."""
    return request.param


@dataclasses.dataclass(frozen=True)
class BackboneCase:
    """One backbone of experiments 3-5, its weights, and their dataset (--dataset) at its input size."""

    backbone: Backbone
    weights: WeightsSource
    data: ImageData
    augment: bool = False

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def image_size(self) -> int:
        return self.data.image_size

    def classifier(self, seed: int) -> keras.Model:
        """A new classifier: the backbone with these weights, pooled, under a softmax head seeded
        with `seed` (behind the augmentation layers with --augment)."""
        return models.backbone_classifier(
            self.backbone, self.image_size, self.data.num_classes, self.weights.path, self.augment, head_seed=seed
        )

    def run(self, compiled_models: CompiledRuns, purpose: str, seed: int) -> CompiledRun:
        """This case's run of `purpose` ("frozen base", a strategy...) for `seed` (`lab.finetune.reuse.CompiledRuns`).

        Another seed of the run reuses the models compiled for the first. With a base from a
        weights file and no augmentation only the head depends on the seed, so it is drawn
        again in the kept classifier instead of building a new one.
        """
        head_only_seeded = self.weights.path is not None and not self.augment
        return compiled_models.start(
            (self.name, self.image_size, self.weights.kind, purpose),
            lambda: self.classifier(seed),
            head_seed=seed if head_only_seeded else None,
        )


@pytest.fixture
def backbone_case(backbone_name, backbone_weights, backbone_data, run_config, request):
    """The setup experiments 3-5 share: `backbone_case(weights=None, paired=False)` -> BackboneCase.

    `weights` is `imagenet` or `none`; None takes the run's --weights. Weights are resolved
    before any data loads, so that a case without its weights is skipped at once. A `paired`
    case is one arm of ImageNet against random weights: in a run with ImageNet weights, its
    random arm is a control and is skipped where the ImageNet arm cannot run (offline without
    the file), since alone it answers nothing.
    """
    backbone = get_backbone(backbone_name)

    def make(weights: str | None = None, paired: bool = False) -> BackboneCase:
        # Offline, resolving cannot download: it finds the file or says why the ImageNet arm cannot run.
        if paired and weights == "none" and run_config.weights == "imagenet" and not network.can_reach():
            backbone_weights(backbone, "imagenet", control=True)
        resolved = backbone_weights(backbone, weights)
        seed = request.getfixturevalue("seed") if "seed" in request.fixturenames else None
        return BackboneCase(backbone, resolved, backbone_data(backbone, seed), run_config.augment)

    return make


@pytest.fixture(scope="session")
def compiled_models(run_config) -> CompiledRuns:
    """This process's compiled models by configuration (`lab.finetune.reuse.CompiledRuns`), to trace each once.

    A test that trains a configuration again (another seed of --seeds) puts its fresh weights
    into the models an earlier test compiled, instead of building and compiling them anew.
    With one seed nothing is kept.
    """
    return CompiledRuns(keep=len(run_config.seeds) > 1)


@pytest.fixture(scope="session")
def prefix_activations(run_config) -> PrefixActivations:
    """This process's frozen-prefix passes (`lab.finetune.stage_cache.PrefixActivations`), within --cache-budget.

    Stages that cut the same starting weights at the same place over the same images (the
    head stage of every cached strategy and experiment 3's head on pooled features, any stage
    of another seed on ImageNet weights) use one pass instead of running the prefix again.
    """
    return PrefixActivations(run_config.cache_budget)


@pytest.fixture(scope="session")
def fine_tuning_options(run_config, profile) -> FineTuningOptions:
    """Experiment 5's settings from the run's options (--lr-schedule, --lr-factor, --cached,
    --cache-budget, --early-stopping) and the profile's batch size."""
    return FineTuningOptions(
        profile.batch_size, run_config.lr_schedule, run_config.lr_factor, run_config.cached == "auto",
        run_config.cache_budget, run_config.early_stopping,
    )


@pytest.fixture(scope="session")
def head_rate_search(fine_tuning_options, prefix_activations):
    """The head's learning-rate search of a case and seed (--lr-find), run once per session:
    `head_rate_search(case, seed)` -> `lab.finetune.fine_tuning.HeadRateSearch`."""
    searches: dict[tuple, HeadRateSearch] = {}

    def search(case: BackboneCase, seed: int) -> HeadRateSearch:
        key = (case.name, case.image_size, case.weights.kind, seed, case.data.split_seed)
        if key not in searches:
            searches[key] = search_head_rate(
                case.classifier(seed), case.data, seed, fine_tuning_options, prefix_activations
            )
        return searches[key]

    return search


@pytest.fixture
def fine_tune(compiled_models, prefix_activations, run_config, profile, fine_tuning_options, head_rate_search):
    """Experiment 5's building block: `fine_tune(case, strategy, seed)` -> `lab.finetune.fine_tuning.FineTuning`.

    The strategy's stages follow the profile (`unfreeze_stages` after the head, `stage_epochs`
    each) and the head's rate (1e-3, or with --lr-find the search's suggestion where it found
    one); another seed of a strategy reuses its compiled models.
    """

    def make(case: BackboneCase, strategy: str, seed: int) -> FineTuning:
        head_rate = freezing.HEAD_LEARNING_RATE
        if run_config.options.lr_find:
            head_rate = head_rate_search(case, seed).head_rate
        # Everything else that decides the compiled models is the session's, the same for every test.
        purpose = strategy if head_rate == freezing.HEAD_LEARNING_RATE else f"{strategy} at {head_rate:.2e}"
        run = case.run(compiled_models, purpose, seed)
        stages = freezing.strategy_stages(
            strategy, case.backbone, freezing.base_of(run.classifier), profile.unfreeze_stages, profile.stage_epochs,
            head_rate,
        )
        return FineTuning(run, case.backbone, case.data, stages, seed, fine_tuning_options, prefix_activations)

    return make


@pytest.fixture
def record(request: pytest.FixtureRequest, run_config):
    """Records one row of a report table: `record(TABLE, row, label=..., curves=..., stage_curve=...)`.

    Args of the returned function: `table` (the module's `lab.report.results.Table`), `row` (column
    -> value; holds the table's key columns), `label` (names the case in plots), `curves`
    (accuracy per epoch), `stage_curve` (accuracy per unfreezing stage), `rate_curves` (the
    learning rate of each parameter group per epoch), `rate_search` (a learning-rate range test,
    for its plot), `validation` (the `ImageData` whose
    validation images the row's accuracy counts: its interval needs their number) and
    `predictions` (the class predicted for each of those images: paired comparisons need them;
    their accuracy must be the row's). The experiment's number comes from the module's
    `experiment` marker; the seed is the test's (`seed`), or the run's first for a test that
    does not train. A `{dataset}` in the table's title becomes the name of the dataset
    experiments 3-5 run on (--dataset), so that runs on different data never pair in --compare.
    """
    experiment = experiment_of(request.node).number
    seed = request.getfixturevalue("seed") if "seed" in request.fixturenames else run_config.seed

    def add(
        table: Table,
        row: dict,
        label: str = "",
        curves: Curves | None = None,
        stage_curve: StageCurve | None = None,
        rate_curves: dict[str, list[float | None]] | None = None,
        rate_search: LearningRateSearch | None = None,
        validation: ImageData | None = None,
        predictions: np.ndarray | None = None,
    ) -> None:
        missing = [key for key in table.keys if key not in row]
        if missing:
            raise KeyError(f"a row of {table.title!r} lacks its key columns {missing}")
        validation_set = None if validation is None else _validation_set(validation)
        if predictions is not None:
            predictions = _checked_predictions(table, row, validation_set, predictions)
            request.node.user_properties.append(("lab_validation_set", dataclasses.asdict(validation_set)))
        entry = Record(
            experiment=experiment,
            table=table.title.replace("{dataset}", run_config.dataset.name),
            keys=table.keys,
            row=row,
            label=label,
            curves=curves,
            stage_curve=stage_curve,
            rate_curves=rate_curves,
            rate_search=rate_search,
            test=request.node.nodeid,
            seed=seed,
            validation_set=validation_set and validation_set.name,
            validation_images=validation_set and len(validation_set.labels),
            predictions=predictions,
        )
        # Plain types: under xdist, user properties travel to the controller in test reports.
        request.node.user_properties.append(("lab_record", dataclasses.asdict(entry)))

    return add


def _validation_set(data: ImageData) -> ValidationSet:
    name = f"{data.name} ({data.source}), {data.image_size}px, {data.validation_count} images"
    if data.split_seed is not None:
        name += f", split of seed {data.split_seed}"
    return ValidationSet(name, data.num_classes, [int(label) for label in data.validation_labels])


def _checked_predictions(table: Table, row: dict, validation_set: ValidationSet | None, predictions) -> list[int]:
    """The predictions as plain ints, after checking they are the row's accuracy on its validation set."""
    if validation_set is None:
        raise TypeError(f"a row of {table.title!r} has predictions but no validation=: name the ImageData they predict")
    predictions = np.asarray(predictions)
    labels = np.asarray(validation_set.labels)
    assert predictions.shape == labels.shape, (
        f"{table.title}: {predictions.shape} predictions for the {labels.size} images of {validation_set.name}"
    )
    accuracy = Record(0, table.title, table.keys, row).accuracy()
    if accuracy is not None:
        assert float(np.mean(predictions == labels)) == pytest.approx(accuracy, abs=1e-6), (
            f"{table.title}: the predictions' accuracy is not the recorded {accuracy}"
        )
    return [int(value) for value in predictions]


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
            round_seconds=list(stats.data),
        )
        request.node.user_properties.append(("lab_benchmark", dataclasses.asdict(result)))

    return add

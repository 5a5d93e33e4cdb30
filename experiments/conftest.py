"""Fixtures only the experiments use: their data, backbones, building blocks, and the recorders
that feed the report.

Each experiment module declares itself with a marker (`pytest_lab.cases`):

    pytestmark = pytest.mark.experiment(4, backbones="freeze")

A test that takes `seed` (every test that trains) runs once per seed of --seeds; one that does
not (structure checks, epoch timings) runs once.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import pytest

from lab.config import RunConfig
from lab.errors import LabInputError
from lab.finetune import freezing
from lab.finetune.backbone_case import BackboneCase
from lab.finetune.fine_tuning import FineTuning, FineTuningOptions, HeadRateSearch, search_head_rate
from lab.finetune.reuse import CompiledRuns
from lab.finetune.stage_cache import PrefixActivations
from lab.inputs import network
from lab.inputs.data import ImageData
from lab.inputs.datasets import DatasetSpec
from lab.measurements import Curves, LearningRateSearch, StageCurve
from lab.networks.backbones import get_backbone, resolve_weights
from lab.networks.training import tensorboard_log_dir, train_lab_cnn
from lab.report.results import BenchmarkResult, Record, Table, checked_predictions
from lab.runtime import reproducibility, storage, timesplit
from pytest_lab.cases import experiment_of, plain_nodeid
from pytest_lab.datasets import backbone_dataset, cifar10_dataset, flowers_small_dataset
from pytest_lab.plugin import DATASETS, RUN_CONFIG, is_worker, seed_of


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


@pytest.fixture(scope="session")
def profile(run_config: RunConfig):
    """The profile's settings (sizes, image counts, epochs)."""
    return run_config.profile


@pytest.fixture(scope="session")
def keras_verbose(pytestconfig: pytest.Config) -> int:
    """Keras's fit verbosity: one line per epoch when output is shown (`-s`), else silent."""
    return 2 if pytestconfig.getoption("capture") == "no" else 0


@pytest.fixture
def tensorboard_dir(request: pytest.FixtureRequest, run_config: RunConfig) -> str | None:
    """This test's TensorBoard folder, `--tensorboard DIR/<test module>/<test>/seed<N>`; None without the option.

    Pass it to `lab.networks.training.tensorboard_callbacks`, with a subfolder for each fit of a test
    that fits more than once.
    """
    if run_config.tensorboard_dir is None:
        return None
    return tensorboard_log_dir(
        run_config.tensorboard_dir, [request.node.path.stem, request.node.name], seed_of(request, run_config)
    )


@pytest.fixture(scope="session")
def image_data(pytestconfig: pytest.Config):
    """Loads a dataset once per session: `image_data(dataset, image_size, train, validation, seed=None)`.

    `dataset` is one of the lab's by name, or a `DatasetSpec`. `train` is the profile's count,
    replaced by --subset when given. With --split-per-seed, a `seed` gets that seed's own split
    of the loaded images (`ImageData.split_for_seed`). Data that cannot be loaded (not downloadable, a corrupt
    file, a subset too large) stops the session at once with the message that names the fix.
    """
    datasets = pytestconfig.stash[DATASETS]
    splits: dict[tuple, ImageData] = {}

    def load(
        dataset: str | DatasetSpec, image_size: int, train: int | None, validation: int | None, seed: int | None = None
    ):
        loaded = datasets.load(dataset, image_size, train, validation)
        if isinstance(loaded, LabInputError):
            datasets.stop_with(loaded)
        if seed is None or not pytestconfig.stash[RUN_CONFIG].options.split_per_seed:
            return loaded
        key = (dataset, image_size, train, validation, seed)
        if key not in splits:
            splits[key] = loaded.split_for_seed(seed)
        return splits[key]

    return load


@pytest.fixture
def flowers_small(image_data, profile, request):
    """tf_flowers at the lab CNN's size (32x32 by default), with the profile's image counts (the
    test's seed's own split with --split-per-seed)."""
    return image_data(*flowers_small_dataset(profile), seed=_split_seed(request))


@pytest.fixture
def cifar10(image_data, profile, request):
    """CIFAR-10 at the lab CNN's size, with the profile's image counts (the test's seed's own
    split with --split-per-seed, where CIFAR-10's own test split does not fix it)."""
    return image_data(*cifar10_dataset(profile), seed=_split_seed(request))


@pytest.fixture(scope="session")
def backbone_data(image_data, profile, run_config):
    """The dataset of experiments 3-5 (--dataset, tf_flowers by default) at a backbone's input
    size: `backbone_data(backbone, seed=None)`, with the profile's counts (`seed`'s own split
    with --split-per-seed)."""

    def load(backbone, seed: int | None = None):
        return image_data(*backbone_dataset(run_config.dataset, profile, backbone), seed=seed)

    return load


def _split_seed(request: pytest.FixtureRequest) -> int | None:
    """The seed whose split a training test's data is (None for a test that does not train)."""
    return request.getfixturevalue("seed") if "seed" in request.fixturenames else None


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> str:
    """A folder every xdist worker of this session shares (the session's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if is_worker(pytestconfig) else base)


@pytest.fixture(scope="session")
def saved_base_model(shared_dir, image_data, profile, run_config, keras_verbose):
    """Trains the lab CNN on tf_flowers and saves it, once per filter widths and seed per session.

    `saved_base_model(filters, seed)` returns the metadata of the saved `.keras` file: its `path`,
    the training history and epoch times. Under xdist one worker trains and saves while the
    others wait on a file lock and load the same file. Whether this call trained the model or
    found it saved, it leaves every generator freshly seeded with `seed`, so that what the test
    draws next does not depend on which tests ran before it.
    """

    def get(filters: tuple[int, int, int], seed: int) -> dict:
        model_name = "lab_cnn-{}".format("-".join(map(str, filters)))
        path = os.path.join(shared_dir, f"{model_name}-seed{seed}.keras")
        log_dir = run_config.tensorboard_dir and tensorboard_log_dir(
            run_config.tensorboard_dir, ["saved_base_model", model_name], seed
        )
        with reproducibility.seeded_after(seed):
            return storage.ensure_saved(
                path,
                lambda target: train_lab_cnn(
                    image_data(*flowers_small_dataset(profile), seed=seed), filters, profile.cnn_epochs,
                    profile.batch_size, seed, target, keras_verbose, log_dir,
                ),
            )

    return get


@pytest.fixture(scope="session")
def backbone_weights(run_config: RunConfig):
    """Resolves weights for a backbone: `backbone_weights(backbone)` -> WeightsSource.

    ImageNet weights that cannot be had offline fail a backbone named with --backbones; a
    backbone that is only in the profile's default list is skipped instead, with the reason.
    `control=True` resolves them for the random-weights control of an ImageNet case, which is
    skipped with that reason too.
    """

    def resolve(backbone, weights: str | None = None, control: bool = False):
        if weights == "imagenet" and run_config.options.weights == "none":
            pytest.skip("ImageNet weights case: this run has --weights none")
        try:
            return resolve_weights(backbone, weights or run_config.options.weights, run_config.weights_dir)
        except LabInputError as error:
            if run_config.backbones:
                pytest.fail(str(error), pytrace=False)
            control_of = "random-weights control of an ImageNet case that cannot run: " if control else ""
            pytest.skip(
                f"{control_of}{error} (in the profile's default list; name it with --backbones to make this an error)"
            )

    return resolve


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
        if paired and weights == "none" and run_config.options.weights == "imagenet" and not network.can_reach():
            backbone_weights(backbone, "imagenet", control=True)
        resolved = backbone_weights(backbone, weights)
        seed = _split_seed(request)
        return BackboneCase(backbone, resolved, backbone_data(backbone, seed), run_config.options.augment)

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
    options = run_config.options
    return FineTuningOptions(
        profile.batch_size, options.lr_schedule, options.lr_factor, options.cached == "auto",
        run_config.cache_budget, options.early_stopping,
    )


@pytest.fixture(scope="session")
def head_rate_search(fine_tuning_options, prefix_activations):
    """The head's learning-rate search of a case and seed (--lr-find), run once per session:
    `head_rate_search(case, seed)` -> `lab.finetune.fine_tuning.HeadRateSearch`. Searched here or
    found, it leaves every generator freshly seeded with `seed`, as `saved_base_model` does."""
    searches: dict[tuple, HeadRateSearch] = {}

    def search(case: BackboneCase, seed: int) -> HeadRateSearch:
        key = (case.name, case.image_size, case.weights.kind, seed, case.data.split_seed)
        with reproducibility.seeded_after(seed):
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
    seed = seed_of(request, run_config)

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
        validation_set = None if validation is None else validation.validation_set()
        if predictions is not None:
            if validation_set is None:
                raise TypeError(f"a row of {table.title!r} has predictions but no validation=: name the ImageData "
                                "they predict")
            predictions = checked_predictions(validation_set, table, row, predictions)
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
            test=plain_nodeid(request.node.nodeid),
            seed=seed,
            validation_set=validation_set and validation_set.name,
            validation_images=validation_set and len(validation_set.labels),
            predictions=predictions,
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
        result = BenchmarkResult.from_pytest_benchmark(
            request.node.name, benchmark.extra_info, {**stats.as_dict(), "data": list(stats.data)}
        )
        request.node.user_properties.append(("lab_benchmark", dataclasses.asdict(result)))

    return add

"""The lab's command-line options and the run's fixtures.

The session plugin that writes the report lives in pytest_lab/session.py; fixtures only the
experiments use live in experiments/conftest.py.
"""

from __future__ import annotations

import os
import time
import warnings
from typing import NoReturn

import pytest

# TensorFlow's C++ start-up chatter would bury pytest's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lab.config import RunConfig, build_config, path_option
from lab.errors import LabInputError
from lab.inputs import data
from lab.inputs.data import ImageData
from lab.inputs.datasets import DatasetSpec
from lab.networks import adam, models
from lab.networks.backbones import get_backbone, resolve_weights
from lab.options import Options, addoption_arguments
from lab.runtime import distribution, reproducibility, storage
from lab.runtime.training import tensorboard_log_dir, train_lab_cnn
from pytest_lab import RUN_CONFIG
from pytest_lab.session import LabSession

LOADED_DATASETS = pytest.StashKey[dict]()
DATA_ERROR = pytest.StashKey[LabInputError]()
# Seconds each dataset loaded before the first test took, and those a test's time split holds.
DATA_SECONDS = pytest.StashKey[dict]()
DATA_CHARGED = pytest.StashKey[set]()
ROOT = os.path.dirname(os.path.abspath(__file__))


def pytest_addoption(parser: pytest.Parser) -> None:
    """The lab's options, each declared once in lab/options.py."""
    group = parser.getgroup("lab", "transfer-learning lab")
    for flag, arguments in addoption_arguments():
        group.addoption(flag, **arguments)


def pytest_configure(config: pytest.Config) -> None:
    # pytest cannot catch warnings raised in pytest_configure itself: handed to it, they
    # reach its warnings summary (once, from the controller, under xdist).
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            run = build_config(Options.from_pytest(config))
    except LabInputError as error:
        raise pytest.UsageError(str(error)) from None
    if run.distribute == "multiworker" and config.getoption("numprocesses", None):
        raise pytest.UsageError(
            "--distribute multiworker runs one pytest per machine: drop -n (xdist workers on one machine "
            "would all claim the same TF_CONFIG task)"
        )
    if not _is_worker(config):
        for warning in caught:
            config.issue_config_time_warning(warning.message, stacklevel=2)
    config.stash[RUN_CONFIG] = run
    report_dir, report_dir_name = path_option("report_dir", run.options.report_dir, os.path.join(ROOT, "reports"))
    if not _is_worker(config):
        config.pluginmanager.register(
            LabSession(config, run, None if run.options.no_report else report_dir), "lab-session"
        )
    if not run.options.no_report and not _is_worker(config):
        _check_writable(report_dir, "reports", _report_dir_fix(report_dir_name))
    if run.tensorboard_dir and not _is_worker(config):
        _check_writable(
            run.tensorboard_dir, "TensorBoard logs", "pass --tensorboard a folder you can write, or leave it out"
        )
    _pin_worker_gpu(config)
    try:
        _apply_run_settings(run)
    except LabInputError as error:
        # A machine of --distribute multiworker that did not answer.
        raise pytest.UsageError(str(error)) from None


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _check_writable(folder: str, what: str, fix: str) -> None:
    """A usage error saying that `what` cannot be written to `folder`, and `fix`, if it cannot."""
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-check-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as error:
        raise pytest.UsageError(f"cannot write {what} to {folder} ({error.strerror}): {fix}") from None


def _report_dir_fix(name: str) -> str:
    """How to give the report a folder, naming `--report-dir` or `LAB_REPORT_DIR`, whichever set it."""
    fix = "pass --report-dir PATH or --no-report"
    if name != "--report-dir":
        fix = f"set {name} to a folder you can write, or unset it; or {fix}"
    return fix


def _pin_worker_gpu(config: pytest.Config) -> None:
    """Under `pytest -n K` on a GPU machine, worker gwN sees only GPU N modulo the GPU count."""
    if not _is_worker(config) or "CUDA_VISIBLE_DEVICES" in os.environ:
        return
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        index = int(config.workerinput["workerid"].removeprefix("gw")) % len(gpus)
        tf.config.set_visible_devices(gpus[index], "GPU")


def _apply_run_settings(run: RunConfig) -> None:
    import keras
    import tensorflow as tf

    if run.distribute == "mirrored":
        distribution.use_mirrored_strategy()
    elif run.distribute == "multiworker":
        distribution.use_multiworker_strategy(run.worker_timeout)
    reproducibility.seed_everything(run.seed)
    if run.run_eagerly:
        # Tracing ResNet50's training step takes about 20 s on two CPU cores, an eager step 1 s.
        tf.config.run_functions_eagerly(True)
    if run.deterministic:
        reproducibility.enable_determinism()
    if run.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    models.use_xla(run.options.xla)
    adam.use_adam(run.options.adam)


@pytest.fixture(scope="session")
def run_config(pytestconfig: pytest.Config) -> RunConfig:
    """The run's checked settings: profile, data source, seed, backbones, weights."""
    return pytestconfig.stash[RUN_CONFIG]


@pytest.fixture(scope="session")
def profile(run_config: RunConfig):
    """The profile's settings (sizes, image counts, epochs)."""
    return run_config.profile


@pytest.fixture(autouse=True)
def seeded(request: pytest.FixtureRequest, run_config: RunConfig) -> None:
    """Seeds every generator with the test's seed before it runs, so a result does not depend on order."""
    reproducibility.seed_everything(_seed_of(request, run_config))


def _seed_of(request: pytest.FixtureRequest, run: RunConfig) -> int:
    """A test's seed: its `seed` parameter (one of --seeds) if it trains, else the run's first seed."""
    return request.getfixturevalue("seed") if "seed" in request.fixturenames else run.seed


@pytest.fixture
def tensorboard_dir(request: pytest.FixtureRequest, run_config: RunConfig) -> str | None:
    """This test's TensorBoard folder, `--tensorboard DIR/<test module>/<test>/seed<N>`; None without the option.

    Pass it to `lab.runtime.training.tensorboard_callbacks`, with a subfolder for each fit of a test
    that fits more than once.
    """
    if run_config.tensorboard_dir is None:
        return None
    return tensorboard_log_dir(
        run_config.tensorboard_dir, [request.node.path.stem, request.node.name], _seed_of(request, run_config)
    )


@pytest.fixture(scope="session")
def keras_verbose(pytestconfig: pytest.Config) -> int:
    """Keras's fit verbosity: one line per epoch when output is shown (`-s`), else silent."""
    return 2 if pytestconfig.getoption("capture") == "no" else 0


def _fail_with(error: LabInputError) -> NoReturn:
    pytest.fail(str(error), pytrace=False)


def _stop_with(config: pytest.Config, error: LabInputError) -> NoReturn:
    """Stops the whole session: every later test would fail on the same missing data.

    An xdist worker cannot stop its siblings cleanly, so there the test fails instead.
    """
    if _is_worker(config):
        _fail_with(error)
    pytest.exit(str(error), returncode=pytest.ExitCode.USAGE_ERROR)


def _load_dataset(
    config: pytest.Config, dataset: str | DatasetSpec, image_size: int, train: int | None, validation: int | None
):
    """Loads a dataset once per process: the ImageData, or the LabInputError that stopped it.

    `dataset` is one of the lab's by name (from --data-source), or a spec (experiments 3-5's
    --dataset). Both the `image_data` fixture and the check before the first test read this one cache.
    """
    run = config.stash[RUN_CONFIG]
    loaded = config.stash.setdefault(LOADED_DATASETS, {})
    key = (dataset, image_size, train, validation)
    if key not in loaded:
        try:
            spec = dataset if isinstance(dataset, DatasetSpec) else data.lab_dataset(
                dataset, run.data_source, run.data_dir
            )
            loaded[key] = data.load_dataset(
                spec,
                image_size,
                run.train_count(train),
                validation,
                strict_train_count=run.subset is not None,
                data_dir=run.data_dir,
            )
        except LabInputError as error:
            loaded[key] = error
    return loaded[key]


def _flowers_small_dataset(profile) -> tuple:
    return "tf_flowers", profile.cnn_image_size, profile.flowers_train, profile.flowers_validation


def _cifar10_dataset(profile) -> tuple:
    return "cifar10", profile.cnn_image_size, profile.cifar_train, profile.cifar_validation


def _backbone_data_dataset(dataset: DatasetSpec, profile, backbone) -> tuple:
    return dataset, profile.image_size_of(backbone), profile.backbone_train, profile.backbone_validation


def _datasets_needed(item: pytest.Item, profile) -> list[tuple]:
    """The `image_data` arguments of every dataset fixture test `item` uses, read from its fixture names."""
    fixtures = getattr(item, "fixturenames", ())
    needed = []
    if "flowers_small" in fixtures:
        needed.append(_flowers_small_dataset(profile))
    if "cifar10" in fixtures:
        needed.append(_cifar10_dataset(profile))
    callspec = getattr(item, "callspec", None)
    backbone_name = callspec.params.get("backbone_name") if callspec else None
    if "backbone_data" in fixtures and backbone_name:
        dataset = item.config.stash[RUN_CONFIG].dataset
        needed.append(_backbone_data_dataset(dataset, profile, get_backbone(backbone_name)))
    return needed


def pytest_collection_finish(session: pytest.Session) -> None:
    """Loads every dataset the selected tests need, before the first of them trains.

    Bad data (a corrupt image, a dataset that cannot be had) then stops the session before
    any training, not after the experiments that do not need it; under xdist each worker
    checks what it collected. What loads stays in the cache the fixtures read.
    """
    config = session.config
    if config.getoption("collectonly"):
        return
    profile = config.stash[RUN_CONFIG].profile
    needed = [arguments for item in session.items for arguments in _datasets_needed(item, profile)]
    load_seconds = config.stash.setdefault(DATA_SECONDS, {})
    for arguments in dict.fromkeys(needed):
        started = time.perf_counter()
        loaded = _load_dataset(config, *arguments)
        load_seconds[arguments] = time.perf_counter() - started
        if isinstance(loaded, LabInputError):
            if not _is_worker(config):
                pytest.exit(str(loaded), returncode=pytest.ExitCode.USAGE_ERROR)
            # A worker that exits during collection crashes xdist's controller; instead it
            # fails its first test with the message and then stops, and the controller with it.
            config.stash[DATA_ERROR] = loaded
            session.shouldstop = str(loaded)
            return


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fails, before it trains, the test an xdist worker runs after its data check failed.

    Otherwise hands the session the seconds of the datasets loaded before any test ran that
    this test is the first in its process to need (`lab_data_seconds`, for the time split):
    a dataset loaded later is in the durations of the test that loaded it.
    """
    error = item.config.stash.get(DATA_ERROR, None)
    if error is not None:
        _fail_with(error)
    config = item.config
    charged = config.stash.setdefault(DATA_CHARGED, set())
    load_seconds = config.stash.get(DATA_SECONDS, {})
    needed = [key for key in _datasets_needed(item, config.stash[RUN_CONFIG].profile) if key not in charged]
    charged.update(needed)
    seconds = sum(load_seconds.get(key, 0.0) for key in needed)
    if seconds:
        item.user_properties.append(("lab_data_seconds", seconds))


@pytest.fixture(scope="session")
def image_data(pytestconfig: pytest.Config):
    """Loads a dataset once per session: `image_data(dataset, image_size, train, validation, seed=None)`.

    `dataset` is one of the lab's by name, or a `DatasetSpec`. `train` is the profile's count,
    replaced by --subset when given. With --split-per-seed, a `seed` gets that seed's own split
    of the loaded images (`ImageData.split_for_seed`). Data that cannot be loaded (not downloadable, a corrupt
    file, a subset too large) stops the session at once with the message that names the fix.
    """

    splits: dict[tuple, ImageData] = {}

    def load(
        dataset: str | DatasetSpec, image_size: int, train: int | None, validation: int | None, seed: int | None = None
    ):
        loaded = _load_dataset(pytestconfig, dataset, image_size, train, validation)
        if isinstance(loaded, LabInputError):
            _stop_with(pytestconfig, loaded)
        if seed is None or not pytestconfig.stash[RUN_CONFIG].split_per_seed:
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
    return image_data(*_flowers_small_dataset(profile), seed=_split_seed(request))


@pytest.fixture
def cifar10(image_data, profile, request):
    """CIFAR-10 at the lab CNN's size, with the profile's image counts (the test's seed's own
    split with --split-per-seed, where CIFAR-10's own test split does not fix it)."""
    return image_data(*_cifar10_dataset(profile), seed=_split_seed(request))


@pytest.fixture(scope="session")
def backbone_data(image_data, profile, run_config):
    """The dataset of experiments 3-5 (--dataset, tf_flowers by default) at a backbone's input
    size: `backbone_data(backbone, seed=None)`, with the profile's counts (`seed`'s own split
    with --split-per-seed)."""

    def load(backbone, seed: int | None = None):
        return image_data(*_backbone_data_dataset(run_config.dataset, profile, backbone), seed=seed)

    return load


def _split_seed(request: pytest.FixtureRequest) -> int | None:
    """The seed whose split a training test's data is (None for a test that does not train)."""
    return request.getfixturevalue("seed") if "seed" in request.fixturenames else None


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> str:
    """A folder every xdist worker of this session shares (the session's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if _is_worker(pytestconfig) else base)


@pytest.fixture(scope="session")
def saved_base_model(shared_dir, image_data, profile, run_config, keras_verbose):
    """Trains the lab CNN on tf_flowers and saves it, once per filter widths and seed per session.

    `saved_base_model(filters, seed)` returns the metadata of the saved `.keras` file: its `path`,
    the training history and epoch times. Under xdist one worker trains and saves while the
    others wait on a file lock and load the same file.
    """

    def get(filters: tuple[int, int, int], seed: int) -> dict:
        model_name = "lab_cnn-{}".format("-".join(map(str, filters)))
        path = os.path.join(shared_dir, f"{model_name}-seed{seed}.keras")
        log_dir = run_config.tensorboard_dir and tensorboard_log_dir(
            run_config.tensorboard_dir, ["saved_base_model", model_name], seed
        )
        return storage.ensure_saved(
            path,
            lambda target: train_lab_cnn(
                image_data(*_flowers_small_dataset(profile), seed=seed), filters, profile.cnn_epochs,
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
        if weights == "imagenet" and run_config.weights == "none":
            pytest.skip("ImageNet weights case: this run has --weights none")
        try:
            return resolve_weights(backbone, weights or run_config.weights, run_config.weights_dir)
        except LabInputError as error:
            if run_config.backbones:
                _fail_with(error)
            control_of = "random-weights control of an ImageNet case that cannot run: " if control else ""
            pytest.skip(
                f"{control_of}{error} (in the profile's default list; name it with --backbones to make this an error)"
            )

    return resolve

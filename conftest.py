"""The lab's pytest plugin: command-line options, the run's fixtures, and the session report."""

from __future__ import annotations

import datetime
import os
import time
from typing import NoReturn

import pytest

# TensorFlow's C++ start-up chatter would bury pytest's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lab import data, distribution, environment, report, reproducibility, storage
from lab.backbones import resolve_weights
from lab.config import STRATEGIES, WEIGHTS_CHOICES, RunConfig, build_config
from lab.errors import LabInputError
from lab.profiles import PROFILES
from lab.training import train_lab_cnn

RUN_CONFIG = pytest.StashKey[RunConfig]()
ROOT = os.path.dirname(os.path.abspath(__file__))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("lab", "transfer-learning lab")
    group.addoption("--profile", choices=sorted(PROFILES), default="smoke",
                    help="smoke: tiny subsets and sizes for a CPU (default); full: the lab's own settings, for a GPU")
    group.addoption("--data-source", choices=data.SOURCES, default=None,
                    help="where images come from (default: folder when --data-dir is given, else tfds)")
    group.addoption("--data-dir", metavar="PATH", default=None,
                    help="a folder with flower_photos/<class>/* and cifar10/<class>/* (the layout of ../shared/data)")
    group.addoption("--seed", type=int, default=0, help="seeds Python, NumPy and TensorFlow (default 0)")
    group.addoption("--subset", type=int, default=None, metavar="N",
                    help="training images per dataset, overriding the profile")
    group.addoption("--backbones", metavar="NAME[,NAME...]", default=None,
                    help="backbones for experiments 3-5: resnet50, vgg16, mobilenet, mobilenet_v2 (default: the profile's)")
    group.addoption("--weights", choices=WEIGHTS_CHOICES, default="imagenet",
                    help="backbone weights: imagenet (a --weights-dir file, Keras's cache or a download) or none (random)")
    group.addoption("--weights-dir", metavar="PATH", default=None,
                    help="a folder holding Keras's official no-top weights files under their own names")
    group.addoption("--report-dir", metavar="PATH", default=os.path.join(ROOT, "reports"),
                    help="where the session's markdown report goes (default reports/)")
    group.addoption("--no-report", action="store_true", help="write no report")
    group.addoption("--deterministic", action="store_true",
                    help="TensorFlow op determinism (deterministic kernels are slower: timings are not comparable)")
    group.addoption("--strategy", choices=STRATEGIES, default="default",
                    help="mirrored: tf.distribute.MirroredStrategy over every GPU (or logical CPU device)")
    group.addoption("--mixed-precision", action="store_true", help="mixed_float16 compute (for GPUs)")


def pytest_configure(config: pytest.Config) -> None:
    try:
        run = build_config(
            profile=config.getoption("profile"),
            data_source=config.getoption("data_source"),
            data_dir=config.getoption("data_dir"),
            seed=config.getoption("seed"),
            subset=config.getoption("subset"),
            backbone_names=config.getoption("backbones"),
            weights=config.getoption("weights"),
            weights_dir=config.getoption("weights_dir"),
            deterministic=config.getoption("deterministic"),
            strategy=config.getoption("strategy"),
            mixed_precision=config.getoption("mixed_precision"),
        )
    except LabInputError as error:
        raise pytest.UsageError(str(error)) from None
    config.stash[RUN_CONFIG] = run
    if not _is_worker(config):
        config.pluginmanager.register(LabSession(config, run), "lab-session")
    if not config.getoption("no_report") and not _is_worker(config):
        _check_writable(config.getoption("report_dir"))
    _pin_worker_gpu(config)
    _apply_run_settings(run)


def _is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


def _check_writable(report_dir: str) -> None:
    try:
        os.makedirs(report_dir, exist_ok=True)
        probe = os.path.join(report_dir, f".write-check-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as error:
        raise pytest.UsageError(
            f"cannot write reports to {report_dir} ({error.strerror}): pass --report-dir PATH or --no-report"
        ) from None


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

    if run.strategy == "mirrored":
        distribution.use_mirrored_strategy()
    reproducibility.seed_everything(run.seed)
    if run.deterministic:
        reproducibility.enable_determinism()
    if run.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    group = getattr(metafunc.module, "BACKBONE_GROUP", None)
    if group and "backbone_name" in metafunc.fixturenames:
        run = metafunc.config.stash[RUN_CONFIG]
        metafunc.parametrize("backbone_name", run.backbones_for(group))


@pytest.fixture(scope="session")
def run_config(pytestconfig: pytest.Config) -> RunConfig:
    """The run's checked settings: profile, data source, seed, backbones, weights."""
    return pytestconfig.stash[RUN_CONFIG]


@pytest.fixture(scope="session")
def profile(run_config: RunConfig):
    """The profile's settings (sizes, image counts, epochs)."""
    return run_config.profile


@pytest.fixture(autouse=True)
def seeded(run_config: RunConfig) -> None:
    """Seeds every generator before each test, so a test's result does not depend on order."""
    reproducibility.seed_everything(run_config.seed)


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


@pytest.fixture(scope="session")
def image_data(run_config: RunConfig, pytestconfig: pytest.Config):
    """Loads a dataset once per session: `image_data(name, image_size, train, validation)`.

    `train` is the profile's count, replaced by --subset when given. Data that cannot be
    loaded (not downloadable, a corrupt file, a subset too large) stops the session at once
    with the message that names the fix.
    """
    loaded: dict[tuple, object] = {}

    def load(name: str, image_size: int, train: int | None, validation: int | None):
        key = (name, image_size, train, validation)
        if key not in loaded:
            try:
                loaded[key] = data.load(
                    name,
                    run_config.data_source,
                    image_size,
                    run_config.train_count(train),
                    validation,
                    data_dir=run_config.data_dir,
                    strict_train_count=run_config.subset is not None,
                )
            except LabInputError as error:
                loaded[key] = error
        if isinstance(loaded[key], LabInputError):
            _stop_with(pytestconfig, loaded[key])
        return loaded[key]

    return load


@pytest.fixture(scope="session")
def flowers_small(image_data, profile):
    """tf_flowers at the lab CNN's size (32x32 by default), with the profile's image counts."""
    return image_data("tf_flowers", profile.cnn_image_size, profile.flowers_train, profile.flowers_validation)


@pytest.fixture(scope="session")
def cifar10(image_data, profile):
    """CIFAR-10 at the lab CNN's size, with the profile's image counts."""
    return image_data("cifar10", profile.cnn_image_size, profile.cifar_train, profile.cifar_validation)


@pytest.fixture(scope="session")
def backbone_flowers(image_data, profile):
    """tf_flowers at a backbone's input size: `backbone_flowers(backbone)`, profile's counts."""

    def load(backbone):
        size = backbone.image_size[profile.name]
        return image_data("tf_flowers", size, profile.backbone_train, profile.backbone_validation)

    return load


@pytest.fixture(scope="session")
def shared_dir(tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> str:
    """A folder every xdist worker of this session shares (the session's own without xdist)."""
    base = tmp_path_factory.getbasetemp()
    return str(base.parent if _is_worker(pytestconfig) else base)


@pytest.fixture(scope="session")
def saved_base_model(shared_dir, flowers_small, profile, run_config, keras_verbose):
    """Trains the lab CNN on tf_flowers and saves it, once per filter widths per session.

    `saved_base_model(filters)` returns the metadata of the saved `.keras` file: its `path`,
    the training history and epoch times. Under xdist one worker trains and saves while the
    others wait on a file lock and load the same file.
    """

    def get(filters: tuple[int, int, int]) -> dict:
        name = "lab_cnn-{}-seed{}.keras".format("-".join(map(str, filters)), run_config.seed)
        path = os.path.join(shared_dir, name)
        return storage.ensure_saved(
            path,
            lambda target: train_lab_cnn(
                flowers_small, filters, profile.cnn_epochs, profile.batch_size, run_config.seed, target, keras_verbose
            ),
        )

    return get


@pytest.fixture(scope="session")
def backbone_weights(run_config: RunConfig):
    """Resolves weights for a backbone: `backbone_weights(backbone)` -> WeightsSource.

    ImageNet weights that cannot be had offline fail a backbone named with --backbones; a
    backbone that is only in the profile's default list is skipped instead, with the reason.
    """

    def resolve(backbone, weights: str | None = None):
        if weights == "imagenet" and run_config.weights == "none":
            pytest.skip("ImageNet weights case: this run has --weights none")
        try:
            return resolve_weights(backbone, weights or run_config.weights, run_config.weights_dir)
        except LabInputError as error:
            if run_config.backbones:
                _fail_with(error)
            pytest.skip(f"{error} (in the profile's default list; name it with --backbones to make this an error)")

    return resolve


@pytest.fixture
def record(request: pytest.FixtureRequest):
    """Records one result of this test for the report: `record(experiment, table, row, ...)`.

    Args of the returned function: `experiment` ("1".."5"), `table` (the report table it
    belongs to), `row` (column -> value), `label` (names the case in plots), `curves`
    (train and validation accuracy per epoch), `stage_curve` (accuracy per unfreezing stage).
    """

    def add(experiment: str, table: str, row: dict, label: str = "", curves=None, stage_curve=None) -> None:
        request.node.user_properties.append(
            ("lab_record", {"experiment": experiment, "table": table, "row": row, "label": label,
                            "curves": curves, "stage_curve": stage_curve, "test": request.node.nodeid})
        )

    return add


@pytest.fixture
def record_benchmark(request: pytest.FixtureRequest):
    """Hands pytest-benchmark's statistics for this test to the report.

    A disabled plugin (under xdist, or --benchmark-disable) hands nothing; the report says why.
    """

    def add(benchmark) -> None:
        if benchmark.disabled:
            return
        stats = benchmark.stats.stats
        request.node.user_properties.append(
            ("lab_benchmark", {"name": request.node.name, "extra_info": dict(benchmark.extra_info),
                               "stats": {"median": stats.median, "mean": stats.mean, "min": stats.min,
                                         "max": stats.max, "rounds": stats.rounds}})
        )

    return add


def _benchmarks_note(config: pytest.Config) -> str | None:
    if config.pluginmanager.hasplugin("xdist") and (config.getoption("numprocesses", None) or 0):
        return "pytest-benchmark disables itself under pytest-xdist (-n); run without -n for epoch times"
    if config.getoption("benchmark_disable", False):
        return "benchmarks disabled with --benchmark-disable"
    return None


class LabSession:
    """Collects what the tests recorded (from every xdist worker) and writes the report.

    Lives in the controller process only; workers' records arrive in their test reports.
    """

    def __init__(self, config: pytest.Config, run: RunConfig):
        self.config = config
        self.run = run
        self.started = time.time()
        self.records: list[dict] = []
        self.benchmarks: list[dict] = []
        self.outcomes: dict[str, dict] = {}
        self.collected: list[str] = []
        self.report_path: str | None = None
        self.report_error: str | None = None
        self.stop_reason: str | None = None

    def pytest_keyboard_interrupt(self, excinfo) -> None:
        """Ctrl-C, or a `pytest.exit` that stopped the session: the report says which."""
        message = getattr(excinfo.value, "msg", "") or "interrupted (Ctrl-C)"
        self.stop_reason = message.splitlines()[0]

    def pytest_collection_modifyitems(self, items: list[pytest.Item]) -> None:
        self.collected = [item.nodeid for item in items]

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        if report.when == "call":
            for kind, value in report.user_properties:
                if kind == "lab_record":
                    self.records.append(value)
                elif kind == "lab_benchmark":
                    self.benchmarks.append(value)
        decisive = report.when == "call" or not report.passed
        if decisive and self.outcomes.get(report.nodeid, {}).get("outcome") in (None, "passed"):
            self.outcomes[report.nodeid] = {"test": report.nodeid, "outcome": report.outcome, "reason": _reason(report)}

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.config.getoption("no_report") or self.config.getoption("collectonly"):
            return
        if not any(nodeid.startswith("experiments/") for nodeid in [*self.collected, *self.outcomes]):
            return
        results = self.results(int(exitstatus))
        stem = "{}-{}-{}".format(
            self.run.profile.name,
            results["run"]["device_slug"],
            datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%dT%H%M%SZ"),
        )
        try:
            self.report_path = report.write_report(
                results, self.config.getoption("report_dir"), stem, f"latest-{self.run.profile.name}.md"
            )
        except OSError as error:
            self.report_error = f"report not written: {error}"

    def results(self, exitstatus: int) -> dict:
        """Everything the report shows: the run's settings and machine, records, outcomes."""
        run = self.run
        not_run = [
            {"test": nodeid, "outcome": "not run", "reason": "the session ended before it ran"}
            for nodeid in self.collected
            if nodeid not in self.outcomes
        ]
        complete = exitstatus == 0 and not not_run
        reason = None
        if not complete:
            reason = self.stop_reason or {1: "some tests failed"}.get(exitstatus, f"pytest exit status {exitstatus}")
            if not_run:
                reason += f"; {len(not_run)} tests did not run"
        device = environment.device_summary()
        workers = self.config.getoption("numprocesses", None)
        options = (
            f"--subset {run.subset}" if run.subset else "",
            f"--backbones {','.join(run.backbones)}" if run.backbones else "",
            "--deterministic (deterministic kernels: timings not comparable)" if run.deterministic else "",
            f"--strategy {run.strategy}" if run.strategy != "default" else "",
            "--mixed-precision" if run.mixed_precision else "",
            f"-n {workers}" if workers else "",
        )
        return {
            "run": {
                "profile": run.profile.name,
                "profile_settings": {
                    key: value for key, value in vars(run.profile).items() if key not in ("name", "default_backbones")
                },
                "seed": run.seed,
                "data_source": run.data_source,
                "data_source_description": run.describe_data(),
                "weights_description": f"--weights {run.weights}"
                + (f", --weights-dir {run.weights_dir}" if run.weights_dir else ""),
                "options_description": ", ".join(option for option in options if option) or "defaults",
                "started": _iso(self.started),
                "finished": _iso(time.time()),
                "wall_seconds": time.time() - self.started,
                "commit": environment.git_commit(ROOT),
                "versions": environment.versions(),
                "device": device,
                "device_slug": environment.device_slug(device),
                "replicas": distribution.replicas(),
                "benchmarks_note": _benchmarks_note(self.config),
                "complete": complete,
                "incomplete_reason": reason,
            },
            "records": self.records,
            "benchmarks": self.benchmarks,
            "outcomes": list(self.outcomes.values()) + not_run,
        }

    def pytest_terminal_summary(self, terminalreporter) -> None:
        lines = report.summary_lines(self.records)
        note = _benchmarks_note(self.config)
        if note and any(nodeid.startswith("experiments/test_4") for nodeid in self.outcomes):
            lines.append(f"epoch-time benchmarks: {note}")
        if self.report_path:
            lines.append(f"report: {os.path.relpath(self.report_path)}")
        if self.report_error:
            lines.append(self.report_error)
        if lines:
            terminalreporter.section("transfer-learning lab")
            for line in lines:
                terminalreporter.write_line(line)


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        return report.longrepr[2]
    if report.failed and report.longreprtext:
        return report.longreprtext.strip().splitlines()[-1][:300]
    return ""


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc).isoformat(timespec="seconds")

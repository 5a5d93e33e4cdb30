"""The lab's pytest plugin: its options, its hooks and the fixtures every test folder uses.

The root conftest.py registers it. As in pytest-benchmark, this module declares and hands off:
the report's state is `pytest_lab.session.LabSession`, the datasets' `pytest_lab.datasets.SessionDatasets`,
both made in `pytest_configure` (the session in the controller only: under xdist the workers'
records arrive in their test reports); what a test is, `pytest_lab.cases`. Fixtures only the
experiments use live in experiments/conftest.py.
"""

from __future__ import annotations

import contextlib
import os
import warnings

import pytest

# TensorFlow's C++ start-up chatter would bury pytest's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lab.config import RunConfig, build_config, path_option
from lab.errors import LabInputError
from lab.options import Options, addoption_arguments
from lab.runtime import process, reproducibility, storage
from pytest_lab import cases
from pytest_lab.datasets import SessionDatasets
from pytest_lab.session import LabSession

RUN_CONFIG = pytest.StashKey[RunConfig]()
DATASETS = pytest.StashKey[SessionDatasets]()


def pytest_addoption(parser: pytest.Parser) -> None:
    """The lab's options, each declared once in lab/options.py."""
    group = parser.getgroup("lab", "transfer-learning lab")
    for flag, arguments in addoption_arguments():
        group.addoption(flag, **arguments)


def pytest_configure(config: pytest.Config) -> None:
    run = _checked_run(config)
    config.stash[RUN_CONFIG] = run
    config.stash[DATASETS] = SessionDatasets(run, is_worker(config))
    report_dir, report_dir_name = path_option("report_dir", run.options.report_dir, str(config.rootpath / "reports"))
    if not is_worker(config):
        config.pluginmanager.register(
            LabSession(config, run, None if run.options.no_report else report_dir), "lab-session"
        )
        _check_writable(None if run.options.no_report else report_dir, "reports", _report_dir_fix(report_dir_name))
        _check_writable(
            run.tensorboard_dir, "TensorBoard logs", "pass --tensorboard a folder you can write, or leave it out"
        )
    _apply_to_process(config, run)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    cases.tag(items)


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[DATASETS].load_before_tests(session)


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config.stash[DATASETS].before_test(item)


def is_worker(config: pytest.Config) -> bool:
    """Whether this process is an xdist worker, not the session's controller."""
    return hasattr(config, "workerinput")


def _checked_run(config: pytest.Config) -> RunConfig:
    """The run's settings from the command line, or a usage error naming the fix."""
    # pytest cannot catch warnings raised in pytest_configure itself: handed to it, they
    # reach its warnings summary (once, from the controller, under xdist).
    with _usage_error(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = build_config(Options.from_pytest(config))
    if run.options.distribute == "multiworker" and config.getoption("numprocesses", None):
        raise pytest.UsageError(
            "--distribute multiworker runs one pytest per machine: drop -n (xdist workers on one machine "
            "would all claim the same TF_CONFIG task)"
        )
    if not is_worker(config):
        for warning in caught:
            config.issue_config_time_warning(warning.message, stacklevel=2)
    return run


@contextlib.contextmanager
def _usage_error():
    """Turns the lab's bad-input error into pytest's usage error: its message, no traceback, exit 4."""
    try:
        yield
    except LabInputError as error:
        raise pytest.UsageError(str(error)) from None


def _check_writable(folder: str | None, what: str, fix: str) -> None:
    if folder is None:
        return
    with _usage_error():
        storage.check_writable(folder, what, fix)


def _report_dir_fix(name: str) -> str:
    """How to give the report a folder, naming `--report-dir` or `LAB_REPORT_DIR`, whichever set it."""
    fix = "pass --report-dir PATH or --no-report"
    if name != "--report-dir":
        fix = f"set {name} to a folder you can write, or unset it; or {fix}"
    return fix


def _apply_to_process(config: pytest.Config, run: RunConfig) -> None:
    """The run's TensorFlow settings for this process; an xdist worker takes its share of the CPU
    cores, and on a GPU machine one GPU."""
    if is_worker(config):
        process.share_cpu_cores(int(config.workerinput["workercount"]))
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            process.pin_worker_gpu(int(config.workerinput["workerid"].removeprefix("gw")))
    # Raises for a machine of --distribute multiworker that did not answer.
    with _usage_error():
        process.apply_run_settings(run)


@pytest.fixture(scope="session")
def run_config(pytestconfig: pytest.Config) -> RunConfig:
    """The run's checked settings: profile, data source, seed, backbones, weights."""
    return pytestconfig.stash[RUN_CONFIG]


@pytest.fixture(autouse=True)
def seeded(request: pytest.FixtureRequest, run_config: RunConfig) -> None:
    """Seeds every generator with the test's seed before it runs, so a result does not depend on order."""
    reproducibility.seed_everything(seed_of(request, run_config))


def seed_of(request: pytest.FixtureRequest, run: RunConfig) -> int:
    """A test's seed: its `seed` parameter (one of --seeds) if it trains, else the run's first seed."""
    return request.getfixturevalue("seed") if "seed" in request.fixturenames else run.seed

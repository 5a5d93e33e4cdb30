"""The lab's pytest plugin: its options, its hooks and the fixtures every test folder uses.

The root conftest.py registers it. As in pytest-benchmark, this module declares and hands off:
the report's state is `pytest_lab.session.LabSession`, the datasets' `pytest_lab.datasets.SessionDatasets`,
both made in `pytest_configure` (the session in the controller only: under xdist the workers'
records arrive in their test reports); what a test is, `pytest_lab.cases`. Fixtures only the
experiments use live in experiments/conftest.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings

import pytest

# TensorFlow's C++ start-up chatter would bury pytest's own output.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from lab import process
from lab.config import RunConfig, build_config, path_option
from lab.errors import LabInputError
from lab.options import Options, addoption_arguments
from lab.report import journal, writing
from lab.report.journal import Journal
from lab.report.results import Results
from lab.runtime import environment, reproducibility, storage
from pytest_lab import cases, hosts
from pytest_lab.datasets import SessionDatasets
from pytest_lab.session import LabSession

RUN_CONFIG = pytest.StashKey[RunConfig]()
DATASETS = pytest.StashKey[SessionDatasets]()
EARLIER = pytest.StashKey["Journal | None"]()
# The workerinput key that tells a worker its controller schedules `loadgroup`.
LOADGROUP = "lab_loadgroup"
# Libraries whose version can change a record: a journal of other versions cannot be resumed.
RESULT_LIBRARIES = ("python", "tensorflow", "tensorflow-cpu", "keras", "tensorflow-datasets", "numpy")


def pytest_addoption(parser: pytest.Parser) -> None:
    """The lab's options, each declared once in lab/options.py."""
    group = parser.getgroup("lab", "transfer-learning lab")
    for flag, arguments in addoption_arguments():
        group.addoption(flag, **arguments)


# First: the full profile's time limit per test must be set before pytest-timeout reads its settings.
@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    run = _checked_run(config)
    config.stash[RUN_CONFIG] = run
    if not is_worker(config):
        _group_for_reuse(config)
    elif config.workerinput.get(LOADGROUP):
        # A worker parses the command line anew, where `-n` alone means `load`: xdist appends the
        # groups the controller schedules by only where its worker knows it runs `loadgroup`.
        config.option.loadgroup = True
    _default_timeout(config, run)
    earlier = config.stash[EARLIER] = _earlier_session(config, run)
    baseline = None if is_worker(config) else _baseline(run)
    config.stash[DATASETS] = SessionDatasets(
        run, is_worker(config), earlier and earlier.validation_digests(),
        baseline and {entry.images_digest for entry in baseline.validation_sets if entry.images_digest},
    )
    report_dir, report_dir_name = path_option("report_dir", run.options.report_dir, str(config.rootpath / "reports"))
    if not is_worker(config):
        config.pluginmanager.register(
            LabSession(config, run, None if run.options.no_report else report_dir, earlier, baseline),
            "lab-session",
        )
        _check_writable(None if run.options.no_report else report_dir, "reports", _report_dir_fix(report_dir_name))
        _check_writable(
            run.tensorboard_dir, "TensorBoard logs", "pass --tensorboard a folder you can write, or leave it out"
        )
    _apply_to_process(config, run)


# Last: after -k, -m and --deselect, so that what a resumed session takes from its journal is
# what this session selected.
@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if is_worker(config) and config.getvalue("loadgroup"):
        cases.suffix_groups(items)
    cases.tag(items)
    earlier = config.stash[EARLIER]
    if earlier is not None:
        kept = {test.test for test in earlier.kept()}
        taken = [item for item in items if cases.plain_nodeid(item.nodeid) in kept]
        if taken:
            items[:] = [item for item in items if cases.plain_nodeid(item.nodeid) not in kept]
            config.hook.pytest_deselected(items=taken)


def pytest_itemcollected(item: pytest.Item) -> None:
    cases.group_for_reuse(item)


def pytest_collection_finish(session: pytest.Session) -> None:
    session.config.stash[DATASETS].load_before_tests(session)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node) -> None:
    hosts.configure_node(node, str(node.config.rootpath))
    node.workerinput[LOADGROUP] = node.config.getoption("dist") == "loadgroup"


def pytest_sessionstart(session: pytest.Session) -> None:
    if is_worker(session.config):
        timed_in_workers(session.config)


# First: xdist's worker sends its `workeroutput` to the controller in its own sessionfinish.
@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if is_worker(session.config):
        session.config.workeroutput[hosts.SUMMARY] = hosts.summary(session.config)


def pytest_runtest_setup(item: pytest.Item) -> None:
    item.config.stash[DATASETS].before_test(item)


def is_worker(config: pytest.Config) -> bool:
    """Whether this process is an xdist worker, not the session's controller."""
    return hasattr(config, "workerinput")


def _group_for_reuse(config: pytest.Config) -> None:
    """xdist's `load` (what `-n` and `-d` mean) becomes `loadgroup`, so that tests sharing a product
    run on one worker (`cases.group_for_reuse`); tests of no group are spread as `load` spreads
    them. A `--dist` the user typed is kept."""
    typed = any(arg == "--dist" or arg.startswith("--dist=") for arg in config.invocation_params.args)
    if config.pluginmanager.hasplugin("xdist") and config.getoption("dist", "no") == "load" and not typed:
        config.option.dist = "loadgroup"


def timed_in_workers(config: pytest.Config) -> None:
    """Experiment 4's epoch times in an xdist worker too: pytest-benchmark (5.3.1) switches itself
    off in every worker, so the suite's parallel runs would lose the measurement the card names.
    The report says where other workers shared a host's cores (`session.benchmarks_note`)."""
    benchmarks = getattr(config, "_benchmarksession", None)
    if benchmarks is not None and benchmarks.xdist_warning:
        benchmarks.disabled = False
        benchmarks.xdist_warning = False


def _default_timeout(config: pytest.Config, run: RunConfig) -> None:
    """Gives pytest-timeout the profile's time limit per test where none was given (option,
    PYTEST_TIMEOUT or ini file): generous, to end a test that hangs, not one that is slow."""
    given = config.getoption("timeout", None) is not None or os.environ.get("PYTEST_TIMEOUT")
    if run.profile.test_timeout_seconds is not None and not given and not config.getini("timeout"):
        config.option.timeout = run.profile.test_timeout_seconds


def _earlier_session(config: pytest.Config, run: RunConfig) -> Journal | None:
    """The journal `--resume` names, read and checked against this session; a usage error naming
    every difference that would make a resumed test compute something else."""
    if run.options.resume is None:
        return None
    with _usage_error():
        earlier = journal.read_journal(run.options.resume)
        if is_worker(config):
            return earlier
        problems = journal.resume_problems(
            earlier,
            _resume_terms(earlier.run.profile, earlier.run.seeds, earlier.options, earlier.run.versions),
            _resume_terms(run.profile.name, run.seeds, dataclasses.asdict(run.options), environment.versions()),
        )
    if problems:
        raise pytest.UsageError(
            f"--resume {run.options.resume}: this session differs from the one that wrote its journal in "
            + "; ".join(problems) + ". Resume with the journal's options, or start a new session"
        )
    return earlier


def _baseline(run: RunConfig) -> Results | None:
    """The run `--baseline` names, read before anything trains; a usage error where it cannot be."""
    if run.options.baseline is None:
        return None
    with _usage_error():
        results, _ = writing.load_run(run.options.baseline)
    return results


def _resume_terms(profile: str, seeds, options: dict, versions: dict[str, str]) -> journal.ResumeTerms:
    """What must match between a journal's session and this one, from a session's profile, seeds,
    options as given (`Options` fields) and library versions."""
    from lab.options import Options

    given = Options(**{name: value for name, value in options.items() if name in Options.__dataclass_fields__})
    # Seeds are compared as the sessions resolved them, whichever of --seed and --seeds gave them.
    compared = {flag: value for flag, value in given.result_options().items() if flag not in ("--seed", "--seeds")}
    return journal.ResumeTerms(
        profile=profile,
        seeds=tuple(seeds),
        options=compared,
        versions={library: version for library, version in versions.items() if library in RESULT_LIBRARIES},
    )


def _checked_run(config: pytest.Config) -> RunConfig:
    """The run's settings from the command line, or a usage error naming the fix."""
    # pytest cannot catch warnings raised in pytest_configure itself: handed to it, they
    # reach its warnings summary (once, from the controller, under xdist).
    with _usage_error(), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = build_config(Options.read(config.getoption))
    if run.options.distribute == "multiworker" and config.getoption("numprocesses", None):
        raise pytest.UsageError(
            "--distribute multiworker runs one pytest per machine: drop -n (xdist workers on one machine "
            "would all claim the same TF_CONFIG task)"
        )
    gateways = config.getoption("tx", None) or []
    if run.options.distribute == "multiworker" and gateways:
        raise pytest.UsageError(
            "--tx and --distribute multiworker: --tx spreads the session's tests over machines (each test on one), "
            "--distribute multiworker spreads each training over the machines of TF_CONFIG; use one of them"
        )
    if not is_worker(config) and gateways and config.getoption("dist", "no") == "no":
        raise pytest.UsageError("--tx names xdist's gateways but sends them nothing alone: add -d (--dist load)")
    if not is_worker(config) and any("ssh=" in gateway for gateway in gateways):
        paths = [arg for arg in config.invocation_params.args if not arg.startswith("-") and os.path.exists(
            str(config.invocation_params.dir / arg.split("::")[0]))]
        if paths:
            raise pytest.UsageError(
                f"with ssh gateways pytest-xdist sends workers no test paths ({', '.join(paths)}): select by marker "
                "instead, e.g. `pytest -m experiment -k freeze -d --tx ...` for `pytest experiments -k freeze`"
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
        _, index, host_workers = hosts.place(config)
        process.share_cpu_cores(host_workers)
        if "CUDA_VISIBLE_DEVICES" not in os.environ:
            process.pin_worker_gpu(index)
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

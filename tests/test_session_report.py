"""The report a pytest session writes: what it selected, how it ended, where the report goes.

Real sessions run in subprocesses on mock data and experiment 3's structure tests, which
build backbones without data or training; the rest drive `LabSession` in this process.
"""

import dataclasses
import errno
import json
import os
import pathlib
import re
import signal
from collections.abc import Callable

import pytest

from lab.report import tracking
from lab.report.results import Record, Table
from lab.runtime import atomic, environment
from pytest_lab.cases import ExperimentCase
from pytest_lab.session import LabSession

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STRUCTURE = "experiments/test_3_pretrained_backbone.py::test_backbone_matches_keras_structure"
CHEAP = ("--data-source", "mock", "--weights", "none", "--subset", "16", "-p", "no:cacheprovider")

# Loaded with -p: stops the session as soon as the first test has finished, in the process
# that runs the session (the controller under xdist), the way STOP_WITH says. The test HOLD
# names waits until the session has handled the stop (it writes RELEASE), so that on a busy
# machine it cannot finish first; SIGTERM comes twice, the second while the first is handled,
# as `timeout` sends it.
INTERRUPTER = """
import os, signal, time

HOLD_SECONDS = 240
stopped = False
controller = True

def pytest_configure(config):
    # From the config, not the environment: a session started by a test that itself runs under
    # xdist inherits PYTEST_XDIST_WORKER.
    global controller
    controller = not hasattr(config, "workerinput")

def pytest_runtest_setup(item):
    if os.environ["HOLD"] in item.nodeid:
        deadline = time.monotonic() + HOLD_SECONDS
        while not os.path.exists(os.environ["RELEASE"]):
            assert time.monotonic() < deadline, "the session was not stopped"
            time.sleep(0.05)

def pytest_runtest_logreport(report):
    global stopped
    if report.when == "teardown" and controller and not stopped:
        stopped = True
        stop()

def pytest_keyboard_interrupt(excinfo):
    open(os.environ["RELEASE"], "w").close()
    if os.environ["STOP_WITH"] == "sigterm":
        stop()

def stop():
    if os.environ["STOP_WITH"] == "sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    else:
        raise KeyboardInterrupt
"""


# Loaded with -p: the child machine cannot reach the download server.
OFFLINE = """
from lab.inputs import network

network.can_reach = lambda *args, **kwargs: False
"""


# The real sessions of this module, by name: each starts its own (with the `start_pytest`
# fixture) in a folder of its own.
SESSION_STARTS: dict[str, Callable] = {}


def session_start(name: str):
    """Registers the function below as the start of the session `name` (`sessions[name]`)."""

    def register(start: Callable) -> Callable:
        SESSION_STARTS[name] = start
        return start

    return register


@pytest.fixture(scope="module")
def sessions(tmp_path_factory: pytest.TempPathFactory, start_pytest) -> dict:
    """This module's real sessions (`SESSION_STARTS`), started side by side; a test waits for its own.

    Each spends most of its seconds importing TensorFlow, so all of them start together, even
    when one test alone is selected.
    """
    started = {
        name: start(start_pytest, tmp_path_factory.mktemp(name.replace(" ", "-")))
        for name, start in SESSION_STARTS.items()
    }
    yield started
    for session in started.values():
        if session.process.poll() is None:
            session.process.kill()
            session.process.communicate()


def saved_results(report_dir) -> dict:
    (folder,) = [entry for entry in report_dir.iterdir() if entry.is_dir()]
    return json.loads((folder / "results.json").read_text())


def report_files(report_dir) -> list[str]:
    return sorted(str(path.relative_to(report_dir)) for path in report_dir.rglob("*"))


@session_start("complete")
def _complete_session(start_pytest, directory: pathlib.Path):
    (directory / "weights").mkdir()
    return start_pytest(
        directory, "experiments/test_3_pretrained_backbone.py", "tests/test_reliability.py",
        "-m", "experiment", "-k", "structure", "--deselect", f"{STRUCTURE}[mobilenet_v2]",
        "--backbones", "mobilenet,mobilenet_v2", f"--weights-dir={directory / 'weights'}", "--mixed-precision",
        *CHEAP,
    )


def test_a_selection_that_all_passed_is_complete(sessions):
    """-m, -k and --deselect each leave tests out; none of those is a test that did not run.

    The same run checks that no absolute path reaches the report and that mixed precision
    on a CPU is warned about, so that CI pays for one session instead of three.
    """
    session = sessions["complete"]
    process = session.finished()
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]

    results = saved_results(session.report_dir)
    assert results["run"]["complete"] is True, results["run"]["incomplete_reason"]
    assert [(o["test"], o["outcome"]) for o in results["outcomes"]] == [(f"{STRUCTURE}[mobilenet]", "passed")]
    markdown = (session.report_dir / "latest-smoke.md").read_text()
    assert "Incomplete" not in markdown

    texts = [path.read_text() for path in session.report_dir.rglob("*") if path.suffix in (".md", ".json")]
    for leak in (str(session.directory), ROOT):
        assert not [text for text in texts if leak in text], f"{leak} is in the report"
    # `…/NAME/weights`, or `../NAME/weights` where the session's folder shares a parent with the checkout.
    assert results["run"]["weights_description"].endswith(f"/{session.directory.name}/weights")

    if not results["run"]["device"]["gpu_count"]:
        assert any("--mixed-precision without a GPU" in w for w in results["run"]["warnings"])
        assert "warning: --mixed-precision without a GPU" in process.stdout
        assert "--mixed-precision without a GPU" in markdown


@session_start("sigterm")
def _sigterm_session(start_pytest, directory: pathlib.Path):
    return start_pytest(
        directory, "experiments/test_3_pretrained_backbone.py", "-k", "structure",
        "--backbones", "mobilenet,mobilenet_v2", f"--mlflow=sqlite:///{directory}/mlflow.db", *CHEAP,
        plugins={"interrupter": INTERRUPTER}, STOP_WITH="sigterm",
        HOLD="[mobilenet_v2]", RELEASE=str(directory / "stopped"),
    )


def test_a_session_stopped_by_sigterm_reports_what_finished_and_what_did_not_run(sessions):
    """SIGTERM (what `timeout` and CI cancellation send) ends a session as Ctrl-C does, and a
    second SIGTERM changes nothing."""
    session = sessions["sigterm"]
    process = session.finished()
    assert process.returncode == pytest.ExitCode.INTERRUPTED, process.stdout[-3000:] + process.stderr[-3000:]
    assert "Traceback" not in process.stdout + process.stderr, process.stderr[-3000:]

    markdown = (session.report_dir / "latest-smoke.md").read_text()
    assert "**Incomplete: terminated (SIGTERM); 1 tests did not run.**" in markdown
    assert "**Mock data**" in markdown
    assert "| mobilenet " in markdown, "the finished test's results are missing"
    assert "test_backbone_matches_keras_structure[mobilenet_v2] | not run" in markdown.replace("  ", "")
    results = saved_results(session.report_dir)
    assert results["run"]["complete"] is False
    assert [record["row"]["backbone"] for record in results["records"]] == ["mobilenet"]
    assert not [name for name in report_files(session.report_dir) if ".partial" in name]
    # MLflow's run ends KILLED, said in one line of the lab's section, with none of MLflow's own
    # lines on pytest's progress line.
    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{session.directory}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name(tracking.EXPERIMENT).experiment_id])
    assert [run.info.status for run in runs] == ["KILLED"]
    assert "INFO" not in process.stdout + process.stderr
    assert sum(line.startswith("mlflow: ") for line in process.stdout.splitlines()) == 1, process.stdout[-3000:]


@session_start("xdist")
def _xdist_session(start_pytest, directory: pathlib.Path):
    return start_pytest(
        directory, "experiments/test_3_pretrained_backbone.py", "-n", "2", "-k", "structure",
        "--deselect", f"{STRUCTURE}[vgg16]", "--backbones", "mobilenet,mobilenet_v2,vgg16", *CHEAP,
        plugins={"interrupter": INTERRUPTER}, STOP_WITH="ctrl-c", HOLD="[mobilenet_v2]",
        RELEASE=str(directory / "stopped"),
    )


def test_a_run_cut_short_under_xdist_lists_the_selected_tests_that_did_not_run(sessions):
    """Ctrl-C in the controller of `-n 2`, after the first test: the rest of the selection did not run.

    xdist hands each worker one of the two tests; the second waits for the interrupt.
    """
    session = sessions["xdist"]
    process = session.finished()
    assert process.returncode == pytest.ExitCode.INTERRUPTED, process.stdout[-3000:] + process.stderr[-3000:]

    results = saved_results(session.report_dir)
    outcomes = {outcome["test"]: outcome["outcome"] for outcome in results["outcomes"]}
    # The controller collects nothing: what was selected comes from the workers' collections.
    assert set(outcomes) == {f"{STRUCTURE}[mobilenet]", f"{STRUCTURE}[mobilenet_v2]"}
    assert "not run" in outcomes.values()
    assert results["run"]["complete"] is False
    assert results["run"]["incomplete_reason"].startswith("interrupted (Ctrl-C);")
    assert results["run"]["incomplete_reason"].endswith("tests did not run")


@session_start("k freeze")
def _k_freeze_session(start_pytest, directory: pathlib.Path):
    return start_pytest(directory, "experiments", "-k", "freeze", "--collect-only", "-q", *CHEAP)


def test_k_freeze_selects_experiments_4_and_5_only(sessions):
    """Marker arguments (`backbones="freeze"`) must not make -k match other modules."""
    process = sessions["k freeze"].finished()
    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    modules = {line.split("::")[0] for line in process.stdout.splitlines() if "::" in line}
    assert modules == {"experiments/test_4_freeze.py", "experiments/test_5_gradual_unfreeze.py"}


# In-process: a LabSession driven by hand, with this session's config and settings.

TABLE = Table("Backbones against Keras's published structure", keys=("backbone",))
NODEID = f"{STRUCTURE}[mobilenet]"
CASE = ExperimentCase(3, {"backbone_name": "mobilenet"})


def lab_session(pytestconfig, run_config, report_dir) -> LabSession:
    return LabSession(pytestconfig, run_config, str(report_dir))


def passed(session: LabSession, nodeid: str = NODEID, case: ExperimentCase | None = CASE) -> None:
    """Feeds `session` the reports of a test that passed and recorded one row; `case` is what the
    plugin tagged it with (None for a test of no experiment)."""
    record = Record(3, TABLE.title, TABLE.keys, {"backbone": "mobilenet"}, test=nodeid, seed=0)
    tagged = [("lab_case", dataclasses.asdict(case))] if case else []
    for when in ("setup", "call", "teardown"):
        properties = tagged + ([("lab_record", dataclasses.asdict(record))] if when == "call" else [])
        session.add_test_report(
            pytest.TestReport(nodeid, ("experiments/x.py", 1, "x"), {}, "passed", None, when,
                              user_properties=properties)
        )


def test_two_sessions_finishing_in_the_same_second_write_two_reports(pytestconfig, run_config, tmp_path):
    first, second = (lab_session(pytestconfig, run_config, tmp_path) for _ in range(2))
    for session in (first, second):
        session.started = 1_800_000_000.0
        session.select([(NODEID, CASE)])
        passed(session)
        assert session.finish(0) == 0

    assert first.report_path != second.report_path
    assert os.path.isfile(first.report_path) and os.path.isfile(second.report_path)
    assert len([name for name in os.listdir(tmp_path) if name.endswith(".md") and name != "latest-smoke.md"]) == 2


@pytest.mark.parametrize("selected", [[], [(NODEID, CASE)]], ids=["nothing selected", "none finished"])
def test_a_session_in_which_no_experiment_ran_writes_no_report(pytestconfig, run_config, tmp_path, selected):
    (tmp_path / "latest-smoke.md").write_text("an earlier report\n")
    session = lab_session(pytestconfig, run_config, tmp_path)
    session.select(selected)
    passed(session, "tests/test_data.py::test_something", case=None)

    assert session.finish(pytest.ExitCode.NO_TESTS_COLLECTED) == pytest.ExitCode.NO_TESTS_COLLECTED
    assert report_files(tmp_path) == ["latest-smoke.md"]
    assert (tmp_path / "latest-smoke.md").read_text() == "an earlier report\n"


def test_only_the_chief_of_a_multi_worker_cluster_writes_the_report(pytestconfig, run_config, tmp_path, monkeypatch):
    cluster = {"worker": ["localhost:1", "localhost:2"]}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": {"type": "worker", "index": 1}}))
    session = lab_session(pytestconfig, run_config, tmp_path)
    session.select([(NODEID, CASE)])
    passed(session)

    assert session.finish(0) == 0
    assert session.report_path is None and report_files(tmp_path) == []


def test_a_report_that_cannot_be_written_fails_the_session_and_leaves_nothing(
    pytestconfig, run_config, tmp_path, monkeypatch
):
    (tmp_path / "latest-smoke.md").write_text("an earlier report\n")
    write_text = atomic.atomic_write_text

    def disk_full_for_markdown(path, text):
        # results.json and the figures are written; the disk fills up at the markdown.
        if path.endswith(".md"):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        write_text(path, text)

    monkeypatch.setattr(atomic, "atomic_write_text", disk_full_for_markdown)
    session = lab_session(pytestconfig, run_config, tmp_path)
    session.select([(NODEID, CASE)])
    passed(session)

    assert session.finish(0) != 0
    assert session.report_path is None
    assert str(tmp_path) in session.report_error and os.strerror(errno.ENOSPC) in session.report_error
    # The journal stays: the session's tests are not lost with its report.
    run_folder = os.path.basename(session.run_folder)
    assert report_files(tmp_path) == ["latest-smoke.md", run_folder, f"{run_folder}/journal.jsonl"]
    assert (tmp_path / "latest-smoke.md").read_text() == "an earlier report\n"


@pytest.mark.parametrize(("first", "reason"), [(signal.SIGTERM, "terminated (SIGTERM)"),
                                               (signal.SIGINT, "interrupted (Ctrl-C)")])
def test_sigterm_and_ctrl_c_are_handled_during_the_session_only_and_once(pytestconfig, run_config, tmp_path,
                                                                         first, reason):
    before = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    session = lab_session(pytestconfig, run_config, tmp_path)
    session.handle_signals()
    try:
        with pytest.raises(KeyboardInterrupt):
            signal.raise_signal(first)
        assert session.stop_reason == reason
        # A second signal of either kind while the session winds down is ignored: no second
        # KeyboardInterrupt (Ctrl-C twice, 0.3 s apart, printed a 312-line traceback).
        signal.raise_signal(signal.SIGINT)
        signal.raise_signal(signal.SIGTERM)
    finally:
        session.restore_signals()
    assert {number: signal.getsignal(number) for number in before} == before


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        ("{root}/reports/run/results.json", "reports/run/results.json"),
        ("{root}", "."),
        ("{root}-other/data", "../{root_name}-other/data"),
        ("/home/someone/datasets/flowers", "\u2026/datasets/flowers"),
    ],
)
def test_paths_are_relative_to_the_project_or_keep_two_components(path, shown):
    # The last two components only where the path shares no folder but `/` with the project:
    # `../../home/someone/...` would spell out its whole location.
    root = "/srv/lab"
    assert environment.display_path(path.format(root=root), root) == shown.format(root_name="lab")


def test_absolute_paths_in_messages_are_shortened_and_nothing_else_is():
    root = "/srv/lab"
    text = (
        "weights file /home/someone/.keras/models/mobilenet.h5 not in /srv/lab/weights. "
        "Pass --data-dir=/mnt/big/data, see https://storage.googleapis.com/x/y; 3/4 of 32-64-128"
    )
    assert environment.display_paths_in(text, root) == (
        "weights file \u2026/models/mobilenet.h5 not in weights. "
        "Pass --data-dir=\u2026/big/data, see https://storage.googleapis.com/x/y; 3/4 of 32-64-128"
    )


@pytest.mark.parametrize("gpus", [0, 1])
def test_mixed_precision_without_a_gpu_is_warned_about(gpus):
    warnings = environment.run_warnings(mixed_precision=True, deterministic=False, device={"gpu_count": gpus})
    assert bool(warnings) == (gpus == 0)


@session_start("offline")
def _offline_session(start_pytest, directory: pathlib.Path):
    (directory / "keras-home").mkdir()
    return start_pytest(
        directory, "experiments", "-k", "pretrained_features and resnet50", "--data-source", "mock",
        "-p", "no:cacheprovider", plugins={"offline_machine": OFFLINE}, KERAS_HOME=str(directory / "keras-home"),
    )


def test_offline_the_random_control_of_a_skipped_imagenet_case_is_skipped_and_the_question_still_asked(sessions):
    session = sessions["offline"]
    process = session.finished()

    assert process.returncode == 0, process.stdout[-3000:] + process.stderr[-3000:]
    outcomes = {outcome["test"].rsplit("-", 1)[-1].rstrip("]"): outcome
                for outcome in saved_results(session.report_dir)["outcomes"]}
    assert {arm: outcome["outcome"] for arm, outcome in outcomes.items()} == {"imagenet": "skipped", "none": "skipped"}
    assert "random-weights control of an ImageNet case that cannot run" in outcomes["none"]["reason"]
    assert re.search(r"Experiment 3, resnet50: ImageNet features vs random features +not compared", process.stdout)


def test_a_skipped_test_keeps_its_reason_without_pytests_prefix(pytestconfig, run_config, tmp_path):
    session = lab_session(pytestconfig, run_config, tmp_path)
    reason = "ImageNet weights case: this run has --weights none"
    for outcome, longrepr, when in [("skipped", ("x.py", 1, f"Skipped: {reason}"), "setup"),
                                    ("passed", None, "teardown")]:
        session.add_test_report(
            pytest.TestReport(NODEID, ("experiments/x.py", 1, "x"), {}, outcome, longrepr, when,
                              user_properties=[("lab_case", dataclasses.asdict(CASE))])
        )

    assert session.outcomes[NODEID].reason == reason and session.outcomes[NODEID].experiment == 3


def test_a_signal_while_the_report_is_written_and_logged_is_noted_not_obeyed(pytestconfig, run_config, tmp_path):
    """A stop then would leave MLflow's runs RUNNING for good (SIGTERM killed the process with rc 143)."""
    session = lab_session(pytestconfig, run_config, tmp_path)
    session.handle_signals()
    try:
        session.finishing = True
        signal.raise_signal(signal.SIGTERM)
        signal.raise_signal(signal.SIGINT)
    finally:
        session.restore_signals()
    assert session.stop_reason is None and session.late_signal == "terminated (SIGTERM)"


def test_a_warning_about_the_data_reaches_the_report_as_it_reaches_the_terminal(pytestconfig, run_config, tmp_path):
    import warnings

    from lab.errors import DataWarning

    session = lab_session(pytestconfig, run_config, tmp_path)
    text = "leaves: no validation image of dog: add images of it"
    for category in (DataWarning, DataWarning, UserWarning):
        session.warned(warnings.WarningMessage(category(text), category, "data.py", 1))

    warned = session.collect_results(0).run.warnings
    assert warned.count(text) == 1

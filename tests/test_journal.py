"""A long run loses nothing: the journal, the report of a killed session, `--resume`, `--timeout`
and an xdist worker that dies.

The real sessions run in subprocesses on the embedded sample at tiny sizes (or on experiment 3's
structure tests, which train nothing); they are stopped on events (a test's teardown, a test's
call), never on clocks, except where a time limit is the point.
"""

import dataclasses
import json
import os
import pathlib
import signal
import types

import numpy as np
import pytest

from lab.errors import LabInputError
from lab.inputs.data import ImageData
from lab.report import journal, tracking, writing
from lab.report.journal import EndedTest, JournalWriter, ResumeTerms
from lab.report.results import Outcome, Record, RunHeader
from pytest_lab.cases import ExperimentCase
from pytest_lab.datasets import SessionDatasets
from pytest_lab.session import LabSession

TINY = ("--subset", "64", "--epochs", "2", "--image-size", "32", "--deterministic", "-p", "no:cacheprovider")
BASE_AND_TRANSFER = ("experiments", "-k", "base_model or transfer", *TINY)
STRUCTURE = "experiments/test_3_pretrained_backbone.py::test_backbone_matches_keras_structure"
CHEAP = ("--data-source", "mock", "--weights", "none", "--subset", "16", "-p", "no:cacheprovider")

# Loaded with -p: SIGKILLs the session's process once KILL_AFTER tests have ended, after the
# session's own hook has journaled the last of them (trylast), as the OOM killer would.
KILLER = """
import os, signal
import pytest

ended = 0

@pytest.hookimpl(trylast=True)
def pytest_runtest_logreport(report):
    global ended
    if report.when == "teardown":
        ended += 1
        if ended == int(os.environ["KILL_AFTER"]):
            os.kill(os.getpid(), signal.SIGKILL)
"""

# Loaded with -p: the test whose id holds HANG never returns (in Python, which pytest-timeout's
# signal method can interrupt).
HANGER = """
import os, time

def pytest_runtest_call(item):
    while os.environ["HANG"] in item.nodeid:
        time.sleep(0.05)
"""

# Loaded with -p: the xdist worker that runs the test whose id holds DIE kills itself mid-test.
WORKER_KILLER = """
import os, signal

def pytest_runtest_call(item):
    if os.environ["DIE"] in item.nodeid and hasattr(item.config, "workerinput"):
        os.kill(os.getpid(), signal.SIGKILL)
"""


def run_folder(report_dir: pathlib.Path) -> pathlib.Path:
    (folder,) = [entry for entry in report_dir.iterdir() if entry.is_dir()]
    return folder


def trained(results: dict) -> dict:
    """What a session's records measured, by test: accuracy, losses and every prediction."""
    return {
        record["test"]: (record["row"]["validation accuracy"], record["curves"]["train_loss"], record["predictions"])
        for record in results["records"]
    }


@pytest.fixture(scope="module")
def sessions(tmp_path_factory, start_pytest) -> dict:
    """This module's real sessions, started side by side (each spends most of its seconds importing TensorFlow)."""
    folder = tmp_path_factory.mktemp
    started = {
        "uninterrupted": start_pytest(folder("uninterrupted"), *BASE_AND_TRANSFER),
        "killed": start_pytest(folder("killed"), *BASE_AND_TRANSFER, plugins={"killer": KILLER}, KILL_AFTER="2"),
        "timeout": start_pytest(
            folder("timeout"), "experiments/test_1_base_model.py", "--timeout=20", *TINY,
            plugins={"hanger": HANGER}, HANG="[seed0-lab]",
        ),
        "worker dies": start_pytest(
            folder("worker-dies"), "experiments/test_3_pretrained_backbone.py", "-n", "2", "-k", "structure",
            "--backbones", "mobilenet,mobilenet_v2", *CHEAP, plugins={"worker_killer": WORKER_KILLER},
            DIE="[mobilenet_v2]",
        ),
    }
    yield started
    for session in started.values():
        if session.process.poll() is None:
            session.process.kill()
            session.process.communicate()


def test_a_session_killed_after_two_tests_resumes_to_the_records_of_one_uninterrupted_session(
    sessions, start_pytest, tmp_path
):
    """SIGKILL after experiment 1's two tests; `--resume` runs experiment 2's two alone (its base
    model trained again in that process) and ends with the uninterrupted session's records, digit
    for digit under --deterministic: a test's records depend on its case and seed only."""
    killed = sessions["killed"].finished()
    assert killed.returncode == -signal.SIGKILL, killed.stdout[-3000:] + killed.stderr[-3000:]
    folder = run_folder(sessions["killed"].report_dir)
    assert sorted(os.listdir(folder)) == [journal.JOURNAL_NAME], "a killed session wrote a report"
    earlier = journal.read_journal(str(folder))
    assert [test.outcome.outcome for test in earlier.ended.values()] == ["passed", "passed"]
    assert len(earlier.selected) == 4 and not earlier.end_recorded

    # The killed session's own report, from its journal.
    assert writing.main([str(folder), "--out-dir", str(tmp_path)]) == 0
    (markdown,) = tmp_path.glob("*.md")
    text = markdown.read_text()
    assert "**Incomplete: the session was killed (no end recorded); 2 tests did not run.**" in text
    assert "test_transfer_to_cifar10[seed0-scratch] | not run" in text.replace("  ", "")

    resumed = start_pytest(tmp_path, *BASE_AND_TRANSFER, f"--resume={folder}").finished()
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "2 passed, 36 deselected" in resumed.stdout
    results = json.loads((run_folder(tmp_path / "reports") / "results.json").read_text())
    assert results["run"]["resumed_from"]["tests"] == 2 and results["run"]["complete"] is True
    assert [outcome["outcome"] for outcome in results["outcomes"]] == ["passed"] * 4

    uninterrupted = sessions["uninterrupted"].finished()
    assert uninterrupted.returncode == 0, uninterrupted.stdout[-3000:] + uninterrupted.stderr[-3000:]
    expected = json.loads((run_folder(sessions["uninterrupted"].report_dir) / "results.json").read_text())
    assert trained(results) == trained(expected)
    assert [c["verdict"] for c in results["comparisons"]] == [c["verdict"] for c in expected["comparisons"]]


def test_a_resume_with_other_seeds_or_options_is_refused_naming_both(sessions, start_pytest, tmp_path):
    sessions["killed"].finished()
    folder = run_folder(sessions["killed"].report_dir)
    process = start_pytest(tmp_path, *BASE_AND_TRANSFER, "--seeds", "2", "--epochs", "3", f"--resume={folder}")
    refused = process.finished()
    assert refused.returncode == pytest.ExitCode.USAGE_ERROR, refused.stdout[-3000:] + refused.stderr[-3000:]
    assert "--seeds: the journal ran 0, this session runs 0,1" in refused.stderr
    assert "--epochs: the journal's 2, this session's 3" in refused.stderr
    assert not (tmp_path / "reports").exists(), "a refused session made a run folder"


def test_a_test_past_its_time_limit_fails_with_the_limit_and_the_session_goes_on(sessions):
    session = sessions["timeout"]
    process = session.finished()
    assert process.returncode == pytest.ExitCode.TESTS_FAILED, process.stdout[-3000:] + process.stderr[-3000:]
    results = json.loads((run_folder(session.report_dir) / "results.json").read_text())
    outcomes = {outcome["test"].split("::")[1]: outcome for outcome in results["outcomes"]}
    assert outcomes["test_base_model[seed0-lab]"]["outcome"] == "failed"
    assert outcomes["test_base_model[seed0-lab]"]["reason"] == "timed out: over its 20 s limit (--timeout)"
    assert outcomes["test_base_model[seed0-narrow]"]["outcome"] == "passed"
    markdown = (session.report_dir / "latest-smoke.md").read_text()
    assert "timed out: over its 20 s limit (--timeout)" in markdown


def test_an_xdist_worker_killed_mid_test_is_reported_crashed_and_the_rest_is_complete(sessions):
    session = sessions["worker dies"]
    process = session.finished()
    assert process.returncode == pytest.ExitCode.TESTS_FAILED, process.stdout[-3000:] + process.stderr[-3000:]
    results = json.loads((run_folder(session.report_dir) / "results.json").read_text())
    outcomes = {outcome["test"]: outcome for outcome in results["outcomes"]}
    assert outcomes[f"{STRUCTURE}[mobilenet]"]["outcome"] == "passed"
    crashed = outcomes[f"{STRUCTURE}[mobilenet_v2]"]
    assert crashed["outcome"] == "failed" and "crashed" in crashed["reason"] and "gw" in crashed["reason"]
    assert [record["row"]["backbone"] for record in results["records"]] == ["mobilenet"]
    assert set(journal.read_journal(str(run_folder(session.report_dir))).ended) == set(outcomes)


# In-process: the journal's file format, and a session whose disk fills.

def header(**fields) -> RunHeader:
    values = dict(profile="smoke", seed=0, data_source="sample", data_source_description="the sample",
                  weights_description="--weights none", seeds=[0], started="2026-12-07T00:00:00+00:00")
    return RunHeader(**{**values, **fields})


def ended(test: str, outcome: str = "passed") -> EndedTest:
    record = Record(3, "Backbones", ("backbone",), {"backbone": test}, test=test, seed=0)
    return EndedTest(Outcome(test, outcome, "", 3, {"backbone_name": test}), records=[record], duration_seconds=1.0)


def write_journal(path: pathlib.Path, tests: list[EndedTest], selected: list[str]) -> None:
    writer = JournalWriter(str(path))
    writer.start(header(), {"profile": "smoke"})
    writer.selected((test, None) for test in selected)
    for test in tests:
        writer.ended(test)
    writer.close()


def test_a_torn_last_line_is_skipped_with_a_warning_and_nothing_before_it_is_lost(tmp_path):
    path = tmp_path / journal.JOURNAL_NAME
    write_journal(path, [ended("a"), ended("b", "failed")], ["a", "b", "c"])
    whole = path.read_text()
    with path.open("a") as stream:
        stream.write(json.dumps(ended("c").to_json())[:40])

    read = journal.read_journal(str(tmp_path))
    assert list(read.ended) == ["a", "b"] and read.ended["a"].records[0].row == {"backbone": "a"}
    assert [test.test for test in read.kept()] == ["a"]
    assert len(read.warnings) == 1 and "torn last line" in read.warnings[0]
    assert journal.read_journal(str(path)).ended.keys() == journal.read_journal(str(tmp_path)).ended.keys()

    results = journal.results_of(read)
    assert results.run.complete is False and results.run.killed
    assert tracking.session_run(results, None).status == "KILLED"
    assert results.run.incomplete_reason == f"{journal.KILLED}; 1 tests did not run"
    assert [(outcome.test, outcome.outcome) for outcome in results.outcomes] == [
        ("a", "passed"), ("b", "failed"), ("c", "not run")
    ]
    path.write_text(whole.replace('"kind":"test"', '"kind":"test"', 1)[:-1] + "\n")
    assert journal.read_journal(str(path)).warnings == []


def test_a_run_given_with_a_tilde_is_read_from_home(tmp_path, monkeypatch):
    """`--resume=~/run` and `--baseline=~/run`: the shell leaves a `~` after `=` as it is."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "run").mkdir()
    write_journal(tmp_path / "run" / journal.JOURNAL_NAME, [ended("a")], ["a"])

    assert list(journal.read_journal("~/run").ended) == ["a"]
    assert writing.load_run("~/run")[1] == str(tmp_path / "run")


@pytest.mark.parametrize("damage", ["no journal", "empty", "newer format", "damaged line", "not a journal"])
def test_a_journal_that_cannot_be_resumed_is_refused_naming_why(tmp_path, damage):
    path = tmp_path / journal.JOURNAL_NAME
    write_journal(path, [ended("a"), ended("b")], ["a", "b"])
    lines = path.read_text().splitlines(keepends=True)
    expected = {
        "no journal": "holds no journal.jsonl",
        "empty": "not a journal of this suite",
        "newer format": f"newer than this checkout's {journal.FORMAT}",
        "damaged line": "damaged at line 3",
        "not a journal": "not a journal of this suite",
    }[damage]
    if damage == "no journal":
        path.unlink()
    elif damage == "empty":
        path.write_text("")
    elif damage == "newer format":
        path.write_text(lines[0].replace(f'"format":{journal.FORMAT}', '"format":99') + "".join(lines[1:]))
    elif damage == "damaged line":
        path.write_text(lines[0] + lines[1] + "{not json\n" + lines[3])
    else:
        path.write_text('{"run": 1}\n')
    with pytest.raises(journal.JournalError, match=expected):
        journal.read_journal(str(tmp_path))


def test_resume_terms_name_every_difference_with_both_values():
    earlier = ResumeTerms("smoke", (0, 1), {"--epochs": 2, "--augment": False}, {"keras": "3.15.1"})
    now = ResumeTerms("full", (0,), {"--epochs": 2, "--augment": True}, {"keras": "3.16.0"})
    assert journal.resume_problems(None, earlier, now) == [
        "--profile: the journal's smoke, this session's full",
        "--seeds: the journal ran 0,1, this session runs 0",
        "--augment: the journal's not given, this session's given",
        "keras: the journal's 3.15.1, this session's 3.16.0",
    ]
    assert journal.resume_problems(None, earlier, earlier) == []


def test_a_journal_that_cannot_be_written_stops_the_session_before_the_next_test(
    pytestconfig, run_config, tmp_path, monkeypatch
):
    session = LabSession(pytestconfig, run_config, str(tmp_path))
    session.session = types.SimpleNamespace(shouldstop=False)
    session.select([("experiments/x.py::a", ExperimentCase(3, {})), ("experiments/x.py::b", ExperimentCase(3, {}))])
    session.open_journal()

    def disk_full(self, line):
        raise OSError(28, os.strerror(28))

    monkeypatch.setattr(JournalWriter, "append", disk_full)
    session.test_ended(dataclasses.replace(ended("experiments/x.py::a")))

    assert "cannot write the journal" in session.session.shouldstop
    assert os.strerror(28) in session.session.shouldstop and journal.JOURNAL_NAME in session.session.shouldstop
    monkeypatch.undo()
    read = journal.read_journal(session.run_folder)
    assert list(read.ended) == [] and len(read.selected) == 2


def test_a_resume_on_other_validation_images_under_the_same_name_is_refused(run_config):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 255, (6, 8, 8, 3), dtype=np.uint8)
    labels = np.array([0, 1, 2, 0, 1, 2])

    def loaded(validation_images):
        return ImageData("tf_flowers", "folder", ("a", "b", "c"), 12, 8, images, labels, validation_images, labels)

    journaled = loaded(images).validation_set()
    datasets = SessionDatasets(run_config, False, {journaled.name: journaled.images_digest})
    assert datasets.resumable(loaded(images.copy())).validation_digest() == journaled.images_digest

    changed = images.copy()
    changed[3, 0, 0, 0] ^= 1
    refused = datasets.resumable(loaded(changed))
    assert isinstance(refused, LabInputError)
    assert journaled.name in str(refused) and "differ from those the journal's session predicted" in str(refused)

"""The session plugin: collects what the selected tests recorded and writes the report.

conftest.py registers one `LabSession` in `pytest_configure`, in the controller process only:
under xdist the workers' records and outcomes arrive in their test reports. As in
pytest-benchmark's BenchmarkSession, each hook hands off to a method in one line.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import signal
import threading
import time

import pytest

from lab.config import RunConfig
from lab.errors import LabInputError
from lab.report import findings, render, tracking, writing
from lab.report.results import BenchmarkResult, Outcome, Record, Results, RunHeader, TimeSplit, ValidationSet
from lab.runtime import distribution, environment, keras_internals, timesplit
from pytest_lab.cases import ExperimentCase, tagged_case


class LabSession:
    """What one pytest session selected, recorded and how each test ended; the report at the end.

    Args:
        config: the session's pytest config.
        run: the run's checked settings.
        report_dir: where the report goes, or None for `--no-report`.
    """

    def __init__(self, config: pytest.Config, run: RunConfig, report_dir: str | None):
        self.config = config
        self.run = run
        self.report_dir = report_dir
        self.root = str(config.rootpath)
        self.started = time.time()
        # Node ids in selection order; a dict keeps the order and drops the repeats that
        # each xdist worker's own copy of the collection brings.
        self.selected: dict[str, ExperimentCase | None] = {}
        self.records: list[Record] = []
        self.benchmarks: list[BenchmarkResult] = []
        # Validation sets by name: every record that predicts one brings its labels along.
        self.validation_sets: dict[str, ValidationSet] = {}
        self.outcomes: dict[str, Outcome] = {}
        # Each test's durations and measured seconds, for the time split.
        self.test_seconds: dict[str, timesplit.SecondsOfTest] = {}
        self.report_seconds: float | None = None
        self.results: Results | None = None
        self.report_path: str | None = None
        self.report_error: str | None = None
        self.stop_reason: str | None = None
        self._previous_sigterm_handler = None
        self.mlflow: tracking.SessionLog | None = None

    # Hooks: each hands off to a method below.

    def pytest_configure(self, config: pytest.Config) -> None:
        self.open_mlflow()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.handle_sigterm()

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.select((item.nodeid, tagged_case(item.user_properties)) for item in session.items)

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        self.select((nodeid, None) for nodeid in ids)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.add_test_report(report)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo) -> None:
        self.interrupted(excinfo.value)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        session.exitstatus = self.finish(session.exitstatus)
        session.exitstatus = self.log_to_mlflow(session.exitstatus)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        self.summarize(terminalreporter)

    def pytest_unconfigure(self) -> None:
        self.restore_sigterm()

    # What the hooks hand off to.

    def open_mlflow(self) -> None:
        """Checks `--mlflow`'s store before anything trains, in the process that writes the report."""
        if self.run.options.mlflow is None or not distribution.is_chief():
            return
        try:
            self.mlflow = tracking.SessionLog(self.run.options.mlflow, self.report_dir)
        except LabInputError as error:
            raise pytest.UsageError(str(error)) from None

    def handle_sigterm(self) -> None:
        """Makes SIGTERM (what `timeout` and CI cancellation send) stop the session as Ctrl-C
        does, so that the report says what finished."""
        if threading.current_thread() is threading.main_thread():
            self._previous_sigterm_handler = signal.signal(signal.SIGTERM, self._terminated)

    def _terminated(self, signum, frame) -> None:
        # Only the first signal stops the session: `timeout` sends SIGTERM to its command and
        # again to the command's process group, and a second KeyboardInterrupt raised while
        # pytest handles the first escapes it as a traceback after the report.
        if self.stop_reason is not None:
            return
        self.stop_reason = "terminated (SIGTERM)"
        raise KeyboardInterrupt

    def restore_sigterm(self) -> None:
        """Puts back the SIGTERM handler the session found."""
        if self._previous_sigterm_handler is not None:
            signal.signal(signal.SIGTERM, self._previous_sigterm_handler)
            self._previous_sigterm_handler = None

    def select(self, tests) -> None:
        """Adds tests that the session selected (after `-k`, `-m` and `--deselect`) to run:
        (node id, `ExperimentCase` or None where only the id is known, as under xdist) pairs."""
        for nodeid, case in tests:
            if case is not None or nodeid not in self.selected:
                self.selected[nodeid] = case

    def add_test_report(self, report: pytest.TestReport) -> None:
        """Takes a test's records and benchmark from its call, and its outcome."""
        if report.when == "call":
            for kind, value in report.user_properties:
                if kind == "lab_record":
                    self.records.append(Record.from_json(value))
                elif kind == "lab_benchmark":
                    self.benchmarks.append(BenchmarkResult(**value))
                elif kind == "lab_validation_set":
                    self.validation_sets.setdefault(value["name"], ValidationSet(**value))
        self.add_test_seconds(report)
        # A failed setup or teardown decides the outcome; a passed one does not.
        decisive = report.when == "call" or not report.passed
        previous = self.outcomes.get(report.nodeid)
        if decisive and (previous is None or previous.outcome == "passed"):
            case = tagged_case(report.user_properties)
            self.outcomes[report.nodeid] = outcome_of(report.nodeid, report.outcome, _reason(report), case)

    def add_test_seconds(self, report: pytest.TestReport) -> None:
        """Adds a phase's duration to its test's seconds; its teardown brings what the test measured."""
        seconds = self.test_seconds.setdefault(report.nodeid, timesplit.SecondsOfTest(None))
        seconds.duration_seconds += report.duration
        if report.when != "teardown":
            return
        for kind, value in report.user_properties:
            if kind == "lab_data_seconds":
                seconds.data_seconds += value
            elif kind == "lab_time_split":
                seconds.measured = TimeSplit(**value)

    def interrupted(self, error: BaseException) -> None:
        """Ctrl-C, SIGTERM or a `pytest.exit` stopped the session: the report says which."""
        message = getattr(error, "msg", "") or "interrupted (Ctrl-C)"
        self.stop_reason = self.stop_reason or message.splitlines()[0]

    def experiment_ran(self) -> bool:
        """Whether any experiment test ended (passed, failed or skipped)."""
        return any(outcome.experiment is not None for outcome in self.outcomes.values())

    def finish(self, exitstatus: int) -> int:
        """Writes the report, if an experiment ran; returns the session's exit status.

        A report that cannot be written fails the session: the report is what a run is for.
        """
        self.restore_sigterm()
        if not self.experiment_ran():
            return exitstatus
        self.results = self.collect_results(exitstatus)
        # Under --distribute multiworker every worker runs the whole session; one report is enough.
        if self.report_dir is None or not distribution.is_chief():
            return exitstatus
        started = time.perf_counter()
        self.report_path, self.report_error = writing.write_report_once(
            self.results, self.report_dir, writing.report_stem(self.results.run, self.started),
            f"latest-{self.run.profile.name}.md",
        )
        self.report_seconds = time.perf_counter() - started
        if self.report_error:
            return exitstatus or pytest.ExitCode.TESTS_FAILED
        return exitstatus

    def log_to_mlflow(self, exitstatus: int) -> int:
        """Logs the session to MLflow once its report is written (`--mlflow`); returns the exit status,
        failed where it could not be logged, as for a report that could not be written."""
        if self.mlflow is None or self.results is None:
            return exitstatus
        seconds = {nodeid: split.duration_seconds for nodeid, split in self.test_seconds.items()}
        if self.mlflow.log(self.results, self.report_path, seconds):
            return exitstatus
        return exitstatus or pytest.ExitCode.TESTS_FAILED

    def collect_results(self, exitstatus: int) -> Results:
        """Everything the report shows: the run's settings and machine, records, outcomes, and
        the comparisons that answer the lab's questions."""
        run, options = self.run, self.run.options
        finished = time.time()
        not_run = [
            outcome_of(nodeid, "not run", "the session ended before it ran", case)
            for nodeid, case in self.selected.items()
            if nodeid not in self.outcomes
        ]
        complete = exitstatus == 0 and not not_run
        reason = None
        if not complete:
            status = int(exitstatus)
            reason = self.stop_reason or ("some tests failed" if status == 1 else f"pytest exit status {status}")
            if not_run:
                reason += f"; {len(not_run)} tests did not run"
        device = environment.device_summary()
        header = RunHeader(
            profile=run.profile.name,
            seed=run.seed,
            data_source=run.data_source,
            data_source_description=self.displayed(run.describe_data()),
            dataset_description=self.displayed(run.dataset.describe()),
            weights_description=f"--weights {options.weights}"
            + (f", --weights-dir {self.displayed(run.weights_dir)}" if run.weights_dir else ""),
            options={name: self.displayed(value) for name, value in self.options().items()},
            profile_settings={
                key: value for key, value in vars(run.profile).items() if key not in ("name", "default_backbones")
            },
            started=_iso(self.started),
            finished=_iso(finished),
            wall_seconds=finished - self.started,
            commit=environment.git_commit(self.root),
            versions=environment.versions(),
            device=device,
            device_slug=environment.device_slug(device),
            replicas=distribution.replicas(),
            benchmarks_note=benchmarks_note(self.config),
            warnings=[
                *environment.run_warnings(options.mixed_precision, options.deterministic, device, options.run_eagerly),
                *filter(None, [keras_internals.version_warning()]),
            ],
            complete=complete,
            incomplete_reason=self.displayed(reason) if reason else None,
            seeds=list(run.seeds),
            training_step=environment.training_step(
                options.adam, options.xla, device, options.distribute, options.deterministic, options.run_eagerly
            ),
        )
        results = Results(
            run=header,
            records=[self.displayed_record(record) for record in self.records],
            benchmarks=self.benchmarks,
            outcomes=[
                dataclasses.replace(outcome, reason=self.displayed(outcome.reason))
                for outcome in [*self.outcomes.values(), *not_run]
            ],
            validation_sets=list(self.validation_sets.values()),
        )
        results.comparisons = findings.comparisons(results)
        results.time_split = timesplit.session_split(
            self.test_seconds.values(), header.wall_seconds, parallel=bool(self.config.getoption("numprocesses", None))
        )
        return results

    def options(self) -> dict[str, str]:
        """The options of this run that are not defaults, as the user typed them (`Options.given`),
        and xdist's `-n`."""
        options = self.run.options.given(self.run)
        workers = self.config.getoption("numprocesses", None)
        if workers:
            options["-n"] = str(workers)
        return options

    def displayed(self, text: str) -> str:
        """`text` with the machine's absolute paths shortened (see `environment.display_path`)."""
        return environment.display_paths_in(text, self.root)

    def displayed_record(self, record: Record) -> Record:
        row = {column: self.displayed(value) if isinstance(value, str) else value
               for column, value in record.row.items()}
        return dataclasses.replace(record, row=row, label=self.displayed(record.label))

    def summarize(self, terminalreporter) -> None:
        """The lab's section of pytest's terminal summary: results, findings, warnings, the report's path."""
        lines = []
        if self.results:
            lines += writing.summary_lines(self.results)
            if self.results.comparisons:
                lines += ["findings:", *render.findings_table(self.results.comparisons, "simple").splitlines()]
            lines += [f"warning: {warning}" for warning in self.results.run.warnings]
            if self.results.time_split:
                lines.append(writing.time_split_line(self.results.time_split, self.report_seconds))
            note = self.results.run.benchmarks_note
            if note and any(findings.is_epoch_time_case(outcome) for outcome in self.outcomes.values()):
                lines.append(f"epoch-time benchmarks: {note}")
        if self.report_path:
            lines.append(f"report: {os.path.relpath(self.report_path)}")
        if self.report_error:
            lines.append(self.report_error)
        if self.mlflow and self.mlflow.summary:
            lines.append(self.mlflow.summary)
        if lines:
            terminalreporter.section("transfer-learning lab")
            for line in lines:
                terminalreporter.write_line(line)


def outcome_of(nodeid: str, outcome: str, reason: str, case: ExperimentCase | None) -> Outcome:
    """An `Outcome`, with its experiment and parameters where the test is one of an experiment."""
    if case is None:
        return Outcome(nodeid, outcome, reason)
    return Outcome(nodeid, outcome, reason, case.experiment, case.parameters)


def benchmarks_note(config: pytest.Config) -> str | None:
    """Why this run has no epoch times, if it has none by its options."""
    if config.pluginmanager.hasplugin("xdist") and (config.getoption("numprocesses", None) or 0):
        return "pytest-benchmark disables itself under pytest-xdist (-n); run without -n for epoch times"
    if config.getoption("benchmark_disable", False):
        return "benchmarks disabled with --benchmark-disable"
    return None


def _reason(report: pytest.TestReport) -> str:
    if report.skipped and isinstance(report.longrepr, tuple):
        # pytest's own prefix: the outcome column already says "skipped".
        return report.longrepr[2].removeprefix("Skipped: ")
    if report.failed and report.longreprtext:
        return report.longreprtext.strip().splitlines()[-1][:300]
    return ""


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")

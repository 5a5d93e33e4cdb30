"""The session plugin: collects what the selected tests recorded and writes the report.

conftest.py registers one `LabSession` in `pytest_configure`, in the controller process only:
under xdist the workers' records and outcomes arrive in their test reports. As in
pytest-benchmark's BenchmarkSession, each hook hands off to a method in one line.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import re
import signal
import threading
import time

import pytest

from lab.config import RunConfig
from lab.errors import DataWarning, LabInputError
from lab.report import findings, journal, render, tracking, writing
from lab.report.baseline import against_baseline
from lab.report.journal import EndedTest, Journal
from lab.report.results import (
    BenchmarkResult,
    EarlierSession,
    Outcome,
    Record,
    Results,
    RunHeader,
    TimeSplit,
    ValidationSet,
)
from lab.runtime import distribution, environment, keras_internals
from pytest_lab import hosts
from pytest_lab.cases import ExperimentCase, plain_nodeid, tagged_case


class LabSession:
    """What one pytest session selected, recorded and how each test ended; the report at the end.

    Args:
        config: the session's pytest config.
        run: the run's checked settings.
        report_dir: where the run folder and report go, or None for `--no-report`.
        earlier: the journal of the session this one resumes (`--resume`), or None.
        baseline: the results of the run `--baseline` names, or None.
    """

    def __init__(
        self, config: pytest.Config, run: RunConfig, report_dir: str | None, earlier: Journal | None = None,
        baseline: Results | None = None,
    ):
        self.config = config
        self.run = run
        self.report_dir = report_dir
        self.earlier = earlier
        self.baseline = baseline
        self.root = str(config.rootpath)
        self.started = time.time()
        # Node ids in selection order; a dict keeps the order and drops the repeats that
        # each xdist worker's own copy of the collection brings.
        self.selected: dict[str, ExperimentCase | None] = {}
        # Every test that ended, in the order it did: what the journal holds and the report shows.
        self.ended: dict[str, EndedTest] = {}
        # What the reports of a test that has not ended yet brought so far.
        self.ending: dict[str, EndedTest] = {}
        if earlier is not None:
            for test in earlier.kept():
                self.ended[test.test] = dataclasses.replace(test, earlier=True)
            self.selected.update((test, _case(case)) for test, case in earlier.selected.items())
        self.header: RunHeader | None = None
        self.run_folder: str | None = None
        self.journal: journal.JournalWriter | None = None
        self.journal_seconds = 0.0
        self.session: pytest.Session | None = None
        # What each xdist worker said of its host, and the (host, worker) of those that died.
        self.host_summaries: list[dict] = []
        # Warnings about the data, which the report lists beside the run's own.
        self.data_warnings: list[str] = []
        self.crashed: list[tuple[str, str]] = []
        self.report_seconds: float | None = None
        self.results: Results | None = None
        self.report_path: str | None = None
        self.report_error: str | None = None
        self.stop_reason: str | None = None
        self._previous_handlers: dict[int, object] = {}
        # The session is writing its report and logging it: a signal then is noted, not obeyed.
        self.finishing = False
        self.late_signal: str | None = None
        self.mlflow: tracking.SessionLog | None = None

    # Hooks: each hands off to a method below.

    def pytest_configure(self, config: pytest.Config) -> None:
        self.open_mlflow()

    def pytest_sessionstart(self, session: pytest.Session) -> None:
        self.session = session
        self.handle_signals()

    # Last: after the plugin has loaded and checked the data, so that bad data leaves no run folder.
    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.select((item.nodeid, tagged_case(item.user_properties)) for item in session.items)
        if any(case is not None for case in self.selected.values()):
            self.open_journal()

    @pytest.hookimpl(optionalhook=True)
    def pytest_xdist_node_collection_finished(self, node, ids: list[str]) -> None:
        self.select((plain_nodeid(nodeid), None) for nodeid in ids)

    @pytest.hookimpl(optionalhook=True)
    def pytest_testnodedown(self, node, error) -> None:
        self.worker_down(node)

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.add_test_report(report)

    def pytest_warning_recorded(self, warning_message, when, nodeid, location) -> None:
        self.warned(warning_message)

    def pytest_keyboard_interrupt(self, excinfo: pytest.ExceptionInfo) -> None:
        self.interrupted(excinfo.value)

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        session.exitstatus = self.finish(session.exitstatus)
        session.exitstatus = self.log_to_mlflow(session.exitstatus)

    def pytest_terminal_summary(self, terminalreporter) -> None:
        self.summarize(terminalreporter)

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        self.restore_signals()
        self.name_worse_rows(config)

    # What the hooks hand off to.

    def open_mlflow(self) -> None:
        """Checks `--mlflow`'s store before anything trains, in the process that writes the report."""
        if self.run.options.mlflow is None or not distribution.is_chief():
            return
        try:
            self.mlflow = tracking.SessionLog(self.run.options.mlflow, self.report_dir)
        except LabInputError as error:
            raise pytest.UsageError(str(error)) from None

    def handle_signals(self) -> None:
        """Makes SIGTERM (what `timeout` and CI cancellation send) stop the session as Ctrl-C
        does, and either stop it once: the report says what finished and which signal stopped it."""
        if threading.current_thread() is threading.main_thread():
            self._previous_handlers = {
                number: signal.signal(number, self._stopped) for number in STOP_REASONS
            }

    def _stopped(self, signum, frame) -> None:
        # Only the first signal stops the session, and none while the report is written: `timeout`
        # sends SIGTERM to its command and again to its process group, an impatient user presses
        # Ctrl-C twice, and a second KeyboardInterrupt raised while pytest handles the first
        # escapes it as a traceback after the report.
        if self.finishing:
            # Stopping now would leave the report half-made or MLflow's runs RUNNING for good.
            self.late_signal = self.late_signal or STOP_REASONS[signum]
            return
        if self.stop_reason is not None:
            return
        self.stop_reason = STOP_REASONS[signum]
        raise KeyboardInterrupt

    def restore_signals(self) -> None:
        """Puts back the SIGTERM and SIGINT handlers the session found."""
        for number, handler in self._previous_handlers.items():
            signal.signal(number, handler)
        self._previous_handlers = {}

    def select(self, tests) -> None:
        """Adds tests that the session selected (after `-k`, `-m` and `--deselect`) to run:
        (node id, `ExperimentCase` or None where only the id is known, as under xdist) pairs."""
        for nodeid, case in tests:
            if case is not None or nodeid not in self.selected:
                self.selected[nodeid] = case

    @property
    def outcomes(self) -> dict[str, Outcome]:
        """How each test that ended did, by node id."""
        return {test: ended.outcome for test, ended in self.ended.items()}

    def add_test_report(self, report: pytest.TestReport) -> None:
        """Takes what a test's setup, call and teardown reports bring; at its teardown (or the
        crash report of its xdist worker) the test has ended and goes to the journal."""
        case = tagged_case(report.user_properties)
        if case is not None:
            self.open_journal()
        nodeid = plain_nodeid(report.nodeid)
        test = self.ending.setdefault(nodeid, EndedTest(outcome_of(nodeid, "passed", "", case)))
        if report.when == "call":
            for kind, value in report.user_properties:
                if kind == "lab_record":
                    test.records.append(Record.from_json(value))
                elif kind == "lab_benchmark":
                    test.benchmarks.append(BenchmarkResult(**value))
                elif kind == "lab_validation_set":
                    validation_set = ValidationSet(**value)
                    if validation_set not in test.validation_sets:
                        test.validation_sets.append(validation_set)
        test.duration_seconds += report.duration
        if report.when == "teardown":
            for kind, value in report.user_properties:
                if kind == "lab_data_seconds":
                    test.data_seconds += value
                elif kind == "lab_time_split":
                    test.measured = TimeSplit(**value)
        # A failed setup or teardown decides the outcome; a passed one does not.
        decisive = report.when == "call" or not report.passed
        if decisive and test.outcome.outcome == "passed":
            reason = _reason(report)
            worker = getattr(report, "node", None)
            if report.when == "???" and worker is not None:
                reason = f"{reason} on host {worker.workerinput.get(hosts.HOST, hosts.LOCAL)}"
            test.outcome = outcome_of(nodeid, report.outcome, reason, case)
        # xdist reports a test whose worker died with `when` "???" and no teardown.
        if report.when in ("teardown", "???"):
            self.test_ended(self.ending.pop(nodeid))

    def warned(self, warning_message) -> None:
        """Keeps a warning about the data (`DataWarning`) for the report's header, once."""
        if issubclass(warning_message.category, DataWarning):
            text = self.displayed(str(warning_message.message))
            if text not in self.data_warnings:
                self.data_warnings.append(text)

    def worker_down(self, node) -> None:
        """Keeps what an xdist worker said of its host as it finished (nothing, if it died)."""
        summary = getattr(node, "workeroutput", {}).get(hosts.SUMMARY)
        if summary is not None:
            self.host_summaries.append(summary)
        else:
            self.crashed.append((node.workerinput.get(hosts.HOST, hosts.LOCAL), node.gateway.id))

    def test_ended(self, test: EndedTest) -> None:
        """Keeps a test that ended, and writes it to the journal before the next test starts.

        Where the journal cannot be written (a full disk, a folder made unwritable), the session
        stops before the next test, naming the path; what the journal holds stays readable.
        """
        self.ended.pop(test.test, None)
        self.ended[test.test] = test
        if self.journal is None:
            return
        started = time.perf_counter()
        try:
            self.journal.ended(self.displayed_test(test))
        except OSError as error:
            self.journal = None
            reason = f"cannot write the journal {self.displayed_path()} ({error.strerror or error})"
            self.stop_reason = self.stop_reason or reason
            if self.session is not None:
                self.session.shouldstop = f"{reason}: the session stops; the journal so far stays readable"
        finally:
            self.journal_seconds += time.perf_counter() - started

    def open_journal(self) -> None:
        """Makes the session's run folder and starts its journal, once: as soon as the session
        selected an experiment's test (under xdist, where the controller sees node ids only, at
        the first report that carries an experiment's case). A session of unit tests alone
        leaves no run folder behind."""
        if self.run_folder is not None or self.report_dir is None or not distribution.is_chief():
            return
        self.header = self.header or self.start_header()
        try:
            self.run_folder = writing.make_run_folder(self.report_dir, writing.report_stem(self.header, self.started))
            self.journal = journal.JournalWriter(os.path.join(self.run_folder, journal.JOURNAL_NAME))
            self.journal.start(self.header, dataclasses.asdict(self.run.options))
            self.journal.selected(
                (test, dataclasses.asdict(case) if case else None) for test, case in self.selected.items()
            )
            for test in self.ended.values():
                self.journal.ended(self.displayed_test(test))
        except OSError as error:
            raise pytest.UsageError(
                f"cannot start the session's journal in {self.displayed(self.report_dir)} ({error.strerror or error}): "
                "pass --report-dir a folder you can write, or --no-report"
            ) from None

    def displayed_path(self) -> str:
        path = os.path.join(self.run_folder or "", journal.JOURNAL_NAME)
        return self.displayed(path)

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
        self.finishing = True
        if not self.experiment_ran():
            self.close_journal(None)
            if self.run_folder is not None:
                writing.remove_run_folder(self.run_folder)
            return exitstatus
        self.results = self.collect_results(exitstatus)
        self.close_journal(self.results.run)
        if self.run.options.fail_if_worse and self.results.baseline and self.results.baseline.worse():
            exitstatus = exitstatus or pytest.ExitCode.TESTS_FAILED
        # Under --distribute multiworker every worker runs the whole session; one report is enough.
        if self.report_dir is None or not distribution.is_chief():
            return exitstatus
        started = time.perf_counter()
        latest = f"latest-{self.run.profile.name}.md"
        if self.run_folder is not None:
            self.report_path, self.report_error = writing.write_report_into(self.results, self.run_folder, latest)
        else:
            self.report_path, self.report_error = writing.write_report_once(
                self.results, self.report_dir, writing.report_stem(self.results.run, self.started), latest
            )
        self.report_seconds = time.perf_counter() - started
        if self.report_error:
            return exitstatus or pytest.ExitCode.TESTS_FAILED
        return exitstatus

    def close_journal(self, run: RunHeader | None) -> None:
        """Records the session's end (`run`, its final header) in the journal, and closes it."""
        if self.journal is None:
            return
        try:
            if run is not None:
                self.journal.end(run)
            self.journal.close()
        except OSError as error:
            reason = error.strerror or error
            self.report_error = f"cannot record the session's end in {self.displayed_path()} ({reason})"
        self.journal = None

    def log_to_mlflow(self, exitstatus: int) -> int:
        """Logs the session to MLflow once its report is written (`--mlflow`); returns the exit status,
        failed where it could not be logged, as for a report that could not be written."""
        if self.mlflow is None or self.results is None:
            return exitstatus
        seconds = {test: ended.duration_seconds for test, ended in self.ended.items()}
        if self.mlflow.log(self.results, self.report_path, seconds):
            return exitstatus
        return exitstatus or pytest.ExitCode.TESTS_FAILED

    def collect_results(self, exitstatus: int) -> Results:
        """Everything the report shows: the run's settings and machine, records, outcomes, and
        the comparisons that answer the lab's questions."""
        finished = time.time()
        outcomes = self.outcomes
        not_run = [
            outcome_of(nodeid, "not run", "the session ended before it ran", case)
            for nodeid, case in self.selected.items()
            if nodeid not in outcomes
        ]
        complete = exitstatus == 0 and not not_run
        reason = None
        if not complete:
            status = int(exitstatus)
            reason = self.stop_reason or ("some tests failed" if status == 1 else f"pytest exit status {status}")
            if not_run:
                reason += f"; {len(not_run)} tests did not run"
        header = dataclasses.replace(
            self.header or self.start_header(),
            finished=_iso(finished),
            wall_seconds=finished - self.started,
            complete=complete,
            incomplete_reason=self.displayed(reason) if reason else None,
            killed=self.stop_reason is not None,
            hosts=hosts.hosts_of(self.host_summaries, self.crashed),
        )
        header = dataclasses.replace(header, warnings=[*header.warnings, *self.data_warnings])
        ended = [self.displayed_test(test) for test in self.ended.values()]
        not_run = [dataclasses.replace(outcome, reason=self.displayed(outcome.reason)) for outcome in not_run]
        parallel = bool(self.config.getoption("numprocesses", None) or self.config.getoption("tx", None))
        results = journal.assembled(header, ended, not_run, header.wall_seconds, parallel)
        if self.baseline is not None:
            source = self.displayed(os.path.abspath(self.run.options.baseline))
            results.baseline = against_baseline(results, self.baseline, source)
        return results

    def start_header(self) -> RunHeader:
        """The report's header as the session starts: settings, machine, versions; a session the
        journal shows with this header alone was killed before it could record its end."""
        run, options = self.run, self.run.options
        device = environment.device_summary()
        return RunHeader(
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
            commit=environment.git_commit(self.root),
            versions=environment.versions(),
            device=device,
            device_slug=environment.device_slug(device),
            replicas=distribution.replicas(),
            benchmarks_note=benchmarks_note(self.config),
            warnings=[
                *environment.run_warnings(options.mixed_precision, options.deterministic, device, options.run_eagerly),
                *filter(None, [keras_internals.version_warning()]),
                *(self.earlier.warnings if self.earlier else []),
            ],
            complete=False,
            incomplete_reason=journal.KILLED,
            killed=True,
            seeds=list(run.seeds),
            training_step=environment.training_step(
                options.adam, options.xla, device, options.distribute, options.deterministic, options.run_eagerly
            ),
            resumed_from=self.earlier_session(),
        )

    def earlier_session(self) -> EarlierSession | None:
        """What the header says of the session this one resumed."""
        if self.earlier is None:
            return None
        return EarlierSession(
            journal=self.displayed(self.earlier.path),
            started=self.earlier.run.started,
            commit=self.earlier.run.commit,
            tests=len(self.earlier.kept()),
        )

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

    def displayed_test(self, test: EndedTest) -> EndedTest:
        """A test that ended as the report and the journal keep it: no absolute path of this machine."""
        return dataclasses.replace(
            test,
            records=[self.displayed_record(record) for record in test.records],
            outcome=dataclasses.replace(test.outcome, reason=self.displayed(test.outcome.reason)),
        )

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
            if self.results.baseline:
                lines += [f"baseline: {render.baseline_line(self.results.baseline)}",
                          render.differing_line(self.results.baseline),
                          *render.baseline_table(self.results.baseline.rows, "simple").splitlines()]
                if self.results.baseline.epoch_times:
                    lines += render.baseline_table(self.results.baseline.epoch_times, "simple").splitlines()
            lines += [f"warning: {warning}" for warning in self.results.run.warnings]
            if self.results.time_split:
                lines.append(
                    writing.time_split_line(self.results.time_split, self.report_seconds, self.journal_seconds)
                )
            earlier = self.results.run.resumed_from
            if earlier:
                lines.append(f"resumed {earlier.journal}: {earlier.tests} tests taken from it, the rest run here")
            note = self.results.run.benchmarks_note
            if note and any(findings.is_epoch_time_case(outcome) for outcome in self.outcomes.values()):
                lines.append(f"epoch-time benchmarks: {note}")
        if self.report_path:
            lines.append(f"report: {os.path.relpath(self.report_path)}")
        if self.report_error:
            lines.append(self.report_error)
        if self.mlflow and self.mlflow.summary:
            lines.append(self.mlflow.summary)
        if self.late_signal:
            lines.append(f"{self.late_signal} while the report was written and logged: both were finished first")
        if lines:
            terminalreporter.section("transfer-learning lab")
            for line in lines:
                terminalreporter.write_line(line)


    def name_worse_rows(self, config: pytest.Config) -> None:
        """With `--fail-if-worse`, the terminal's last lines: the rows that failed the session."""
        baseline_results = self.results and self.results.baseline
        if not (self.run.options.fail_if_worse and baseline_results and baseline_results.worse()):
            return
        terminal = config.pluginmanager.get_plugin("terminalreporter")
        if terminal is None:
            return
        worse = baseline_results.worse()
        terminal.write_line(f"--fail-if-worse: {len(worse)} rows worse than the baseline, so the session failed:")
        for row in worse:
            comparison = row.comparison
            terminal.write_line(
                f"  {row.row}: {row.this_run} against {row.baseline} "
                f"({comparison.effect:+.3f}, p {comparison.p_adjusted or comparison.p_value:.3g})"
            )


def outcome_of(nodeid: str, outcome: str, reason: str, case: ExperimentCase | None) -> Outcome:
    """An `Outcome`, with its experiment and parameters where the test is one of an experiment."""
    if case is None:
        return Outcome(nodeid, outcome, reason)
    return Outcome(nodeid, outcome, reason, case.experiment, case.parameters)


# The signals that stop a session, and what its report then says.
STOP_REASONS = {signal.SIGTERM: "terminated (SIGTERM)", signal.SIGINT: "interrupted (Ctrl-C)"}


def _case(case: dict | None) -> ExperimentCase | None:
    return ExperimentCase(**case) if case else None


def benchmarks_note(config: pytest.Config) -> str | None:
    """Why this run has no epoch times, or what its epoch times carry, where its options say."""
    if config.getoption("benchmark_disable", False):
        return "benchmarks disabled with --benchmark-disable"
    workers = (config.getoption("numprocesses", None) or 0) + len(config.getoption("tx", None) or [])
    if config.pluginmanager.hasplugin("xdist") and workers > 1:
        return (
            "timed in pytest-xdist workers: where other workers of the same host ran during a timing, they shared "
            "its cores (and memory bandwidth), so those epoch times carry their load; one worker per host, or per "
            "GPU of a GPU host, is the clean case"
        )
    return None


def _reason(report: pytest.TestReport) -> str:
    timed_out = re.search(TIMEOUT_MESSAGE, report.longreprtext) if report.failed else None
    if timed_out:
        return f"timed out: over its {float(timed_out.group(1)):g} s limit (--timeout)"
    if report.skipped and isinstance(report.longrepr, tuple):
        # pytest's own prefix: the outcome column already says "skipped".
        return report.longrepr[2].removeprefix("Skipped: ")
    if report.failed and report.longreprtext:
        return report.longreprtext.strip().splitlines()[-1][:300]
    return ""


# pytest-timeout's failure message (its `signal` method; its `thread` method ends the process).
TIMEOUT_MESSAGE = r"Timeout \(>([0-9.]+)s\) from pytest-timeout"


def _iso(timestamp: float) -> str:
    return datetime.datetime.fromtimestamp(timestamp, datetime.UTC).isoformat(timespec="seconds")

"""A session's journal: one JSON line per test that ended, durable before the next test starts.

A session that SIGKILL, the OOM killer or a preempted machine ends cannot write its report;
its journal keeps every test that had ended. The run folder holds it from the session's start:

    {"kind": "start", "format": 1, "run": {...}, "options": {...}}   the header, the options as given
    {"kind": "selected", "tests": [{"test": ID, "case": {...}}]}      what the session selected
    {"kind": "test", "test": ID, "outcome": {...}, "records": [...]}  one per test that ended
    {"kind": "end", "run": {...}}                                   the header once the session ended

A line is written whole, flushed and fsynced (durable once `os.fsync` returns); a process killed
mid-write can leave a torn last line, which `read_journal` skips with a warning. `results_of`
turns a journal into the `Results` a report is rendered from, for `python -m lab.report RUN`, and
`--resume RUN` takes its passed and skipped tests into a new session (`resume_problems`).
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable

from lab.errors import LabInputError
from lab.report import findings
from lab.report.results import (
    BenchmarkResult,
    Outcome,
    Record,
    Results,
    ResultsFormatError,
    RunHeader,
    TimeSplit,
    ValidationSet,
)
from lab.runtime import timesplit

FORMAT = 1
JOURNAL_NAME = "journal.jsonl"
# The reason a report from a journal with no end line gives.
KILLED = "the session was killed (no end recorded)"
# Outcomes a resumed session takes from the journal; every other test runs again.
KEPT_OUTCOMES = ("passed", "skipped")


class JournalError(LabInputError):
    """A journal that cannot be read, or that a session cannot resume."""


@dataclasses.dataclass
class EndedTest:
    """What a session keeps of one test that ended: one line of the journal.

    Args:
        outcome: how it ended, with its experiment and parameters.
        records: the rows it recorded, with their predictions.
        benchmarks: its epoch-time statistics (experiment 4).
        validation_sets: the validation sets its records predicted.
        duration_seconds: pytest's durations of its setup, call and teardown.
        data_seconds: loading the datasets it was the first to need.
        measured: what its fits and predictions measured (`lab.runtime.timesplit`); None for a
            test of no experiment.
        earlier: it ended in an earlier session that this one resumed.
    """

    outcome: Outcome
    records: list[Record] = dataclasses.field(default_factory=list)
    benchmarks: list[BenchmarkResult] = dataclasses.field(default_factory=list)
    validation_sets: list[ValidationSet] = dataclasses.field(default_factory=list)
    duration_seconds: float = 0.0
    data_seconds: float = 0.0
    measured: TimeSplit | None = None
    earlier: bool = False

    @property
    def test(self) -> str:
        return self.outcome.test

    def to_json(self) -> dict:
        return {"kind": "test", "test": self.test, **dataclasses.asdict(self)}

    @classmethod
    def from_json(cls, item: dict) -> EndedTest:
        measured = item.get("measured")
        return cls(
            outcome=Outcome(**item["outcome"]),
            records=[Record.from_json(record) for record in item.get("records", [])],
            benchmarks=[BenchmarkResult(**benchmark) for benchmark in item.get("benchmarks", [])],
            validation_sets=[ValidationSet(**validation) for validation in item.get("validation_sets", [])],
            duration_seconds=item.get("duration_seconds", 0.0),
            data_seconds=item.get("data_seconds", 0.0),
            measured=TimeSplit(**measured) if measured else None,
            earlier=item.get("earlier", False),
        )


@dataclasses.dataclass
class Journal:
    """A journal as read back.

    Args:
        path: the journal file.
        run: the header the session wrote at its start, or at its end where it ended.
        options: every lab option as the session was given it (`lab.options.Options` fields).
        selected: the tests the session selected, in order, with their experiment case (None
            where only the id is known) as plain JSON.
        ended: every test that ended, by node id, in the order they ended.
        end_recorded: the session ended and said so (no kill).
        warnings: what reading skipped (a torn last line).
    """

    path: str
    run: RunHeader
    options: dict
    selected: dict[str, dict | None]
    ended: dict[str, EndedTest]
    end_recorded: bool
    warnings: list[str]

    def validation_digests(self) -> dict[str, str | None]:
        """Validation set name -> the digest of its images, of every set the journal's tests predicted."""
        return {
            validation_set.name: validation_set.images_digest
            for test in self.ended.values()
            for validation_set in test.validation_sets
        }

    def kept(self) -> list[EndedTest]:
        """The tests a resumed session takes from this journal: those that passed or were skipped."""
        return [test for test in self.ended.values() if test.outcome.outcome in KEPT_OUTCOMES]


class JournalWriter:
    """Appends lines to a journal, each durable (flushed and fsynced) before `append` returns.

    Raises OSError from `append` where the disk is full or the folder unwritable; the lines
    before stay readable.
    """

    def __init__(self, path: str):
        self.path = path
        # Line-buffered text would flush on every newline anyway; one write per line keeps a
        # line whole unless the process dies inside that very write.
        self._stream = open(path, "a", encoding="utf-8")  # noqa: SIM115 (open for the session's life)

    def append(self, line: dict) -> None:
        self._stream.write(json.dumps(line, separators=(",", ":")) + "\n")
        self._stream.flush()
        os.fsync(self._stream.fileno())

    def start(self, run: RunHeader, options: dict) -> None:
        self.append({"kind": "start", "format": FORMAT, "run": dataclasses.asdict(run), "options": options})

    def selected(self, tests: Iterable[tuple[str, dict | None]]) -> None:
        self.append({"kind": "selected", "tests": [{"test": test, "case": case} for test, case in tests]})

    def ended(self, test: EndedTest) -> None:
        self.append(test.to_json())

    def end(self, run: RunHeader) -> None:
        self.append({"kind": "end", "run": dataclasses.asdict(run)})

    def close(self) -> None:
        self._stream.close()


def journal_path(run: str) -> str:
    """The journal of `run`: a run folder (its journal.jsonl) or the journal file itself."""
    # `--resume=~/...` reaches here unexpanded: the shell expands `~` only at a word's start.
    run = os.path.expanduser(run)
    return os.path.join(run, JOURNAL_NAME) if os.path.isdir(run) else run


def read_journal(run: str) -> Journal:
    """Reads the journal of a run folder, or a journal file.

    Raises:
        JournalError: there is no journal, it cannot be read, it is of a newer format, or a line
            other than the last is not JSON; the message says which.
    """
    path = journal_path(run)
    if not os.path.exists(path):
        raise JournalError(f"{run} holds no {JOURNAL_NAME}: give a run folder that a session of this suite wrote "
                           "(reports/<run>/) or its journal")
    try:
        with open(path, encoding="utf-8") as stream:
            lines = stream.read().split("\n")
    except (OSError, UnicodeDecodeError) as error:
        raise JournalError(f"cannot read the journal {path} ({getattr(error, 'strerror', None) or error})") from None
    # A journal ends with a newline; a last piece without one is a line the session did not finish.
    *whole, last = lines
    warnings = []
    if last.strip():
        warnings.append(f"{path}: skipped its torn last line (the session was killed while writing it)")
    parsed = []
    for number, line in enumerate(whole, start=1):
        try:
            parsed.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(whole) and not last.strip():
                warnings.append(f"{path}: skipped its torn last line (the session was killed while writing it)")
                continue
            raise JournalError(f"the journal {path} is damaged at line {number}: not JSON") from None
    return _journal(path, parsed, warnings)


def _journal(path: str, lines: list, warnings: list[str]) -> Journal:
    if not lines or not isinstance(lines[0], dict) or lines[0].get("kind") != "start":
        raise JournalError(f"{path} is not a journal of this suite: it does not begin with the session's start")
    start = lines[0]
    if not isinstance(start.get("format"), int) or start["format"] > FORMAT:
        raise JournalError(
            f"the journal {path} is of format {start.get('format')}, newer than this checkout's {FORMAT}: "
            "resume it with the checkout that wrote it"
        )
    try:
        run = RunHeader.from_json(start["run"])
        selected: dict[str, dict | None] = {}
        ended: dict[str, EndedTest] = {}
        end_recorded = False
        for line in lines[1:]:
            kind = line.get("kind")
            if kind == "selected":
                selected.update((test["test"], test["case"]) for test in line["tests"])
            elif kind == "test":
                ended[line["test"]] = EndedTest.from_json(line)
            elif kind == "end":
                run = RunHeader.from_json(line["run"])
                end_recorded = True
    except (KeyError, TypeError, AttributeError, ResultsFormatError) as error:
        raise JournalError(f"the journal {path} has a line this checkout cannot read ({error!r})") from None
    return Journal(path, run, start.get("options", {}), selected, ended, end_recorded, warnings)


def results_of(journal: Journal, wall_seconds: float | None = None, parallel: bool = False) -> Results:
    """The results a report shows of what `journal` holds: every test that ended, the selected
    tests that did not, and, where the session recorded no end, a header that says it was killed.

    Args:
        journal: the journal read back.
        wall_seconds: the session's wall time, where known (the time split's rest needs it).
        parallel: the tests ran in several xdist workers at once.
    """
    run = journal.run
    not_run = [
        Outcome(test, "not run", "the session was killed before it ended", *_case(case))
        for test, case in journal.selected.items()
        if test not in journal.ended
    ]
    if not journal.end_recorded:
        reason = KILLED + (f"; {len(not_run)} tests did not run" if not_run else "")
        run = dataclasses.replace(run, complete=False, incomplete_reason=reason, killed=True)
    ended = list(journal.ended.values())
    if wall_seconds is None:
        wall_seconds = sum(test.duration_seconds for test in ended if not test.earlier)
    return assembled(run, ended, not_run, wall_seconds, parallel)


def assembled(
    run: RunHeader, ended: list[EndedTest], not_run: list[Outcome], wall_seconds: float, parallel: bool
) -> Results:
    """The results of a session: its header, the tests that ended (in order), those selected that
    did not, the comparisons that answer the lab's questions, and where this session's time went
    (tests an earlier, resumed session ran are not in it).

    Args:
        run: the session's header.
        ended: every test that ended.
        not_run: the selected tests that did not, as outcomes.
        wall_seconds: the session's wall time.
        parallel: the tests ran in several xdist workers at once.
    """
    validation_sets: dict[str, ValidationSet] = {}
    for test in ended:
        for validation_set in test.validation_sets:
            validation_sets.setdefault(validation_set.name, validation_set)
    results = Results(
        run=run,
        records=[record for test in ended for record in test.records],
        benchmarks=[benchmark for test in ended for benchmark in test.benchmarks],
        outcomes=[*(test.outcome for test in ended), *not_run],
        validation_sets=list(validation_sets.values()),
    )
    results.comparisons = findings.comparisons(results)
    seconds = [
        timesplit.SecondsOfTest(test.measured, test.duration_seconds, test.data_seconds)
        for test in ended
        if not test.earlier
    ]
    results.time_split = timesplit.session_split(seconds, wall_seconds, parallel=parallel)
    return results


def _case(case: dict | None) -> tuple:
    return () if case is None else (case["experiment"], case["parameters"])


@dataclasses.dataclass(frozen=True)
class ResumeTerms:
    """What must be the same for a session to resume a journal: whatever changes a result.

    Args:
        profile: the profile's name.
        seeds: every seed the session runs.
        options: option flag -> value, for every option that changes a result.
        versions: library -> version.
    """

    profile: str
    seeds: tuple[int, ...]
    options: dict[str, object]
    versions: dict[str, str]


def resume_problems(journal: Journal, earlier: ResumeTerms, now: ResumeTerms) -> list[str]:
    """Every difference between the session that wrote `journal` and this one that would make a
    resumed test compute something other than it would have; empty where it can resume."""
    problems = []
    if earlier.profile != now.profile:
        problems.append(f"--profile: the journal's {earlier.profile}, this session's {now.profile}")
    if tuple(earlier.seeds) != tuple(now.seeds):
        problems.append(
            f"--seeds: the journal ran {_listed(earlier.seeds)}, this session runs {_listed(now.seeds)}"
        )
    for flag in dict.fromkeys([*earlier.options, *now.options]):
        before, after = earlier.options.get(flag), now.options.get(flag)
        if before != after:
            problems.append(f"{flag}: the journal's {_shown(before)}, this session's {_shown(after)}")
    for library in dict.fromkeys([*earlier.versions, *now.versions]):
        before, after = earlier.versions.get(library), now.versions.get(library)
        if before != after:
            problems.append(f"{library}: the journal's {before or 'none'}, this session's {after or 'none'}")
    return problems


def _listed(seeds: Iterable[int]) -> str:
    return ",".join(map(str, seeds))


def _shown(value: object) -> str:
    return "not given" if value is None or value is False else ("given" if value is True else str(value))

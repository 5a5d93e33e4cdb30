"""Where a session's time goes: tracing, training and evaluation as the lab's own fits and
predictions measure them, and their sum per experiment.

A test runs inside `measuring(experiment)`; `lab.networks.training.fit` and `predicted_classes` add
their seconds to the `TimeSplit` measured there (outside it, in a notebook, they add nothing).
The session adds what only pytest knows (each test's durations, the data loaded for it) and
sums the tests of each experiment with `session_split`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import statistics
import time
from collections.abc import Iterable, Iterator, Sequence

from lab.measurements import TimeSplit

_measured: contextvars.ContextVar[TimeSplit | None] = contextvars.ContextVar("lab_time_split", default=None)


@dataclasses.dataclass
class SecondsOfTest:
    """What a session knows of one test's seconds.

    Args:
        measured: what its fits and predictions measured (`measuring`), with its experiment;
            None for a test that is not an experiment (a unit test).
        duration_seconds: pytest's durations of its setup, call and teardown.
        data_seconds: loading the datasets it was the first to need (outside its durations).
    """

    measured: TimeSplit | None
    duration_seconds: float = 0.0
    data_seconds: float = 0.0


@contextlib.contextmanager
def measuring(experiment: int) -> Iterator[TimeSplit]:
    """Collects the tracing, training and evaluation seconds reported while inside into a new `TimeSplit`."""
    split = TimeSplit(experiment)
    token = _measured.set(split)
    try:
        yield split
    finally:
        _measured.reset(token)


def fit_seconds(epoch_seconds: Sequence[float]) -> tuple[float, float]:
    """(tracing, training) seconds of one fit's epochs.

    Tracing is the first epoch's excess over the median later epoch (never below zero); the
    rest is training. A one-epoch fit cannot tell them apart: all of it counts as training.
    """
    total = float(sum(epoch_seconds))
    if len(epoch_seconds) < 2:
        return 0.0, total
    tracing = max(0.0, epoch_seconds[0] - statistics.median(epoch_seconds[1:]))
    return tracing, total - tracing


def add_fit(epoch_seconds: Sequence[float]) -> None:
    """Adds one fit's epochs to the test being measured, if any."""
    split = _measured.get()
    if split is None:
        return
    tracing, training = fit_seconds(epoch_seconds)
    split.tracing_seconds += tracing
    split.training_seconds += training


@contextlib.contextmanager
def evaluating() -> Iterator[None]:
    """Adds the seconds spent inside to the measured test's evaluation, if a test is measured."""
    started = time.perf_counter()
    try:
        yield
    finally:
        split = _measured.get()
        if split is not None:
            split.evaluation_seconds += time.perf_counter() - started


def session_split(tests: Iterable[SecondsOfTest], wall_seconds: float, parallel: bool = False) -> list[TimeSplit]:
    """Each experiment's time split, then the rest of the session's wall time.

    An experiment's `other_seconds` is its tests' durations less what its fits and
    predictions measured; the rest of the session (start-up, collection, unit tests and the
    session's own work until its results are collected) is the wall time less every
    experiment's total, all of it `other_seconds` but the data loaded for no experiment.

    Args:
        tests: every test that ran.
        wall_seconds: the session's wall time so far.
        parallel: tests ran on several xdist workers at once; their seconds then add up to
            more than the wall time, and no rest of the session is given.
    """
    by_experiment: dict[int, TimeSplit] = {}
    unmeasured_data = 0.0
    for test in tests:
        if test.measured is None or test.measured.experiment is None:
            unmeasured_data += test.data_seconds
            continue
        measured = test.measured
        split = by_experiment.setdefault(measured.experiment, TimeSplit(measured.experiment))
        split.data_seconds += test.data_seconds
        split.tracing_seconds += measured.tracing_seconds
        split.training_seconds += measured.training_seconds
        split.evaluation_seconds += measured.evaluation_seconds
        split.other_seconds += (
            test.duration_seconds - measured.tracing_seconds - measured.training_seconds - measured.evaluation_seconds
        )
    splits = [by_experiment[number] for number in sorted(by_experiment)]
    if parallel:
        return splits
    rest = wall_seconds - sum(split.total_seconds for split in splits)
    return [*splits, TimeSplit(None, data_seconds=unmeasured_data, other_seconds=rest - unmeasured_data)]


def total(splits: Iterable[TimeSplit]) -> TimeSplit:
    """The sum of several splits, part by part (its `experiment` is None)."""
    fields = [field.name for field in dataclasses.fields(TimeSplit) if field.name != "experiment"]
    splits = list(splits)
    return TimeSplit(None, **{name: sum(getattr(split, name) for split in splits) for name in fields})

"""Did my change make it worse? This session's rows against the same rows of an earlier run.

Every accuracy row of this session is paired with the baseline's row of the same experiment,
table and key columns, on the same validation images (their digests, or where an older run kept
none, their names and labels). The verdict is a paired test on those images:

- the same seeds on both sides: seed by seed and image by image (`compare_correctness`: one
  seed's McNemar test, several seeds' two-way interval);
- other seeds: each side's seeds are independent training runs of that side, scored on shared
  images (`independent_seed_intervals`); one seed on each side is McNemar's test of those two
  trained models, which cannot tell a change from a retraining.

The p-values are Holm-adjusted over the session's rows, so the chance that a session drawn from
the same population as the baseline (same settings, other seeds, same images) calls any row
worse stays below 5% (`tests/test_baseline.py` simulates it). Experiment 4's epoch times are set
against the baseline's as ratios, reported and never gating: they were timed in other processes,
perhaps on another load.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import numpy as np

from lab.errors import LabInputError
from lab.report import findings, statistics
from lab.report.results import (
    BETTER,
    WORSE,
    Baseline,
    BaselineRow,
    Record,
    Results,
    ValidationSet,
)
from lab.report.statistics import Comparison

THIS_RUN, THE_BASELINE = "this run", "the baseline"
# Options that say where things go or how the comparison runs, not what was measured (the seeds
# are listed as the runs resolved them).
NOT_THE_CHANGE = ("--baseline", "--fail-if-worse", "--report-dir", "--no-report", "--mlflow", "--resume",
                  "--tensorboard", "--worker-timeout", "--seed", "--seeds")


def against_baseline(results: Results, baseline: Results, source: str) -> Baseline:
    """This session's rows and epoch times set against `baseline`'s.

    Args:
        results: this session's results.
        baseline: the earlier run's.
        source: where the baseline was read from, as the report shows it.
    """
    ours, theirs = _rows(results), _rows(baseline)
    rows = []
    for identity in dict.fromkeys([*ours, *theirs]):
        rows.append(_row(identity, ours.get(identity, []), results, theirs.get(identity, []), baseline))
    compared = statistics.adjusted_for_family([row.comparison for row in rows])
    rows = [
        dataclasses.replace(row, comparison=_named(comparison)) for row, comparison in zip(rows, compared, strict=True)
    ]
    return Baseline(
        source=source,
        started=baseline.run.started,
        commit=baseline.run.commit,
        differing=differing_settings(results, baseline),
        rows=rows,
        epoch_times=_epoch_times(results, baseline),
    )


def differing_settings(results: Results, baseline: Results) -> list[str]:
    """Every setting of the two runs that differs, `--epochs 2 / 8` (this run / the baseline)."""
    settings = {"--profile": (results.run.profile, baseline.run.profile),
                "seeds": (_seeds(results), _seeds(baseline))}
    for flag in dict.fromkeys([*results.run.options, *baseline.run.options]):
        if flag in NOT_THE_CHANGE:
            continue
        settings[flag] = (results.run.options.get(flag, "(default)"), baseline.run.options.get(flag, "(default)"))
    return [f"{name} {this or 'given'} / {that or 'given'}".replace("  ", " ")
            for name, (this, that) in settings.items() if this != that]


def shares_validation_images(baseline: Results, digests: set[str]) -> bool:
    """Whether the baseline predicted any of the validation images whose digests are given."""
    return any(validation_set.images_digest in digests for validation_set in baseline.validation_sets)


def _seeds(results: Results) -> str:
    return ",".join(map(str, results.run.seeds or [results.run.seed]))


def _rows(results: Results) -> dict[tuple, list[Record]]:
    """Accuracy records by (experiment, table, key values), each group in seed order."""
    grouped: dict[tuple, list[Record]] = defaultdict(list)
    for record in results.records:
        if record.accuracy() is not None:
            grouped[(record.experiment, record.table, record.key())].append(record)
    for records in grouped.values():
        records.sort(key=lambda record: record.seed or 0)
    return grouped


def _row(identity: tuple, ours: list[Record], results: Results, theirs: list[Record], baseline: Results) -> BaselineRow:
    experiment, table, key = identity
    name = f"Experiment {experiment}, {table}: {', '.join(key)}"

    accuracies = _accuracy_text(ours, results), _accuracy_text(theirs, baseline)

    def skipped(reason: str) -> BaselineRow:
        return BaselineRow(experiment, name, *accuracies, statistics.not_compared(name, THIS_RUN, THE_BASELINE, reason))

    if not ours:
        return skipped("this run has no such row")
    if not theirs:
        return skipped("the baseline has no such row")
    our_sets, their_sets = _validation_sets(ours, results), _validation_sets(theirs, baseline)
    if None in their_sets or any(record.predictions is None for record in theirs):
        return skipped("the baseline kept no predictions for it")
    if None in our_sets or any(record.predictions is None for record in ours):
        return skipped("this run kept no predictions for it")
    if len({entry.name for entry in our_sets}) > 1 or len({entry.name for entry in their_sets}) > 1:
        return skipped("each seed drew its own split (--split-per-seed): no images to pair")
    if not _same_images(our_sets[0], their_sets[0]):
        return skipped("other validation images")
    our_correct = findings.correctness_of(ours, results.validation_sets)
    their_correct = findings.correctness_of(theirs, baseline.validation_sets)
    return BaselineRow(experiment, name, *accuracies, _compare(name, ours, our_correct, theirs, their_correct))


def _compare(name: str, ours: list[Record], our_correct, theirs: list[Record], their_correct) -> Comparison:
    our_seeds, their_seeds = [record.seed for record in ours], [record.seed for record in theirs]
    try:
        if our_seeds == their_seeds or (len(ours) == 1 and len(theirs) == 1):
            comparison = statistics.compare_correctness(name, THIS_RUN, our_correct, THE_BASELINE, their_correct)
            if len(ours) == 1:
                comparison = dataclasses.replace(
                    comparison, method=comparison.method + "; one seed each: these two trained models, so a change "
                    "that only perturbs training looks like a change",
                )
            return comparison
        intervals = statistics.independent_seed_intervals(
            np.stack(our_correct.per_seed), np.stack(their_correct.per_seed)
        )
    except LabInputError as error:
        return statistics.not_compared(name, THIS_RUN, THE_BASELINE, str(error))
    effect, p_value = float(intervals.mean), float(intervals.p_value)
    return Comparison(
        name, THIS_RUN, THE_BASELINE, "difference", effect, float(intervals.low), float(intervals.high), p_value,
        f"two-way t-test, seeds {_listed(our_seeds)} against {_listed(their_seeds)} as independent training runs",
        statistics.NO_DIFFERENCE if p_value >= statistics.ALPHA or effect == 0 else (BETTER if effect > 0 else WORSE),
        n_seeds=len(ours), n_images=our_correct.n_images, detectable=float(intervals.detectable()),
        standard_error=float(intervals.standard_error), df=float(intervals.df),
    )


def _named(comparison: Comparison) -> Comparison:
    """The verdict said of this run: `worse than the baseline`, `better than the baseline`."""
    if comparison.verdict == f"{THIS_RUN} better than {THE_BASELINE}":
        return dataclasses.replace(comparison, verdict=BETTER)
    if comparison.verdict == f"{THE_BASELINE} better than {THIS_RUN}":
        return dataclasses.replace(comparison, verdict=WORSE)
    return comparison


def _epoch_times(results: Results, baseline: Results) -> list[BaselineRow]:
    theirs = {(benchmark.backbone, benchmark.mode): benchmark for benchmark in baseline.benchmarks}
    rows = []
    for benchmark in results.benchmarks:
        earlier = theirs.get((benchmark.backbone, benchmark.mode))
        if earlier is None or not benchmark.round_seconds or not earlier.round_seconds:
            continue
        name = f"Experiment 4, {benchmark.backbone}, {benchmark.mode} epoch"
        try:
            comparison = statistics.compare_times(
                name, THIS_RUN, benchmark.round_seconds, THE_BASELINE, earlier.round_seconds
            )
        except LabInputError as error:
            comparison = statistics.not_compared(name, THIS_RUN, THE_BASELINE, str(error))
        rows.append(BaselineRow(4, name, f"{benchmark.median:.3f} s", f"{earlier.median:.3f} s", comparison))
    return rows


def _validation_sets(records: list[Record], results: Results) -> list[ValidationSet | None]:
    by_name = {validation_set.name: validation_set for validation_set in results.validation_sets}
    return [by_name.get(record.validation_set) for record in records]


def _same_images(ours: ValidationSet, theirs: ValidationSet) -> bool:
    if ours.images_digest and theirs.images_digest:
        return ours.images_digest == theirs.images_digest
    # An older run kept no digest: its set's name (source, size, count) and labels must match.
    return ours.name == theirs.name and ours.labels == theirs.labels


def _accuracy_text(records: list[Record], results: Results) -> str:
    if not records:
        return "-"
    correctness = findings.correctness_of(records, results.validation_sets)
    if correctness is None:
        return f"{np.mean([record.accuracy() for record in records]):.3f}"
    try:
        return statistics.estimate_accuracy(correctness).text()
    except LabInputError:
        return "-"


def _listed(seeds) -> str:
    return ",".join(str(seed) for seed in seeds)

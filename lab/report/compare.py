"""Two runs side by side: their settings, with a warning where they differ, then every measured
figure of each table row, paired by the table's key columns.

Each validation accuracy both runs measured is then set against its 95% interval in each run:
the runs differ beyond their intervals when the two intervals do not overlap. Where the
validation images match, B's rows are then set against A's as `--baseline` does (paired on the
images: two intervals can overlap while the paired difference is clear).

Rows pair by what identifies them (backbone, strategy, weights...), never by settings such as
input size or number of images: a CPU smoke run and a GPU full run of the same backbone pair
up, and the settings that differ are listed under the table. Rows only one run has are listed
with `-` on the other side.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict

from tabulate import tabulate

from lab.errors import LabInputError
from lab.report import findings, statistics
from lab.report.baseline import NOT_THE_CHANGE, against_baseline
from lab.report.render import (
    BENCHMARK_EXPERIMENT,
    banners,
    baseline_table,
    benchmark_rows,
    cell,
    is_measurement,
    public_text,
)
from lab.report.results import ACCURACY_COLUMNS, Results, RunHeader
from lab.report.statistics import Estimate

EPOCH_TIME_TABLE = "Seconds per epoch"
EPOCH_TIME_KEYS = ("backbone",)


@dataclasses.dataclass
class Case:
    """One row of one table in one run (the mean of its records when seeds repeat it).

    Args:
        experiment: 1..5.
        table: the table's title.
        name: the values of the table's key columns.
        figures: measured column -> value (the mean over `count` records).
        settings: every other column that is not a key -> its text.
        count: how many records the row stands for.
    """

    experiment: int
    table: str
    name: str
    figures: dict[str, float]
    settings: dict[str, str]
    count: int = 1


def compare(first: Results, second: Results) -> str:
    """Markdown: both runs' settings, warnings where they differ, and every figure side by side."""
    a, b = cases(first), cases(second)
    rows, setting_notes = [], []
    counts = {"both": 0, "A": 0, "B": 0}
    for identity in sorted(dict.fromkeys([*a, *b]), key=lambda identity: identity[0]):
        case_a, case_b = a.get(identity), b.get(identity)
        case = case_a or case_b
        name = case.name
        if max(present.count for present in (case_a, case_b) if present) > 1:
            name += f" (mean of {case_a.count if case_a else 0} / {case_b.count if case_b else 0})"
        figures_a = case_a.figures if case_a else {}
        figures_b = case_b.figures if case_b else {}
        for figure in dict.fromkeys([*figures_a, *figures_b]):
            value_a, value_b = figures_a.get(figure), figures_b.get(figure)
            counts["both" if value_a is not None and value_b is not None else "A" if value_b is None else "B"] += 1
            rows.append([f"Experiment {case.experiment}", case.table, name, figure, *_side_by_side(value_a, value_b)])
        if case_a and case_b:
            differing = [
                f"{column} {case_a.settings[column]} / {case_b.settings[column]}"
                for column in case_a.settings
                if column in case_b.settings and case_a.settings[column] != case_b.settings[column]
            ]
            if differing:
                setting_notes.append(f"- Experiment {case.experiment}, {case.table}, {name}: {'; '.join(differing)}")
    table = tabulate(
        rows, headers=["experiment", "table", "case", "figure", "A", "B", "B - A", "B / A"],
        tablefmt="github", disable_numparse=True,
    )
    lines = ["# A against B", "", settings_table(first, second), ""]
    lines += [line for warning in settings_warnings(first, second) for line in (f"> {warning}", "")]
    lines += [table, "", f"{counts['both']} figures in both runs; {counts['A']} only in A, {counts['B']} only in B."]
    if setting_notes:
        lines += ["", "Paired rows measured under different settings (A / B):", "", *setting_notes]
    lines += _interval_section(accuracy_estimates(first), accuracy_estimates(second), a)
    lines += _paired_section(first, second)
    return "\n".join(lines) + "\n"


def _paired_section(first: Results, second: Results) -> list[str]:
    """B's rows against A's as against a baseline (`pytest --baseline A`): paired verdicts where the
    validation images match, which intervals side by side cannot give."""
    paired = against_baseline(second, first, "A")
    if not paired.rows:
        return []
    lines = [
        "", "## B against A, paired on the same validation images", "",
        "As `pytest --baseline A` would set B's rows against A's: \"this run\" is B, \"the baseline\" A.", "",
        baseline_table(paired.rows),
    ]
    if paired.epoch_times:
        lines += ["", baseline_table(paired.epoch_times)]
    return lines


def accuracy_estimates(results: Results) -> dict[tuple, dict[str, Estimate]]:
    """Every validation accuracy of a run with its 95% interval, by (experiment, table, key values)
    as `cases` identifies rows: one seed's Wilson interval, or several seeds' over images and seeds."""
    grouped: dict[tuple, list] = defaultdict(list)
    for record in results.records:
        if record.accuracy() is not None and record.validation_images:
            grouped[(record.experiment, record.table, record.key())].append(record)
    estimates: dict[tuple, dict[str, Estimate]] = defaultdict(dict)
    for identity, records in grouped.items():
        records.sort(key=lambda record: record.seed or 0)
        correctness = findings.correctness_of(records, results.validation_sets)
        if correctness is None and len(records) == 1:
            try:
                correctness = statistics.Correctness.from_count(records[0].accuracy(), records[0].validation_images)
            except LabInputError:
                continue
        if correctness is not None:
            column = next(column for column in ACCURACY_COLUMNS if records[0].row.get(column) is not None)
            estimates[identity][column] = statistics.estimate_accuracy(correctness)
    return estimates


def differ_beyond_intervals(a: Estimate, b: Estimate) -> str:
    """Whether two runs' estimates of one accuracy differ beyond their 95% intervals, in words."""
    if a.low > b.high:
        return "yes: A higher"
    if b.low > a.high:
        return "yes: B higher"
    return "no: the intervals overlap"


def _interval_section(estimates_a: dict, estimates_b: dict, cases_a: dict[tuple, Case]) -> list[str]:
    rows = [
        [f"Experiment {identity[0]}", identity[1], cases_a[identity].name, column,
         estimate.text(), estimates_b[identity][column].text(),
         differ_beyond_intervals(estimate, estimates_b[identity][column])]
        for identity, by_column in estimates_a.items()
        if identity in estimates_b and identity in cases_a
        for column, estimate in by_column.items()
        if column in estimates_b[identity]
    ]
    if not rows:
        return []
    return [
        "", "## Accuracies against their 95% intervals", "",
        "Each cell is `value (low..high)`: one seed's binomial interval over its validation images, or several "
        "seeds' interval over images and seeds (`lab/report/statistics.py`). Runs differ beyond their intervals where "
        "these do not overlap.",
        "",
        tabulate(rows, headers=["experiment", "table", "case", "figure", "A", "B", "differ beyond intervals?"],
                 tablefmt="github", disable_numparse=True),
    ]


def cases(results: Results) -> dict[tuple, Case]:
    """Every table row of a run, by (experiment, table, key values); repeated keys averaged."""
    grouped: dict[tuple, list[tuple[dict, tuple[str, ...]]]] = defaultdict(list)
    for record in results.records:
        keys = record.keys or tuple(column for column in record.row if not is_measurement(column))
        grouped[(record.experiment, record.table, tuple(str(record.row.get(column)) for column in keys))].append(
            (record.row, keys)
        )
    for row in benchmark_rows(results.benchmarks):
        identity = (BENCHMARK_EXPERIMENT, EPOCH_TIME_TABLE, tuple(str(row[column]) for column in EPOCH_TIME_KEYS))
        grouped[identity].append((row, EPOCH_TIME_KEYS))
    return {identity: _case(identity, rows) for identity, rows in grouped.items()}


def settings_table(first: Results, second: Results) -> str:
    """The two runs' date, machine and every setting that shapes their figures."""
    run_a, run_b = first.run, second.run
    rows = [("finished (UTC)", run_a.finished, run_b.finished), ("device", run_a.device_slug, run_b.device_slug),
            ("git commit", run_a.commit, run_b.commit)]
    rows += [(name, value_a, value_b) for name, (value_a, value_b) in _settings(first, second).items()]
    rows += [("weights", run_a.weights_description, run_b.weights_description),
             ("complete", run_a.complete, run_b.complete)]
    body = [[name, cell(value_a), cell(value_b)] for name, value_a, value_b in rows]
    return tabulate(body, headers=["", "A", "B"], tablefmt="github", disable_numparse=True)


def settings_warnings(first: Results, second: Results) -> list[str]:
    """A warning naming every setting the runs differ in, and each run's own banners."""
    # Where reports or logs went, or how a session was compared, changes no figure.
    differing = [
        f"{name} ({cell(value_a)} / {cell(value_b)})"
        for name, (value_a, value_b) in _settings(first, second).items()
        if name != "data source" and name not in NOT_THE_CHANGE and value_a != value_b
    ]
    if first.run.data_source != second.run.data_source:
        differing.append(f"data source ({first.run.data_source} / {second.run.data_source})")
    warnings = []
    if differing:
        warnings.append(
            f"**Warning**: the runs differ in {', '.join(differing)}: "
            "their figures were not measured on the same terms."
        )
    for label, run in (("A", first.run), ("B", second.run)):
        warnings += [f"{label}: {banner}" for banner in banners(run)]
    return warnings


def _settings(first: Results, second: Results) -> dict[str, tuple]:
    """Setting name -> (A's value, B's value): profile, seeds, data source, every option given."""
    settings = {
        "profile": (first.run.profile, second.run.profile),
        "seeds": (_seeds(first), _seeds(second)),
        "data source": (first.run.data_source_description, second.run.data_source_description),
    }
    for option in dict.fromkeys([*first.run.options, *second.run.options]):
        settings[option] = (_option(first.run, option), _option(second.run, option))
    return settings


def _seeds(results: Results) -> str:
    seeds = sorted({record.seed for record in results.records if record.seed is not None}) or [results.run.seed]
    return ", ".join(str(seed) for seed in seeds)


def _option(run: RunHeader, option: str) -> str | None:
    if option not in run.options:
        return None
    return run.options[option] or "on"


def _case(identity: tuple, rows: list[tuple[dict, tuple[str, ...]]]) -> Case:
    experiment, table, key = identity
    values: dict[str, list[float]] = defaultdict(list)
    for row, _ in rows:
        for column, value in row.items():
            number = _numeric(value)
            if number is not None and is_measurement(column):
                values[column].append(number)
    first_row, keys = rows[0]
    settings = {
        column: cell(value) for column, value in first_row.items() if column not in keys and not is_measurement(column)
    }
    return Case(
        experiment=experiment,
        table=table,
        name=public_text(", ".join(key)),
        figures={column: sum(numbers) / len(numbers) for column, numbers in values.items()},
        settings=settings,
        count=len(rows),
    )


def _side_by_side(value_a: float | None, value_b: float | None) -> list[str]:
    if value_a is None or value_b is None:
        return [_number(value_a), _number(value_b), "-", "-"]
    ratio = f"{value_b / value_a:.2f}x" if value_a else "-"
    return [_number(value_a), _number(value_b), f"{value_b - value_a:+.4g}", ratio]


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def _numeric(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.endswith("x"):
        try:
            return float(value[:-1])
        except ValueError:
            return None
    return None

"""Results -> a report's markdown and figures: header, banners, tables (tabulate), plots, outcomes.

Rendering writes nothing: `lab.report.write_report` puts the markdown and figures on disk.
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Sequence

from tabulate import tabulate

from lab.errors import LabInputError
from lab.report import findings, plots, statistics
from lab.report.results import (
    ACCURACY_COLUMNS,
    EXPERIMENT_TITLES,
    Baseline,
    BaselineRow,
    BenchmarkResult,
    Outcome,
    Record,
    Results,
    RunHeader,
    TimeSplit,
    ValidationSet,
)
from lab.runtime import environment, timesplit

MODES = ("unfrozen", "frozen", "frozen-cached")
# A table cell longer than this becomes a numbered note under its table (`noted_table`).
NOTE_AFTER = 60
BENCHMARK_EXPERIMENT = 4


@dataclasses.dataclass
class RenderedReport:
    """A report before it is written.

    Args:
        markdown: the report's text; it links each figure as `<figures_link>/<name>`.
        figures: file name -> PNG bytes.
    """

    markdown: str
    figures: dict[str, bytes]


def render(results: Results, figures_link: str) -> RenderedReport:
    """The markdown of a report and its figures.

    Args:
        results: what the session saved.
        figures_link: the folder the markdown refers to for its figures, relative to the report.
    """
    run = results.run
    figures: dict[str, bytes] = {}
    lines = [f"# Transfer-learning lab report: {run.profile} profile on {run.device_slug}", ""]
    lines += _blockquotes(banners(run))
    lines += [header_table(run, results.baseline), ""]
    lines += _profile_settings_table(run)
    lines += _findings_section(results)
    lines += _baseline_section(results.baseline)
    lines += _time_split_section(results.time_split)
    by_experiment = records_by_experiment(results.records)
    rows = benchmark_rows(results.benchmarks)
    for number, title in EXPERIMENT_TITLES.items():
        records = by_experiment.get(number, [])
        if not records and not (number == BENCHMARK_EXPERIMENT and rows):
            continue
        lines += [f"## {title}", ""]
        for table_title, table_records in _by_table(records).items():
            lines += [f"### {table_title}", "", table(table_rows(table_records, results.validation_sets)), ""]
        compared = [c for c in results.comparisons if c.experiment == number and c.verdict != statistics.NOT_COMPARED]
        lines += _figure(figures, f"experiment{number}-comparisons.png", plots.forest(compared),
                         f"experiment {number}'s comparisons with their 95% intervals (the Findings' rows)",
                         figures_link)
        plotted, seed_note = _one_seed(records)
        lines += _figure(figures, f"experiment{number}-learning-curves.png", plots.learning_curves(plotted),
                         f"learning curves, experiment {number}{seed_note}", figures_link)
        if number == BENCHMARK_EXPERIMENT:
            lines += _benchmark_section(run, rows, figures, figures_link)
        lines += _figure(figures, f"experiment{number}-accuracy-by-stage.png", plots.accuracy_by_stage(plotted),
                         f"validation accuracy by stage{seed_note}", figures_link)
        searches = {record.label: record.rate_search for record in plotted if record.rate_search}
        lines += _figure(figures, f"experiment{number}-learning-rate-search.png", plots.lr_search(searches),
                         f"learning-rate range test of each head, the suggestion marked{seed_note}", figures_link)
        lines += _figure(figures, f"experiment{number}-learning-rates.png", plots.learning_rates(plotted),
                         f"learning rate of each parameter group at the last step of each epoch{seed_note}",
                         figures_link)
    lines += _outcomes_section(results.outcomes)
    return RenderedReport("\n".join(lines).rstrip() + "\n", figures)


def banners(run: RunHeader) -> list[str]:
    """What a reader must know before trusting any figure: incomplete run, mock data, warnings."""
    lines = []
    if not run.complete:
        lines.append(
            f"**Incomplete: {public_text(run.incomplete_reason or 'reason unknown')}.** Tables show what finished."
        )
    if run.data_source == "mock":
        lines.append(
            "**Mock data**: tensorflow-datasets' mock images are random noise, so every accuracy "
            "below means nothing. Structure, shapes and timings are real."
        )
    lines += [f"**Warning**: {public_text(warning)}" for warning in run.warnings]
    return lines


def baseline_line(baseline: Baseline) -> str:
    """The baseline run in one line: where, when, which commit."""
    return f"{baseline.source} (started {baseline.started}, commit {baseline.commit})"


def differing_line(baseline: Baseline) -> str:
    """The settings this run and its baseline differ in: the change being tested."""
    return f"settings that differ (this run / baseline): {'; '.join(baseline.differing) or 'none'}"


def header_table(run: RunHeader, baseline: Baseline | None = None) -> str:
    """The run's date, settings and machine as a two-column table."""
    device = run.device
    gpus = ", ".join(device.get("gpus") or []) or "none"
    if device.get("gpu_stack"):
        gpus += f" ({device['gpu_stack']})"
    rows = [
        ("date (UTC)", run.finished or run.started),
        ("profile", run.profile),
        ("seeds" if len(run.seeds) > 1 else "seed", ", ".join(map(str, run.seeds)) if run.seeds else run.seed),
        ("what varies between seeds", _varied(run)),
        ("git commit", run.commit),
        *([("resumed from", _resumed_from(run))] if run.resumed_from else []),
        *([("baseline", baseline_line(baseline))] if baseline else []),
        ("versions", ", ".join(f"{name} {version}" for name, version in run.versions.items())),
        ("CPU", f"{device.get('cpu')} ({device.get('cpu_cores')} cores)"),
        ("GPUs", f"{device.get('gpu_count', 0)}: {gpus}"),
        *[(f"host {host.name}", _host_text(host)) for host in run.hosts],
        ("replicas", run.replicas),
        ("data source", run.data_source_description),
        ("dataset, experiments 3-5", run.dataset_description),
        ("weights", run.weights_description),
        ("options", run.options_description),
        *([("training step", run.training_step)] if run.training_step else []),
        ("profile settings", "the table below" if run.profile_settings else None),
        ("wall time", f"{run.wall_seconds:.0f} s" if run.wall_seconds is not None else None),
    ]
    return tabulate([[key, cell(value)] for key, value in rows], headers=["", ""], tablefmt="github")


def _host_text(host) -> str:
    """One host of an xdist session: its workers, device and the versions that must match."""
    device = host.device
    if not device:
        return f"workers {', '.join(host.workers)}; its device is unknown (no worker of it reported)"
    gpus = ", ".join(device.get("gpus") or []) or "no GPU"
    versions = ", ".join(f"{name} {host.versions[name]}" for name in ("tensorflow", "tensorflow-cpu", "keras")
                         if name in host.versions)
    return (f"workers {', '.join(host.workers)}; {device.get('cpu')} ({device.get('cpu_cores')} cores); {gpus}; "
            f"{versions}")


def _profile_settings_table(run: RunHeader) -> list[str]:
    """The profile's settings, a row each: in one header cell they made the header 300 characters wide."""
    if not run.profile_settings:
        return []
    rows = [[key.replace("_", " "), cell(value)] for key, value in run.profile_settings.items()]
    return [tabulate(rows, headers=["profile setting", "value"], tablefmt="github", disable_numparse=True), ""]


def _resumed_from(run: RunHeader) -> str:
    """The earlier session a `--resume` session took its finished tests from."""
    earlier = run.resumed_from
    commit = earlier.commit if earlier.commit == run.commit else f"{earlier.commit}, not this session's"
    return f"{earlier.journal} (started {earlier.started}, commit {commit}): {earlier.tests} tests ended there"


def _varied(run: RunHeader) -> str:
    """The sources of variation the seeds sample, as the header says them."""
    if len(run.seeds) < 2:
        return "nothing: one training run per case, on one validation split"
    if "--split-per-seed" in run.options:
        return ("training (initialisation, order, augmentation) and the train/validation split "
                "(except a publisher's fixed test split)")
    return "training (initialisation, order, augmentation); every seed has the same validation images"


def records_by_experiment(records: list[Record]) -> dict[int, list[Record]]:
    """Records grouped by experiment number, each group in recording order."""
    grouped: dict[int, list[Record]] = defaultdict(list)
    for record in records:
        grouped[record.experiment].append(record)
    return grouped


def table_rows(records: list[Record], validation_sets: Sequence[ValidationSet] = ()) -> list[dict]:
    """One row per table key, with every validation accuracy as `value (low..high)`, its 95% interval.

    One seed: the record's row, with the Wilson interval over its validation images. Several
    seeds of a key: the mean of each measured column, the mean accuracy with its interval over
    images and seeds (`lab.report.statistics`; none where the records kept no predictions), the
    per-seed accuracies next to it, and a `seeds` column; settings that differ between seeds
    are listed per seed.
    """
    groups: dict[tuple[str, ...], list[Record]] = defaultdict(list)
    for record in records:
        groups[record.key()].append(record)
    rows = []
    for group in groups.values():
        group.sort(key=lambda record: record.seed or 0)
        row: dict = {}
        for column in dict.fromkeys(column for record in group for column in record.row):
            values = [record.row.get(column) for record in group]
            numbers = [value for value in values if _is_number(value)]
            if column in ACCURACY_COLUMNS and len(numbers) == len(values):
                row.update(_accuracy_cells(column, group, validation_sets))
            elif len(group) > 1 and is_measurement(column) and len(numbers) == len(values):
                row[column] = sum(numbers) / len(numbers)
            elif len({cell(value) for value in values}) > 1:
                row[column] = " / ".join(cell(value) for value in values)
            else:
                row[column] = values[0]
        if len(group) > 1:
            row["seeds"] = ", ".join(str(record.seed) for record in group)
        rows.append(row)
    return rows


def is_measurement(column: str) -> bool:
    """Accuracies, losses, seconds and speedups: what a run measured, not what it was configured with."""
    seconds = column in ("s/epoch", "seconds") or column.endswith((" s", " s/epoch", " seconds")) or " s (" in column
    return seconds or "accuracy" in column or "speedup" in column or "loss" in column


def benchmark_rows(benchmarks: list[BenchmarkResult]) -> list[dict]:
    """The epoch-time table: median seconds per epoch by backbone and mode, with speedups over unfrozen."""
    medians: dict[str, dict[str, float]] = defaultdict(dict)
    first: dict[str, BenchmarkResult] = {}
    for bench in benchmarks:
        medians[bench.backbone][bench.mode] = bench.median
        first.setdefault(bench.backbone, bench)
    rows = []
    for backbone, by_mode in sorted(medians.items()):
        unfrozen = by_mode.get("unfrozen")
        row = {
            "backbone": backbone,
            "input": f"{first[backbone].image_size}px",
            "images/epoch": first[backbone].images_per_epoch,
        }
        for mode in MODES:
            row[f"{mode} s/epoch"] = by_mode.get(mode)
        for mode in MODES[1:]:
            row[f"{mode} speedup"] = f"{unfrozen / by_mode[mode]:.1f}x" if unfrozen and by_mode.get(mode) else None
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    """A github-markdown table of `rows`; columns in first-seen order, missing cells as `-`."""
    headers = list(dict.fromkeys(column for row in rows for column in row))
    body = [[cell(row.get(column)) for column in headers] for row in rows]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def cell(value) -> str:
    """One table cell: 3 decimals for small floats, thousands separators, no absolute paths."""
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return public_text(str(value))


def public_text(text: str) -> str:
    """`text` with every absolute path shortened as `environment.display_path` does without a root.

    Reports are committed and shared: they should not carry the folder names of the machine
    they ran on, whichever machine wrote the results file.
    """
    return environment.display_paths_in(text)


def _accuracy_cells(column: str, group: list[Record], validation_sets: Sequence[ValidationSet]) -> dict:
    """A validation accuracy with its interval, and with several seeds each seed's value."""
    per_seed = [float(record.row[column]) for record in group]
    correctness = None
    if all(record.accuracy() == record.row[column] for record in group):
        correctness = findings.correctness_of(group, list(validation_sets))
    n_images = group[0].validation_images
    if correctness is None and len(group) == 1 and n_images:
        try:
            correctness = statistics.Correctness.from_count(per_seed[0], n_images)
        except LabInputError:
            correctness = None
    if correctness is None:
        return {column: sum(per_seed) / len(per_seed)}
    estimate = statistics.estimate_accuracy(correctness)
    cells = {column: estimate.text()}
    if estimate.n_seeds > 1:
        cells[f"{column} per seed"] = ", ".join(f"{value:.3f}" for value in estimate.per_seed)
    return cells


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _one_seed(records: list[Record]) -> tuple[list[Record], str]:
    """The records of the first seed, for plots (one curve per case), and a caption note naming it."""
    seeds = sorted({record.seed for record in records if record.seed is not None})
    if len(seeds) < 2:
        return records, ""
    return [record for record in records if record.seed in (seeds[0], None)], f" (seed {seeds[0]} of {len(seeds)})"


def _findings_section(results: Results) -> list[str]:
    """The lab's questions answered: one table row per comparison, and one note on the methods."""
    if not results.comparisons:
        return []
    lines = ["## Findings", "", findings_table(results.comparisons), ""]
    lines += [public_text(statistics.method_note(results.comparisons)), ""]
    return lines


def _baseline_section(baseline: Baseline | None) -> list[str]:
    """This run's rows against the baseline's: the verdicts, then epoch times as ratios."""
    if baseline is None:
        return []
    lines = ["## Against the baseline", "", f"{baseline_line(baseline)}; {differing_line(baseline)}.", ""]
    lines += [baseline_table(baseline.rows), ""]
    lines += [
        "Each row pairs this run's predictions with the baseline's on the same validation images; "
        "p-values are Holm-adjusted over the rows, each interval at the confidence of the Holm step that "
        "decided its verdict. The truth covered is the expected accuracy over new images and new training "
        "runs; with one seed on each side a row speaks of those two trained models only.",
        "",
    ]
    if baseline.epoch_times:
        lines += ["### Epoch times against the baseline", "", baseline_table(baseline.epoch_times), ""]
        lines += [
            "A ratio is the baseline's epoch time over this run's (above 1: this run faster), from each side's "
            "timed epochs: the interval covers their epoch-to-epoch spread in each process, not another load "
            "or machine. Reported only: `--fail-if-worse` reads accuracies.",
            "",
        ]
    return lines


def baseline_table(rows: Sequence[BaselineRow], tablefmt: str = "github") -> str:
    """Rows against the baseline: row, this run, baseline, difference, interval, verdict."""
    table = []
    for row in rows:
        cells = row.comparison.row()
        table.append({
            "row": public_text(row.row), "this run": row.this_run, "baseline": row.baseline,
            "difference": cells["difference"], "95% CI": cells["95% CI"], "p": cells["p"],
            "verdict": public_text(cells["verdict"].replace("this run faster than the baseline", "faster").replace(
                "the baseline faster than this run", "slower")),
        })
    return noted_table(table, "verdict", tablefmt)


def findings_table(comparisons: Sequence[statistics.Comparison], tablefmt: str = "github") -> str:
    """The Findings: a row per question (the report's markdown, or the terminal's `simple` table),
    a long verdict (a reason not to compare) as a numbered note under it."""
    rows = [{column: public_text(value) for column, value in comparison.row().items()} for comparison in comparisons]
    return noted_table(rows, "verdict", tablefmt)


def noted_table(rows: list[dict], column: str, tablefmt: str = "github") -> str:
    """`rows` as a table whose `column` cells longer than `NOTE_AFTER` characters become numbered
    notes under it (`not compared (note 1)`), so that no column is padded to one long cell."""
    notes = []
    for row in rows:
        text = row.get(column)
        if isinstance(text, str) and len(text) > NOTE_AFTER:
            notes.append(text)
            head = text.split(":")[0] if ":" in text[:NOTE_AFTER] else text[: NOTE_AFTER // 2].rstrip() + "..."
            row[column] = f"{head} (note {len(notes)})"
    lines = [tabulate(rows, headers="keys", tablefmt=tablefmt, disable_numparse=True)]
    if notes:
        lines += ["", *(f"{number}. {note}" for number, note in enumerate(notes, start=1))]
    return "\n".join(lines)


def time_split_parts(split: TimeSplit) -> list[tuple[str, float]]:
    """A time split's parts as (name, seconds), in the order the report and the summary give them."""
    return [
        ("data loading", split.data_seconds),
        ("tracing", split.tracing_seconds),
        ("training", split.training_seconds),
        ("evaluation", split.evaluation_seconds),
        ("other", split.other_seconds),
    ]


def _time_split_section(splits: list[TimeSplit]) -> list[str]:
    """Where the session's seconds went, per experiment: a table and what each column counts."""
    if not splits:
        return []
    named = [
        (EXPERIMENT_TITLES[split.experiment].split(":")[0] if split.experiment else "rest of the session", split)
        for split in splits
    ]
    rows = [
        {"part": part, **{f"{name} s": f"{seconds:.1f}" for name, seconds in time_split_parts(split)},
         "total s": f"{split.total_seconds:.1f}"}
        for part, split in [*named, ("all", timesplit.total(splits))]
    ]
    parallel = not any(split.experiment is None for split in splits)
    rest = (
        "Tests ran on several xdist workers at once: their seconds add up over workers, past the wall time."
        if parallel else
        "The rest of the session is the wall time above less the experiments: start-up, collection, unit tests."
    )
    return [
        "## Where the time went",
        "",
        table(rows),
        "",
        (
            "Data loading: decoding and resizing the datasets, before the first test. Tracing: each fit's first "
            "epoch less its median later epoch. Training: the rest of the fits' epochs, validation included. "
            "Evaluation: predicting the validation images whose predictions are recorded. Other: the rest of the "
            f"tests' durations (building, compiling and loading models, feature extraction, checks). {rest} "
            "Writing this report comes after: its seconds are in pytest's terminal summary."
        ),
        "",
    ]


def _blockquotes(paragraphs: list[str]) -> list[str]:
    return [line for paragraph in paragraphs for line in (f"> {paragraph}", "")]


def _by_table(records: list[Record]) -> dict[str, list[Record]]:
    tables: dict[str, list[Record]] = defaultdict(list)
    for record in records:
        tables[record.table].append(record)
    return tables


def _figure(figures: dict[str, bytes], name: str, png: bytes | None, caption: str, figures_link: str) -> list[str]:
    if png is None:
        return []
    figures[name] = png
    return [f"![{caption}]({figures_link}/{name})", ""]


def _benchmark_section(run: RunHeader, rows: list[dict], figures: dict[str, bytes], figures_link: str) -> list[str]:
    lines = ["### Seconds per epoch: unfrozen, frozen, frozen with cached features", ""]
    if not rows:
        reason = public_text(run.benchmarks_note or "no benchmark case ran")
        return lines + [f"No epoch times: {reason}.", ""]
    lines += [
        (
            "Median of timed epochs after an untimed warm-up epoch (graph tracing excluded), from "
            "pytest-benchmark. frozen-cached trains the head on pooled features computed once; that "
            "one-off extraction is not in its epoch time (see the cached-features table)."
            + (
                f" Epoch times are measured once, with seed {run.seed}, not once per seed: an epoch's time "
                "does not depend on the seed."
                if len(run.seeds) > 1 else ""
            )
        ),
        "",
        table(rows),
        "",
    ]
    if run.benchmarks_note:
        lines += [f"Note: {public_text(run.benchmarks_note)}.", ""]
    return lines + _figure(figures, "epoch-seconds.png", plots.epoch_seconds(rows, MODES),
                           "seconds per epoch by mode and backbone", figures_link)


def _outcomes_section(outcomes: list[Outcome]) -> list[str]:
    counts = Counter(outcome.outcome for outcome in outcomes)
    tally = ", ".join(f"{counts[kind]} {kind}" for kind in ("passed", "failed", "skipped", "not run") if counts[kind])
    lines = ["## Tests", "", f"{tally or 'no tests'}.", ""]
    not_passed = [outcome for outcome in outcomes if outcome.outcome != "passed"]
    if not_passed:
        rows = [{"test": outcome.test, "outcome": outcome.outcome, "why": cell(outcome.reason)}
                for outcome in not_passed]
        lines += [noted_table(rows, "why"), ""]
    return lines

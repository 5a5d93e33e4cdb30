"""Results -> one markdown report with tables (tabulate) and PNG plots (matplotlib).

The pytest session writes results as JSON and calls `write_report`; the same report can be
regenerated from the JSON without training, and two runs can be compared:

    python -m lab.report reports/RUN/results.json [--benchmark-json FILE] [--out-dir DIR] [--name NAME]
    python -m lab.report --compare A.json B.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
from collections import defaultdict

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
from tabulate import tabulate  # noqa: E402

from lab.atomic import atomic_write_bytes, atomic_write_text  # noqa: E402

EXPERIMENTS = {
    "1": "Experiment 1: the lab CNN on tf_flowers",
    "2": "Experiment 2: its convolutions reused on CIFAR-10",
    "3": "Experiment 3: a pretrained ImageNet backbone",
    "4": "Experiment 4: freezing the backbone",
    "5": "Experiment 5: gradual unfreezing",
}
MODES = ("unfrozen", "frozen", "frozen-cached")


def _by_experiment(records: list[dict]) -> dict[str, list[dict]]:
    grouped: dict[str, list[dict]] = defaultdict(list)
    for record in records:
        grouped[record["experiment"]].append(record)
    return grouped


def _table(rows: list[dict]) -> str:
    headers = list(dict.fromkeys(key for row in rows for key in row))
    body = [[_cell(row.get(key)) for key in headers] for row in rows]
    return tabulate(body, headers=headers, tablefmt="github", disable_numparse=True)


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def benchmark_rows(benchmarks: list[dict]) -> list[dict]:
    """Median seconds per epoch by backbone and mode, with speedups over unfrozen."""
    medians: dict[str, dict[str, float]] = defaultdict(dict)
    details: dict[str, dict] = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        medians[info["backbone"]][info["mode"]] = bench["stats"]["median"]
        details.setdefault(info["backbone"], info)
    rows = []
    for backbone, by_mode in sorted(medians.items()):
        unfrozen = by_mode.get("unfrozen")
        row = {
            "backbone": backbone,
            "input": f"{details[backbone].get('image_size')}px",
            "images/epoch": details[backbone].get("images_per_epoch"),
        }
        for mode in MODES:
            row[f"{mode} s/epoch"] = by_mode.get(mode)
        for mode in MODES[1:]:
            row[f"{mode} speedup"] = (
                f"{unfrozen / by_mode[mode]:.1f}x" if unfrozen and by_mode.get(mode) else None
            )
        rows.append(row)
    return rows


def _save_png(figure, path: str) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(figure)
    atomic_write_bytes(path, buffer.getvalue())


def _learning_curves_plot(records: list[dict], path: str) -> bool:
    curved = [record for record in records if record.get("curves")]
    if not curved:
        return False
    figure, axes = plt.subplots(figsize=(7, 4))
    for record in curved:
        curves = record["curves"]
        epochs = range(1, len(curves["validation_accuracy"]) + 1)
        line = axes.plot(epochs, curves["validation_accuracy"], marker="o", label=f"{record['label']} (validation)")
        if curves.get("train_accuracy"):
            axes.plot(epochs, curves["train_accuracy"], linestyle="--", color=line[0].get_color(), label=f"{record['label']} (train)")
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(alpha=0.3)
    _save_png(figure, path)
    return True


def _epoch_seconds_plot(rows: list[dict], path: str) -> bool:
    if not rows:
        return False
    figure, axes = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(MODES)
    for offset, mode in enumerate(MODES):
        values = [row.get(f"{mode} s/epoch") or 0.0 for row in rows]
        positions = [index + offset * width for index in range(len(rows))]
        axes.bar(positions, values, width=width, label=mode)
    axes.set_xticks([index + width for index in range(len(rows))], [row["backbone"] for row in rows])
    axes.set_ylabel("median seconds per epoch")
    axes.set_yscale("log")
    axes.legend()
    axes.grid(alpha=0.3, axis="y")
    _save_png(figure, path)
    return True


def _stage_accuracy_plot(records: list[dict], path: str) -> bool:
    staged = [record for record in records if record.get("stage_curve")]
    if not staged:
        return False
    figure, axes = plt.subplots(figsize=(7, 4))
    for record in staged:
        curve = record["stage_curve"]
        axes.plot(range(len(curve["accuracy"])), curve["accuracy"], marker="o", label=record["label"])
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("stage (0: head only)")
    axes.set_ylabel("validation accuracy")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    _save_png(figure, path)
    return True


def _header(run: dict) -> list[str]:
    device = run.get("device", {})
    gpus = ", ".join(device.get("gpus") or []) or "none"
    settings = ", ".join(f"{key}={value}" for key, value in run.get("profile_settings", {}).items())
    rows = [
        ("date (UTC)", run.get("finished") or run.get("started")),
        ("profile", run.get("profile")),
        ("seed", run.get("seed")),
        ("git commit", run.get("commit")),
        ("versions", ", ".join(f"{name} {version}" for name, version in run.get("versions", {}).items())),
        ("CPU", f"{device.get('cpu')} ({device.get('cpu_cores')} cores)"),
        ("GPUs", f"{device.get('gpu_count', 0)}: {gpus}"),
        ("replicas", run.get("replicas")),
        ("data source", run.get("data_source_description")),
        ("weights", run.get("weights_description")),
        ("options", run.get("options_description")),
        ("profile settings", settings),
        ("wall time", f"{run['wall_seconds']:.0f} s" if run.get("wall_seconds") is not None else None),
    ]
    return [tabulate([[key, _cell(value)] for key, value in rows], headers=["", ""], tablefmt="github")]


def render(results: dict, figures_dir: str, figures_link: str) -> str:
    """The markdown of a report; writes its PNG plots into `figures_dir`.

    Args:
        results: what the session saved (`run`, `records`, `outcomes`, `benchmarks`).
        figures_dir: where the plots go.
        figures_link: how the markdown refers to that folder.
    """
    run = results["run"]
    records = results.get("records", [])
    lines = [f"# Transfer-learning lab report: {run.get('profile')} profile on {run.get('device_slug')}", ""]
    if not run.get("complete", True):
        lines += [f"> **Incomplete run**: {run.get('incomplete_reason')}. Tables show what finished.", ""]
    if run.get("data_source") == "mock":
        lines += [
            "> **Mock data**: tensorflow-datasets' mock images are random noise, so every accuracy "
            "below means nothing. Structure, shapes and timings are real.",
            "",
        ]
    lines += _header(run) + [""]
    by_experiment = _by_experiment(records)
    rows = benchmark_rows(results.get("benchmarks", []))
    for number, title in EXPERIMENTS.items():
        experiment_records = by_experiment.get(number, [])
        if not experiment_records and not (number == "4" and rows):
            continue
        lines += [f"## {title}", ""]
        tables: dict[str, list[dict]] = defaultdict(list)
        for record in experiment_records:
            tables[record["table"]].append(record)
        for table, table_records in tables.items():
            lines += [f"### {table}", "", _table([record["row"] for record in table_records]), ""]
        os.makedirs(figures_dir, exist_ok=True)
        curves_png = f"experiment{number}-learning-curves.png"
        if _learning_curves_plot(experiment_records, os.path.join(figures_dir, curves_png)):
            lines += [f"![learning curves, experiment {number}]({figures_link}/{curves_png})", ""]
        if number == "4":
            lines += _benchmark_section(run, rows, figures_dir, figures_link)
        stages_png = f"experiment{number}-accuracy-by-stage.png"
        if _stage_accuracy_plot(experiment_records, os.path.join(figures_dir, stages_png)):
            lines += [f"![validation accuracy by stage]({figures_link}/{stages_png})", ""]
    lines += _outcomes_section(results.get("outcomes", []))
    return "\n".join(lines).rstrip() + "\n"


def _benchmark_section(run: dict, rows: list[dict], figures_dir: str, figures_link: str) -> list[str]:
    lines = ["### Seconds per epoch: unfrozen, frozen, frozen with cached features", ""]
    if not rows:
        reason = run.get("benchmarks_note") or "no benchmark case ran"
        return lines + [f"No epoch times: {reason}.", ""]
    lines += [
        "Median of timed epochs after an untimed warm-up epoch (graph tracing excluded), from "
        "pytest-benchmark. frozen-cached trains the head on pooled features computed once; that "
        "one-off extraction is not in its epoch time (see the cached-features table).",
        "",
        _table(rows),
        "",
    ]
    if _epoch_seconds_plot(rows, os.path.join(figures_dir, "epoch-seconds.png")):
        lines += [f"![seconds per epoch by mode and backbone]({figures_link}/epoch-seconds.png)", ""]
    return lines


def _outcomes_section(outcomes: list[dict]) -> list[str]:
    not_passed = [outcome for outcome in outcomes if outcome["outcome"] != "passed"]
    counts = defaultdict(int)
    for outcome in outcomes:
        counts[outcome["outcome"]] += 1
    tally = ", ".join(f"{counts[kind]} {kind}" for kind in ("passed", "failed", "skipped", "not run") if counts[kind])
    lines = ["## Tests", "", f"{tally or 'no tests'}.", ""]
    if not_passed:
        lines += [_table([{"test": o["test"], "outcome": o["outcome"], "why": o.get("reason", "")} for o in not_passed]), ""]
    return lines


def write_report(results: dict, report_dir: str, stem: str, latest_name: str | None) -> str:
    """Writes `<stem>.md`, its plots and `results.json` under `report_dir`, all atomically.

    Args:
        results: what the session saved.
        report_dir: the reports folder.
        stem: the report's name without `.md`; its plots go in a folder of that name.
        latest_name: also write the same markdown under this name (`latest-smoke.md`), or None.

    Returns:
        The path of the markdown report.
    """
    figures_dir = os.path.join(report_dir, stem)
    os.makedirs(figures_dir, exist_ok=True)
    atomic_write_text(os.path.join(figures_dir, "results.json"), json.dumps(results, indent=2, default=str))
    markdown = render(results, figures_dir, stem)
    path = os.path.join(report_dir, f"{stem}.md")
    atomic_write_text(path, markdown)
    if latest_name:
        atomic_write_text(os.path.join(report_dir, latest_name), markdown)
    return path


def summary_lines(records: list[dict]) -> list[str]:
    """One line per experiment for pytest's terminal summary."""
    by_experiment = _by_experiment(records)
    lines = []
    for number, title in EXPERIMENTS.items():
        experiment_records = by_experiment.get(number)
        if not experiment_records:
            continue
        accuracies = [
            (record["row"].get("validation accuracy", record["row"].get("final validation accuracy")), record["label"])
            for record in experiment_records
            if record["label"]
        ]
        accuracies = [(accuracy, label) for accuracy, label in accuracies if isinstance(accuracy, float)]
        best = max(accuracies) if accuracies else None
        text = f"{title.split(':')[0]}: {len(experiment_records)} results"
        if best:
            text += f"; best validation accuracy {best[0]:.3f} ({best[1]})"
        lines.append(text)
    return lines


def _numeric(value) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str) and value.endswith("x"):
        try:
            return float(value[:-1])
        except ValueError:
            return None
    return None


def _is_measurement(column: str) -> bool:
    """Accuracies, seconds and speedups: what a run measured, not what it was configured with."""
    seconds = column in ("s/epoch", "seconds") or column.endswith((" s", " s/epoch", " seconds")) or " s (" in column
    return seconds or "accuracy" in column or "speedup" in column


def compare(first: dict, second: dict) -> str:
    """A markdown table of every measured figure that both runs share, side by side."""
    def keyed(results: dict) -> dict:
        figures = {}
        for record in results.get("records", []):
            identity = ", ".join(str(v) for v in record["row"].values() if _numeric(v) is None)
            for column, value in record["row"].items():
                number = _numeric(value)
                if number is not None and _is_measurement(column):
                    figures[(EXPERIMENTS[record["experiment"]].split(":")[0], record["table"], identity, column)] = number
        for row in benchmark_rows(results.get("benchmarks", [])):
            for column, value in row.items():
                number = _numeric(value)
                if number is not None and _is_measurement(column):
                    figures[("Experiment 4", "epoch times", row["backbone"], column)] = number
        return figures

    a, b = keyed(first), keyed(second)
    rows = []
    for key in sorted(set(a) & set(b)):
        difference = b[key] - a[key]
        ratio = b[key] / a[key] if a[key] else None
        rows.append([*key, f"{a[key]:.4g}", f"{b[key]:.4g}", f"{difference:+.4g}", f"{ratio:.2f}x" if ratio else "-"])
    only = len(set(a) ^ set(b))
    header = [
        f"A: {first['run'].get('profile')} on {first['run'].get('device_slug')}, {first['run'].get('finished')}",
        f"B: {second['run'].get('profile')} on {second['run'].get('device_slug')}, {second['run'].get('finished')}",
        "",
    ]
    table = tabulate(
        rows, headers=["experiment", "table", "case", "figure", "A", "B", "B - A", "B / A"],
        tablefmt="github", disable_numparse=True,
    )
    footer = ["", f"{len(rows)} figures in both runs; {only} in only one."]
    return "\n".join(header + [table] + footer)


def merge_benchmark_json(results: dict, path: str) -> dict:
    """Takes the epoch times from a `pytest --benchmark-json` file instead of the saved ones."""
    with open(path, encoding="utf-8") as stream:
        saved = json.load(stream)
    benchmarks = [
        {"name": bench["name"], "extra_info": bench.get("extra_info", {}), "stats": {"median": bench["stats"]["median"]}}
        for bench in saved.get("benchmarks", [])
        if "mode" in bench.get("extra_info", {})
    ]
    return {**results, "benchmarks": benchmarks}


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            return json.load(stream)
    except (OSError, json.JSONDecodeError) as error:
        sys.exit(f"cannot read results file {path}: {error}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lab.report", description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="?", help="a results.json that a pytest session saved")
    parser.add_argument("--benchmark-json", help="epoch times from pytest --benchmark-json")
    parser.add_argument("--out-dir", help="where to write the report (default: the reports folder holding the results)")
    parser.add_argument("--name", help="the report's file name without .md (default: the run's name + -regenerated)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print the differences between two runs")
    args = parser.parse_args(argv)
    if args.compare:
        print(compare(_load(args.compare[0]), _load(args.compare[1])))
        return 0
    if not args.results:
        parser.error("give a results.json, or --compare A.json B.json")
    results = _load(args.results)
    if args.benchmark_json:
        results = merge_benchmark_json(results, args.benchmark_json)
    out_dir = args.out_dir or os.path.dirname(os.path.dirname(os.path.abspath(args.results)))
    stem = args.name or os.path.basename(os.path.dirname(os.path.abspath(args.results))) + "-regenerated"
    print(write_report(results, out_dir, stem, latest_name=None))
    return 0


if __name__ == "__main__":
    sys.exit(main())

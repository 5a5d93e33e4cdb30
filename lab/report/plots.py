"""A report's figures as PNG bytes: learning curves, epoch times, accuracy and learning rates by
stage, and forest plots of the Findings' comparisons.

Figures are built with matplotlib's object-oriented `Figure`, not pyplot: no global backend
or figure registry, so rendering works headless and inside any process (pytest's included).
"""

from __future__ import annotations

import io

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import MaxNLocator

from lab.measurements import LearningRateSearch
from lab.report.results import Record
from lab.report.statistics import NO_DIFFERENCE, Comparison


def learning_curves(records: list[Record]) -> bytes | None:
    """Validation (solid) and training (dashed) accuracy per epoch; None if no record has curves."""
    curved = [record for record in records if record.curves]
    if not curved:
        return None
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for record in curved:
        curves = record.curves
        epochs = range(1, len(curves.validation_accuracy) + 1)
        (line,) = axes.plot(epochs, curves.validation_accuracy, marker="o", label=f"{record.label} (validation)")
        if curves.train_accuracy:
            axes.plot(
                epochs, curves.train_accuracy, linestyle="--", color=line.get_color(), label=f"{record.label} (train)"
            )
    axes.set_xlabel("epoch")
    axes.set_ylabel("accuracy")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes.grid(alpha=0.3)
    return _png(figure)


def epoch_seconds(rows: list[dict], modes: tuple[str, ...]) -> bytes | None:
    """Bars of median seconds per epoch by backbone and mode (log scale); None without rows.

    Args:
        rows: the epoch-time table's rows (`backbone`, `<mode> s/epoch`).
        modes: the modes to draw, in bar order.
    """
    if not rows:
        return None
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    width = 0.8 / len(modes)
    for offset, mode in enumerate(modes):
        values = [row.get(f"{mode} s/epoch") or 0.0 for row in rows]
        positions = [index + offset * width for index in range(len(rows))]
        axes.bar(positions, values, width=width, label=mode)
    axes.set_xticks([index + width for index in range(len(rows))], [row["backbone"] for row in rows])
    axes.set_ylabel("median seconds per epoch")
    axes.set_yscale("log")
    axes.legend()
    axes.grid(alpha=0.3, axis="y")
    return _png(figure)


def accuracy_by_stage(records: list[Record]) -> bytes | None:
    """Validation accuracy after each unfreezing stage; None if no record has a stage curve."""
    staged = [record for record in records if record.stage_curve]
    if not staged:
        return None
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for record in staged:
        accuracy = record.stage_curve.accuracy
        axes.plot(range(len(accuracy)), accuracy, marker="o", label=record.label)
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlabel("stage (0: head only)")
    axes.set_ylabel("validation accuracy")
    axes.legend(fontsize=7)
    axes.grid(alpha=0.3)
    return _png(figure)


def learning_rates(records: list[Record]) -> bytes | None:
    """The learning rate each parameter group used per epoch, one small panel per case.

    Log scale; a group's line is absent where it did not train. One colour per group across
    panels, one legend. Records of the same label (repeated seeds) share one schedule: the
    first is drawn. None if no record has rate curves.
    """
    by_label: dict[str, Record] = {}
    for record in records:
        if record.rate_curves:
            by_label.setdefault(record.label, record)
    if not by_label:
        return None
    groups = list(dict.fromkeys(name for record in by_label.values() for name in record.rate_curves))
    columns = min(3, len(by_label))
    rows = -(-len(by_label) // columns)
    figure = Figure(figsize=(2.6 * columns + 1.6, 2.0 * rows + 0.4))
    panels = figure.subplots(rows, columns, sharex=True, sharey=True, squeeze=False).ravel()
    colours = {name: f"C{index % 10}" for index, name in enumerate(groups)}
    for axes, (label, record) in zip(panels[: len(by_label)], by_label.items(), strict=True):
        for name, rates in record.rate_curves.items():
            values = [float("nan") if rate is None else rate for rate in rates]
            axes.plot(range(1, len(values) + 1), values, marker=".", color=colours[name], label=name)
        axes.set_title(label, fontsize=8)
        axes.set_yscale("log")
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
    for axes in panels[len(by_label):]:
        axes.set_visible(False)
    for axes in panels[::columns]:
        axes.set_ylabel("learning rate", fontsize=8)
    for axes in panels[-columns:]:
        axes.set_xlabel("epoch", fontsize=8)
    handles = [Line2D([], [], color=colours[name], marker=".", label=name) for name in groups]
    figure.legend(handles=handles, fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5), title="group",
                  title_fontsize=7)
    figure.tight_layout()
    return _png(figure)


def forest(comparisons: list[Comparison]) -> bytes | None:
    """Each comparison's difference (or speed-up ratio, on a log scale) with its 95% interval,
    around no difference; filled where the verdict names a winner. None without comparisons."""
    if not comparisons:
        return None
    ratios = [c for c in comparisons if c.measure == "ratio"]
    differences = [c for c in comparisons if c.measure != "ratio"]
    groups = [(group, label, reference) for group, label, reference in (
        (differences, "difference in validation accuracy (A - B)", 0.0),
        (ratios, "times faster (B's epoch time / A's, log scale)", 1.0),
    ) if group]
    figure = Figure(figsize=(7, 0.9 + 0.35 * len(comparisons) + 0.5 * len(groups)))
    grid = figure.subplots(len(groups), 1, squeeze=False,
                           gridspec_kw={"height_ratios": [len(group) for group, _, _ in groups]})
    for axes, (group, label, reference) in zip(grid[:, 0], groups, strict=True):
        positions = range(len(group))[::-1]
        for position, comparison in zip(positions, group, strict=True):
            filled = comparison.verdict != NO_DIFFERENCE
            axes.errorbar(
                comparison.effect, position, fmt="o", color="tab:blue",
                xerr=[[comparison.effect - comparison.low], [comparison.high - comparison.effect]],
                markerfacecolor="tab:blue" if filled else "white", capsize=3,
            )
        axes.axvline(reference, color="grey", linestyle="--", linewidth=1)
        if reference == 1.0:
            axes.set_xscale("log")
        axes.set_yticks(list(positions), [f"{c.question}: {c.a_name} vs {c.b_name}" for c in group], fontsize=7)
        axes.set_xlabel(label)
        axes.grid(alpha=0.3, axis="x")
    figure.tight_layout()
    return _png(figure)


def lr_search(searches: dict[str, LearningRateSearch]) -> bytes | None:
    """Each range test's smoothed loss against its rate (log scale), suggestion marked; None without.

    One line per backbone; a search without a suggestion keeps its line, and its label says why.
    """
    if not searches:
        return None
    figure = Figure(figsize=(7, 4))
    axes = figure.subplots()
    for name, search in searches.items():
        label = f"{name}: {search.suggestion:.1e}" if search.found else f"{name}: none ({search.reason})"
        (line,) = axes.plot(search.rates, search.smoothed, label=label)
        if search.found:
            loss = search.smoothed[search.rates.index(search.suggestion)]
            axes.plot(search.suggestion, loss, marker="o", markersize=8, color=line.get_color())
    axes.set_xscale("log")
    rules = ", ".join(dict.fromkeys(search.rule for search in searches.values()))
    axes.set_xlabel("learning rate (the fastest group's)")
    axes.set_ylabel("training loss (smoothed)")
    axes.legend(fontsize=7, title=f"suggestion ({rules})", title_fontsize=7)
    axes.grid(alpha=0.3)
    return _png(figure)


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return buffer.getvalue()

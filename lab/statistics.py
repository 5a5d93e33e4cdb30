"""Accuracies with 95% intervals, paired comparisons with verdicts, and the findings they support.

Every figure of the lab is measured on one fixed set of validation images, with one seed or
several. One seed: the uncertainty is that of the images (a binomial interval; McNemar's exact
test for two arms that predicted the same images). Several seeds: the spread over seeds (a
t-interval on the per-seed values, or on the per-seed differences of two arms). The statistics
are scipy.stats'; this module chooses between them and says the result in words.
Comparisons read together as a family get Holm-adjusted p-values (`adjusted_for_family`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
from scipy import stats

from lab.errors import LabInputError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
NO_DIFFERENCE = "no difference detectable at this budget"
NOT_COMPARED = "not compared"
# Per-seed values closer than this are the same figure (accuracies are float32 ratios).
_SAME = 1e-9


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An accuracy with its 95% interval.

    Args:
        value: the accuracy of the one seed, or the mean over seeds.
        low, high: the 95% interval.
        method: `wilson` (one seed: binomial interval over the validation images) or `t`
            (several seeds: t-interval of the mean over seeds).
        n_seeds: seeds the value is measured over.
        n_images: validation images each seed was measured on.
        per_seed: the accuracy of each seed, in seed order.
    """

    value: float
    low: float
    high: float
    method: str
    n_seeds: int
    n_images: int
    per_seed: list[float]

    def text(self) -> str:
        """The value and its interval, as a report cell: `0.436 (0.341..0.535)`."""
        return f"{self.value:.3f} ({self.low:.3f}..{self.high:.3f})"


@dataclasses.dataclass(frozen=True)
class Comparison:
    """One question of the lab answered by comparing arm A with arm B.

    Args:
        question: what is compared, as the findings line begins (`Experiment 2`).
        a_name, b_name: the arms, as the verdict names them (B may be a constant: `chance (0.200)`).
        measure: `difference` (accuracy of A minus accuracy of B) or `ratio` (B's epoch time
            over A's: how many times faster A is).
        effect: the difference or ratio; None when not compared.
        low, high: its 95% interval; None when not compared.
        p_value: the test's two-sided p-value; None when not compared.
        method: the test, in words.
        verdict: `A better than B`, `B better than A` (`faster` for a ratio),
            `no difference detectable at this budget`, or `not compared`; with the arms' names.
        n_seeds: seeds behind each arm (None for timings).
        n_images: validation images both arms predicted (None for timings).
        n_rounds: timed epochs of A and of B (timings only).
        reason: why the arms were not compared.
        p_adjusted: the p-value Holm-adjusted over the comparison's family (`adjusted_for_family`),
            which then decides the verdict; None when the comparison stands alone.
        family_size: the comparisons `p_adjusted` is adjusted over; None when it stands alone.
    """

    question: str
    a_name: str
    b_name: str
    measure: str
    effect: float | None
    low: float | None
    high: float | None
    p_value: float | None
    method: str
    verdict: str
    n_seeds: int | None = None
    n_images: int | None = None
    n_rounds: tuple[int, int] | None = None
    reason: str = ""
    p_adjusted: float | None = None
    family_size: int | None = None

    def sentence(self) -> str:
        """The verdict with the figures behind it, in one line."""
        if self.verdict == NOT_COMPARED:
            return f"{self.a_name} against {self.b_name}: not compared ({self.reason})"
        # An adjusted verdict follows its adjusted p-value; the interval beside it is the single
        # comparison's, and says so.
        ci = "95% CI" if self.p_adjusted is None else "unadjusted 95% CI"
        if self.measure == "ratio":
            figures = f"{self.effect:.2f}x, {ci} {self.low:.2f}x..{self.high:.2f}x"
            budget = f"{self.n_rounds[0]} and {self.n_rounds[1]} timed epochs"
        else:
            figures = f"{self.effect:+.3f}, {ci} {self.low:+.3f}..{self.high:+.3f}"
            seeds = "1 seed" if self.n_seeds == 1 else f"{self.n_seeds} seeds"
            budget = f"{seeds}, {self.n_images} validation images"
        # A verdict that names no winner names the arms it could not tell apart.
        verdict = self.verdict
        if verdict == NO_DIFFERENCE:
            verdict = f"{self.a_name} against {self.b_name}: {verdict}"
        return f"{verdict} ({figures}, {self._p_text()}; {budget}; {self.method})"

    def _p_text(self) -> str:
        if self.p_adjusted is None:
            return _p_text(self.p_value)
        return (
            f"{_p_text(self.p_adjusted)} adjusted for {self.family_size} comparisons (Holm), "
            f"unadjusted {_p_text(self.p_value)}"
        )


def estimate_accuracy(per_seed_accuracy: Sequence[float], n_images: int) -> Estimate:
    """An accuracy with its 95% interval: Wilson for one seed, a t-interval over several.

    Args:
        per_seed_accuracy: the validation accuracy of each seed.
        n_images: validation images each accuracy was measured on.

    Raises:
        LabInputError: no seeds, no images, an accuracy outside 0..1, or (one seed) an
            accuracy that is not a whole number of correct images out of `n_images`.
    """
    values = _accuracies(per_seed_accuracy, n_images)
    if len(values) == 1:
        correct = _correct_count(values[0], n_images)
        interval = stats.binomtest(correct, n_images).proportion_ci(CONFIDENCE, method="wilson")
        return Estimate(values[0], float(interval.low), float(interval.high), "wilson", 1, n_images, values)
    mean, low, high, _, _ = _t_test(values, 0.0)
    return Estimate(mean, max(low, 0.0), min(high, 1.0), "t", len(values), n_images, values)


def compare_predictions(
    question: str,
    a_name: str,
    a_predictions: Sequence[np.ndarray],
    b_name: str,
    b_predictions: Sequence[np.ndarray],
    labels: np.ndarray,
) -> Comparison:
    """Compares two arms that predicted the same validation images, seed by seed.

    One seed: McNemar's exact test on the images one arm got right and the other wrong.
    Several seeds: the mean of the per-seed accuracy differences, with a t-interval.

    Args:
        question: the findings line's beginning (`Experiment 2`).
        a_name, b_name: the arms' names.
        a_predictions, b_predictions: per seed (the same seeds, in the same order), the
            predicted class of every validation image.
        labels: the true class of every validation image.

    Raises:
        LabInputError: no images, no seeds, arms with different seed counts, or predictions
            whose shape is not the labels'.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise LabInputError(
            f"{question}: the validation labels must be a non-empty 1-D array, got shape {labels.shape}"
        )
    a_correct = _correct_per_seed(question, a_name, a_predictions, labels)
    b_correct = _correct_per_seed(question, b_name, b_predictions, labels)
    _same_seed_count(question, a_name, len(a_correct), b_name, len(b_correct))
    if len(a_correct) > 1:
        return compare_accuracies(
            question, a_name, [float(c.mean()) for c in a_correct],
            b_name, [float(c.mean()) for c in b_correct], labels.size,
        )
    n_images = labels.size
    only_a = int(np.sum(a_correct[0] & ~b_correct[0]))
    only_b = int(np.sum(~a_correct[0] & b_correct[0]))
    discordant = only_a + only_b
    effect = (only_a - only_b) / n_images
    if discordant == 0:
        low = high = effect
        p_value = 1.0
    else:
        # Conditional on the discordant images, A's share of them is binomial with p = 1/2
        # under no difference; the exact (Clopper-Pearson) interval of that share rejects 1/2
        # exactly when the exact two-sided test does, so interval and p-value agree.
        test = stats.binomtest(only_a, discordant, 0.5)
        share = test.proportion_ci(CONFIDENCE, method="exact")
        low, high = (discordant / n_images * (2 * bound - 1) for bound in (share.low, share.high))
        p_value = float(test.pvalue)
    return Comparison(
        question, a_name, b_name, "difference", effect, float(low), float(high), p_value,
        f"McNemar's exact test ({only_a} images only {a_name} got right, {only_b} only {b_name})",
        _verdict(a_name, b_name, effect, p_value, "better"), n_seeds=1, n_images=n_images,
    )


def compare_accuracies(
    question: str,
    a_name: str,
    a_per_seed: Sequence[float],
    b_name: str,
    b_per_seed: Sequence[float],
    n_images: int,
) -> Comparison:
    """Compares two arms by the mean of their per-seed accuracy differences, with a t-interval.

    Args:
        question: the findings line's beginning.
        a_name, b_name: the arms' names.
        a_per_seed, b_per_seed: each seed's validation accuracy (the same seeds, in the same
            order, on the same validation images).
        n_images: validation images each accuracy was measured on.

    Raises:
        LabInputError: fewer than two seeds (one seed needs the per-image predictions:
            `compare_predictions`), or arms with different seed counts.
    """
    a_values = _accuracies(a_per_seed, n_images)
    b_values = _accuracies(b_per_seed, n_images)
    _same_seed_count(question, a_name, len(a_values), b_name, len(b_values))
    if len(a_values) < 2:
        raise LabInputError(
            f"{question}: one seed gives no spread over seeds; compare its per-image predictions "
            "with compare_predictions (McNemar's test), or run --seeds 2 or more"
        )
    differences = [a - b for a, b in zip(a_values, b_values, strict=True)]
    effect, low, high, p_value, method = _t_test(differences, 0.0)
    return Comparison(
        question, a_name, b_name, "difference", effect, low, high, p_value, f"{method} of the per-seed differences",
        _verdict(a_name, b_name, effect, p_value, "better"), n_seeds=len(a_values), n_images=n_images,
    )


def compare_with_constant(
    question: str,
    name: str,
    per_seed_accuracy: Sequence[float],
    n_images: int,
    constant: float,
    constant_name: str = "chance",
) -> Comparison:
    """Compares an accuracy with a fixed one (experiment 1: the CNN against chance).

    One seed: the exact binomial test of the correct count against `constant`, with the
    Wilson interval. Several seeds: a one-sample t-test of the per-seed accuracies.

    Args:
        question: the findings line's beginning.
        name: the arm's name.
        per_seed_accuracy: each seed's validation accuracy.
        n_images: validation images each accuracy was measured on.
        constant: the accuracy to beat, for example 1 / number of classes.
        constant_name: what the constant is, as the verdict names it.
    """
    if not 0.0 < constant < 1.0:
        raise LabInputError(f"{question}: the accuracy to compare with must be between 0 and 1, got {constant}")
    estimate = estimate_accuracy(per_seed_accuracy, n_images)
    b_name = f"{constant_name} ({constant:.3f})"
    if estimate.n_seeds == 1:
        p_value = float(stats.binomtest(_correct_count(estimate.value, n_images), n_images, constant).pvalue)
        method = "exact binomial test"
    else:
        _, _, _, p_value, method = _t_test(estimate.per_seed, constant)
    effect = estimate.value - constant
    return Comparison(
        question, name, b_name, "difference", effect, estimate.low - constant, estimate.high - constant, p_value,
        method, _verdict(name, b_name, effect, p_value, "better"), n_seeds=estimate.n_seeds, n_images=n_images,
    )


def compare_times(
    question: str,
    a_name: str,
    a_seconds: Sequence[float],
    b_name: str,
    b_seconds: Sequence[float],
) -> Comparison:
    """How many times faster A's epochs are than B's, from each arm's timed rounds.

    The ratio of geometric means with a Welch t-interval on the log times: times are
    positive and skewed, and a ratio is a difference of logs.

    Args:
        question: the findings line's beginning (`Experiment 4, mobilenet`).
        a_name, b_name: the arms (`frozen`, `unfrozen`).
        a_seconds, b_seconds: the seconds of every timed epoch of each arm.

    Raises:
        LabInputError: fewer than two rounds in an arm, or a time that is not positive.
    """
    logs = []
    for name, seconds in ((a_name, a_seconds), (b_name, b_seconds)):
        values = np.asarray(seconds, dtype=float)
        if values.ndim != 1 or values.size < 2:
            raise LabInputError(
                f"{question}: {name} needs two or more timed rounds for an interval; run more benchmark rounds"
            )
        if not np.all(np.isfinite(values) & (values > 0)):
            raise LabInputError(f"{question}: {name}'s epoch times must be positive seconds, got {values.tolist()}")
        logs.append(np.log(values))
    a_logs, b_logs = logs
    if np.ptp(a_logs) < _SAME and np.ptp(b_logs) < _SAME:
        log_ratio = low = high = float(b_logs.mean() - a_logs.mean())
        p_value = 1.0 if abs(log_ratio) < _SAME else 0.0
    else:
        test = stats.ttest_ind(b_logs, a_logs, equal_var=False)
        interval = test.confidence_interval(CONFIDENCE)
        log_ratio, low, high = float(np.mean(b_logs) - np.mean(a_logs)), interval.low, interval.high
        p_value = float(test.pvalue)
    effect = float(np.exp(log_ratio))
    return Comparison(
        question, a_name, b_name, "ratio", effect, float(np.exp(low)), float(np.exp(high)), p_value,
        "Welch's t-test on log epoch times", _verdict(a_name, b_name, log_ratio, p_value, "faster"),
        n_rounds=(a_logs.size, b_logs.size),
    )


def not_compared(question: str, a_name: str, b_name: str, reason: str) -> Comparison:
    """A comparison whose arms did not both run, kept in the findings with the reason."""
    return Comparison(question, a_name, b_name, "difference", None, None, None, None, "", NOT_COMPARED, reason=reason)


def adjusted_for_family(family: Sequence[Comparison]) -> list[Comparison]:
    """The family's comparisons with Holm-adjusted p-values, which decide their verdicts.

    Holm's step-down adjustment keeps the chance of any false "better than" in the family
    below `ALPHA`, whatever the dependence between its comparisons (they share arms). "Not
    compared" entries are returned unchanged and not counted; a family of one compared
    comparison is returned as it is.

    Args:
        family: comparisons whose verdicts are read together (experiment 5: one backbone's).

    Returns:
        The comparisons in the order given.
    """
    compared = [index for index, comparison in enumerate(family) if comparison.verdict != NOT_COMPARED]
    if len(compared) < 2:
        return list(family)
    p_values = np.array([family[index].p_value for index in compared])
    order = np.argsort(p_values, kind="stable")
    size = len(compared)
    # The i-th smallest p-value (from 0) is multiplied by size - i, then kept at least as large
    # as every smaller one's, so adjusted p-values keep the raw ones' order.
    stepped = np.minimum(np.maximum.accumulate(p_values[order] * (size - np.arange(size))), 1.0)
    adjusted = np.empty(size)
    adjusted[order] = stepped
    answers = list(family)
    for index, p_adjusted in zip(compared, adjusted, strict=True):
        comparison = answers[index]
        verdict = NO_DIFFERENCE if p_adjusted >= ALPHA else comparison.verdict
        answers[index] = dataclasses.replace(
            comparison, p_adjusted=float(p_adjusted), family_size=size, verdict=verdict
        )
    return answers


def findings(comparisons: Sequence[Comparison]) -> list[str]:
    """One line per comparison, as the report's Findings section and pytest's summary print them."""
    return [f"{comparison.question}: {comparison.sentence()}" for comparison in comparisons]


def _t_test(values: Sequence[float], popmean: float) -> tuple[float, float, float, float, str]:
    """Mean, 95% t-interval, two-sided p-value against `popmean`, and the method's name.

    Values with no spread have a zero-width interval, and the t statistic is undefined:
    the p-value is then the exact sign test's over the values, which is what they support.
    """
    array = np.asarray(values, dtype=float)
    mean = float(array.mean())
    if np.ptp(array) < _SAME:
        above = int(np.sum(array - popmean > _SAME))
        differing = int(np.sum(np.abs(array - popmean) > _SAME))
        p_value = float(stats.binomtest(above, differing, 0.5).pvalue) if differing else 1.0
        return mean, mean, mean, p_value, "sign test (the seeds agree exactly: no spread for a t-interval)"
    test = stats.ttest_1samp(array, popmean)
    interval = test.confidence_interval(CONFIDENCE)
    return mean, float(interval.low), float(interval.high), float(test.pvalue), "t-test"


def _verdict(a_name: str, b_name: str, effect: float, p_value: float, better: str) -> str:
    if p_value >= ALPHA or effect == 0:
        return NO_DIFFERENCE
    return f"{a_name} {better} than {b_name}" if effect > 0 else f"{b_name} {better} than {a_name}"


def _p_text(p_value: float) -> str:
    return "p<0.001" if p_value < 0.001 else f"p={p_value:.3f}"


def _accuracies(per_seed_accuracy: Sequence[float], n_images: int) -> list[float]:
    if n_images <= 0:
        raise LabInputError(
            f"an accuracy needs validation images, got n_images={n_images}: check --subset and the split"
        )
    values = [float(value) for value in per_seed_accuracy]
    if not values:
        raise LabInputError("an accuracy needs at least one seed's value; none was recorded")
    if not all(0.0 <= value <= 1.0 for value in values):
        raise LabInputError(f"accuracies must lie between 0 and 1, got {values}")
    return values


def _correct_count(accuracy: float, n_images: int) -> int:
    correct = round(accuracy * n_images)
    # Keras accuracies are float32 ratios: a whole count to well within a thousandth of an image.
    if abs(accuracy * n_images - correct) > 1e-3:
        raise LabInputError(
            f"accuracy {accuracy} is not a whole number of correct images out of {n_images}: "
            "pass the number of validation images the accuracy was measured on"
        )
    return correct


def _correct_per_seed(
    question: str, name: str, predictions: Sequence[np.ndarray], labels: np.ndarray
) -> list[np.ndarray]:
    if len(predictions) == 0:
        raise LabInputError(f"{question}: {name} has no seed's predictions")
    correct = []
    for seed_predictions in predictions:
        seed_predictions = np.asarray(seed_predictions)
        if seed_predictions.shape != labels.shape:
            raise LabInputError(
                f"{question}: {name} predicted {seed_predictions.shape} images, "
                f"the validation labels are {labels.shape}: both arms must predict the same validation images"
            )
        correct.append(seed_predictions == labels)
    return correct


def _same_seed_count(question: str, a_name: str, a_seeds: int, b_name: str, b_seeds: int) -> None:
    if a_seeds != b_seeds:
        raise LabInputError(
            f"{question}: {a_name} ran {a_seeds} seeds and {b_name} {b_seeds}; "
            "paired comparisons need the same seeds in both arms"
        )

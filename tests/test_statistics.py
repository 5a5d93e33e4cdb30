"""lab/statistics.py: intervals against their textbook formulas, McNemar on hand-made
predictions, verdicts on clear and on small differences, and the Wilson interval's coverage."""

import math

import numpy as np
import pytest
from scipy import stats

from lab import statistics
from lab.errors import LabInputError

Z = stats.norm.ppf(0.975)


def _wilson(correct, n):
    """The Wilson score interval, written out from its formula."""
    p = correct / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def _predictions(labels, right):
    """Predictions that are right exactly where `right` is True (wrong class elsewhere)."""
    return np.where(right, labels, (labels + 1) % 5)


def test_one_seed_accuracy_has_the_wilson_interval():
    estimate = statistics.estimate_accuracy([0.7], 100)

    low, high = _wilson(70, 100)
    assert (estimate.low, estimate.high) == pytest.approx((low, high), abs=1e-12)
    assert (estimate.value, estimate.method, estimate.n_seeds, estimate.n_images) == (0.7, "wilson", 1, 100)
    # Keras reports accuracies as float32 ratios; they must still count whole images.
    assert statistics.estimate_accuracy([float(np.float32(0.43))], 100).low == pytest.approx(_wilson(43, 100)[0])


def test_several_seeds_have_the_t_interval_of_their_mean():
    per_seed = [0.62, 0.70, 0.66, 0.68]
    estimate = statistics.estimate_accuracy(per_seed, 500)

    mean, spread = np.mean(per_seed), np.std(per_seed, ddof=1)
    half = stats.t.ppf(0.975, df=3) * spread / 2
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx((mean, mean - half, mean + half))
    assert estimate.method == "t" and estimate.per_seed == per_seed and estimate.n_seeds == 4


def test_identical_seeds_give_a_zero_width_interval():
    estimate = statistics.estimate_accuracy([0.5, 0.5, 0.5], 200)
    assert estimate.low == estimate.high == estimate.value == 0.5


def test_interval_narrows_with_more_images():
    estimates = [statistics.estimate_accuracy([0.7], n) for n in (100, 1000, 10000)]
    widths = [estimate.high - estimate.low for estimate in estimates]
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] == pytest.approx(0.18, abs=0.01)  # the "about ±0.09" on 100 images


def test_wilson_interval_covers_the_true_accuracy_95_percent_of_the_time():
    true_accuracy, n_images = 0.4, 200
    draws = np.random.default_rng(0).binomial(n_images, true_accuracy, size=2000)
    intervals = {k: statistics.estimate_accuracy([k / n_images], n_images) for k in np.unique(draws)}
    covered = [intervals[k].low <= true_accuracy <= intervals[k].high for k in draws]
    assert 0.93 <= np.mean(covered) <= 0.97


@pytest.mark.parametrize(
    "accuracies, n_images, message",
    [
        ([0.5], 0, "n_images=0"),
        ([], 100, "at least one seed"),
        ([1.2], 100, "between 0 and 1"),
        ([0.705], 100, "whole number"),
    ],
)
def test_bad_accuracies_are_rejected(accuracies, n_images, message):
    with pytest.raises(LabInputError, match=message):
        statistics.estimate_accuracy(accuracies, n_images)


def test_mcnemar_exact_test_on_hand_made_predictions():
    labels = np.arange(100) % 5
    # 60 images both right, 14 only A right, 4 only B right, 22 both wrong.
    a_right = np.array([True] * 60 + [True] * 14 + [False] * 4 + [False] * 22)
    b_right = np.array([True] * 60 + [False] * 14 + [True] * 4 + [False] * 22)

    comparison = statistics.compare_predictions(
        "Experiment 2",
        "transferred",
        [_predictions(labels, a_right)],
        "scratch",
        [_predictions(labels, b_right)],
        labels,
    )

    # Exact McNemar: the 18 discordant images split 14/4, two-sided binomial against 1/2.
    expected_p = 2 * sum(math.comb(18, k) for k in range(5)) / 2**18
    assert comparison.p_value == pytest.approx(expected_p)
    assert comparison.effect == pytest.approx(0.74 - 0.64)
    assert comparison.low < comparison.effect < comparison.high
    assert comparison.verdict == "transferred better than scratch"
    assert (comparison.n_seeds, comparison.n_images) == (1, 100)


def test_mcnemar_interval_excludes_zero_exactly_when_the_test_rejects():
    labels = np.zeros(60, dtype=int)
    for only_a in range(25):
        a_right = np.arange(60) < 10 + only_a
        b_right = (np.arange(60) < 10) | ((np.arange(60) >= 40) & (np.arange(60) < 48))
        comparison = statistics.compare_predictions(
            "q", "A", [_predictions(labels, a_right)], "B", [_predictions(labels, b_right)], labels
        )
        excludes_zero = comparison.low > 0 or comparison.high < 0
        assert excludes_zero == (comparison.p_value < 0.05), only_a


def test_verdict_flips_on_a_clear_difference_and_not_on_a_small_one():
    labels = np.arange(500) % 5
    reference = np.arange(500) < 300  # B: 0.60
    clear = np.arange(500) < 350  # A: 0.70, right on every image B gets right
    # A: 0.614, 12 images only A right and 5 only B right: p = 0.14, a difference these
    # 500 images cannot confirm.
    small = (np.arange(500) < 295) | ((np.arange(500) >= 300) & (np.arange(500) < 312))

    def compare(a_right, b_right):
        return statistics.compare_predictions(
            "Experiment 3",
            "imagenet",
            [_predictions(labels, a_right)],
            "random",
            [_predictions(labels, b_right)],
            labels,
        ).verdict

    assert compare(clear, reference) == "imagenet better than random"
    assert compare(reference, clear) == "random better than imagenet"
    assert compare(small, reference) == "no difference detectable at this budget"
    assert 0.05 < statistics.compare_predictions(
        "q", "A", [_predictions(labels, small)], "B", [_predictions(labels, reference)], labels
    ).p_value < 0.5


def test_identical_arms_show_no_difference():
    labels = np.arange(50) % 5
    predictions = [_predictions(labels, np.arange(50) % 3 == 0)]
    one_seed = statistics.compare_predictions("q", "A", predictions, "B", predictions, labels)
    several = statistics.compare_accuracies("q", "A", [0.4, 0.5, 0.6], "B", [0.4, 0.5, 0.6], 50)

    for comparison in (one_seed, several):
        assert (comparison.effect, comparison.low, comparison.high, comparison.p_value) == (0, 0, 0, 1.0)
        assert comparison.verdict == statistics.NO_DIFFERENCE


def test_several_seeds_compare_the_mean_of_per_seed_differences():
    a, b = [0.70, 0.74, 0.72], [0.60, 0.66, 0.61]
    comparison = statistics.compare_accuracies("Experiment 5", "head-only", a, "full", b, 200)

    expected = stats.ttest_1samp(np.subtract(a, b), 0.0)
    assert comparison.effect == pytest.approx(np.mean(np.subtract(a, b)))
    assert comparison.p_value == pytest.approx(expected.pvalue)
    assert (comparison.low, comparison.high) == pytest.approx(tuple(expected.confidence_interval(0.95)))
    assert comparison.verdict == "head-only better than full"
    assert comparison.sentence() == (
        "head-only better than full (+0.097, 95% CI +0.059..+0.135, p=0.008; 3 seeds, 200 validation images; "
        "t-test of the per-seed differences)"
    )


def test_compare_predictions_with_several_seeds_uses_per_seed_accuracies():
    labels = np.arange(100) % 5
    a = [_predictions(labels, np.arange(100) < n) for n in (70, 72, 75)]
    b = [_predictions(labels, np.arange(100) < n) for n in (50, 49, 55)]
    by_predictions = statistics.compare_predictions("q", "A", a, "B", b, labels)
    by_accuracies = statistics.compare_accuracies("q", "A", [0.70, 0.72, 0.75], "B", [0.50, 0.49, 0.55], 100)
    assert by_predictions.effect == pytest.approx(by_accuracies.effect)
    assert by_predictions.p_value == pytest.approx(by_accuracies.p_value)


def test_seeds_agreeing_exactly_fall_back_to_the_sign_test():
    # Two seeds with the same difference: no spread for a t-test, and two seeds cannot make
    # a sign test significant, so no difference is claimed.
    comparison = statistics.compare_accuracies("q", "A", [0.62, 0.66], "B", [0.60, 0.64], 100)
    assert comparison.low == comparison.high == pytest.approx(0.02)
    assert comparison.p_value == pytest.approx(0.5)
    assert comparison.verdict == statistics.NO_DIFFERENCE


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: statistics.compare_accuracies("q", "A", [0.5], "B", [0.4], 100), "compare_predictions"),
        (lambda: statistics.compare_accuracies("q", "A", [0.5, 0.6], "B", [0.4], 100), "same seeds"),
        (
            lambda: statistics.compare_predictions("q", "A", [np.zeros(3)], "B", [np.zeros(4)], np.zeros(4)),
            "same validation images",
        ),
        (lambda: statistics.compare_times("q", "A", [1.0], "B", [2.0, 2.1]), "two or more timed rounds"),
        (lambda: statistics.compare_with_constant("q", "cnn", [0.5], 100, 0.0), "between 0 and 1"),
    ],
)
def test_comparisons_reject_inputs_they_cannot_compare(call, message):
    with pytest.raises(LabInputError, match=message):
        call()


def test_against_chance_with_one_seed_and_with_several():
    one_seed = statistics.compare_with_constant("Experiment 1", "lab CNN", [0.35], 200, 0.2)
    assert one_seed.p_value == pytest.approx(stats.binomtest(70, 200, 0.2).pvalue)
    assert one_seed.effect == pytest.approx(0.15)
    assert (one_seed.low, one_seed.high) == pytest.approx(tuple(np.subtract(_wilson(70, 200), 0.2)))
    assert one_seed.verdict == "lab CNN better than chance (0.200)"

    several = statistics.compare_with_constant("Experiment 1", "lab CNN", [0.21, 0.19, 0.22], 200, 0.2)
    assert several.p_value == pytest.approx(stats.ttest_1samp([0.21, 0.19, 0.22], 0.2).pvalue)
    assert several.verdict == statistics.NO_DIFFERENCE


def test_timing_ratio_and_its_verdict():
    frozen, unfrozen = [1.0, 1.1, 0.95, 1.05], [2.3, 2.2, 2.4, 2.35]
    comparison = statistics.compare_times("Experiment 4, mobilenet", "frozen", frozen, "unfrozen", unfrozen)

    geometric_ratio = stats.gmean(unfrozen) / stats.gmean(frozen)
    assert comparison.effect == pytest.approx(geometric_ratio)
    assert comparison.low < geometric_ratio < comparison.high
    assert comparison.verdict == "frozen faster than unfrozen"
    assert comparison.n_rounds == (4, 4)

    same = statistics.compare_times("q", "frozen", [1.0, 1.2, 0.9], "unfrozen", [1.1, 0.95, 1.15])
    assert same.verdict == statistics.NO_DIFFERENCE
    assert same.low < 1 < same.high


def test_findings_are_generated_from_the_comparisons():
    comparisons = [
        statistics.compare_accuracies(
            "Experiment 2", "transferred", [0.48, 0.50, 0.47], "scratch", [0.43, 0.44, 0.43], 500
        ),
        statistics.not_compared("Experiment 3, resnet50", "imagenet", "random", "imagenet failed"),
    ]
    lines = statistics.findings(comparisons)

    assert lines[0].startswith("Experiment 2: transferred better than scratch (+0.050, 95% CI ")
    assert "3 seeds, 500 validation images" in lines[0]
    assert lines[1] == "Experiment 3, resnet50: imagenet against random: not compared (imagenet failed)"

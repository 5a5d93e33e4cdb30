"""lab/report/statistics.py: intervals against their textbook formulas, McNemar on hand-made
predictions, verdicts on clear and on small differences, the Wilson interval's coverage, and
the two-way interval on hand-made seeds x images (its calibration: test_statistics_calibration.py)."""

import math

import numpy as np
import pytest
from scipy import stats

from lab.errors import LabInputError
from lab.report import statistics
from lab.report.statistics import Correctness

Z = stats.norm.ppf(0.975)


def _wilson(correct, n):
    """The Wilson score interval, written out from its formula."""
    p = correct / n
    centre = (p + Z**2 / (2 * n)) / (1 + Z**2 / n)
    half = Z / (1 + Z**2 / n) * math.sqrt(p * (1 - p) / n + Z**2 / (4 * n**2))
    return centre - half, centre + half


def _count(accuracy, n_images):
    return Correctness.from_count(accuracy, n_images)


def _seeds(*rights):
    """Correctness of several seeds on the same images."""
    return Correctness(tuple(np.asarray(right, dtype=bool) for right in rights))


def _predictions(labels, right):
    """Predictions that are right exactly where `right` is True (wrong class elsewhere)."""
    return np.where(right, labels, (labels + 1) % 5)


def test_one_seed_accuracy_has_the_wilson_interval():
    estimate = statistics.estimate_accuracy(_count(0.7, 100))

    low, high = _wilson(70, 100)
    assert (estimate.low, estimate.high) == pytest.approx((low, high), abs=1e-12)
    assert (estimate.value, estimate.method, estimate.n_seeds, estimate.n_images) == (0.7, "wilson", 1, 100)
    # Keras reports accuracies as float32 ratios; they must still count whole images.
    assert statistics.estimate_accuracy(_count(float(np.float32(0.43)), 100)).low == pytest.approx(_wilson(43, 100)[0])


def test_several_seeds_have_the_two_way_interval_over_seeds_and_images():
    rng = np.random.default_rng(3)
    right = rng.random((4, 50)) < 0.65
    estimate = statistics.estimate_accuracy(_seeds(*right))

    # The two-way ANOVA's mean squares, written out.
    seed_means, image_means, mean = right.mean(1), right.mean(0), right.mean()
    ms_seeds = 50 * np.sum((seed_means - mean) ** 2) / 3
    ms_images = 4 * np.sum((image_means - mean) ** 2) / 49
    residual = right - seed_means[:, None] - image_means[None, :] + mean
    ms_residual = np.sum(residual**2) / (3 * 49)
    seed_part, image_part = ms_seeds / 200, max(ms_images - ms_residual, 0) / 200
    noise = (ms_images**2 / 49 + ms_residual**2 / (3 * 49)) / 200**2 if image_part > 0 else 0
    df = (seed_part + image_part) ** 2 / (seed_part**2 / 3 + noise)
    half = stats.t.ppf(0.975, df) * math.sqrt(seed_part + image_part)
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx((mean, mean - half, mean + half))
    assert (estimate.method, estimate.n_seeds) == ("two-way t-test over seeds and images", 4)
    assert estimate.per_seed == pytest.approx(list(seed_means))


def test_images_widen_a_several_seed_interval_that_seeds_alone_would_not():
    # Every seed gets the same images right: seeds agree exactly, yet 60 images are a sample.
    right = np.arange(60) < 36
    estimate = statistics.estimate_accuracy(_seeds(right, right, right))
    assert estimate.value == pytest.approx(0.6)
    assert estimate.high - estimate.low > 0.2


def test_seeds_whose_means_tie_on_different_images_still_have_an_interval():
    # Each seed is one image behind, on another image each time (measured on experiment 5): the
    # seed means tie exactly, which says nothing of training noise; the interval must not vanish.
    labels = np.arange(100) % 5
    a = [_predictions(labels, np.arange(100) < 70)] * 3
    b = [_predictions(labels, (np.arange(100) < 70) & (np.arange(100) != wrong)) for wrong in (3, 30, 60)]

    comparison = statistics.compare_predictions("q", "A", a, "B", b, labels)

    assert comparison.effect == pytest.approx(0.01)
    assert comparison.low < 0 < comparison.high
    assert comparison.verdict == statistics.NO_DIFFERENCE


@pytest.mark.parametrize("n_images", [4, 20])
def test_seeds_right_on_every_image_have_one_seed_s_interval_over_those_images(n_images):
    """Nothing varied: a zero-width interval would claim the accuracy exactly, and one reaching 0
    (as a comparison's reaches its null) would claim nothing; the images bound it, as one seed's."""
    estimate = statistics.estimate_accuracy(_seeds(*[np.ones(n_images)] * 3))

    assert (estimate.low, estimate.high) == pytest.approx(_wilson(n_images, n_images), abs=1e-12)
    assert (estimate.value, estimate.n_seeds, estimate.n_images) == (1.0, 3, n_images)


def test_split_seeds_that_tie_have_wilson_s_interval_over_all_their_images():
    per_seed = tuple(np.arange(10) != wrong for wrong in (1, 4, 7))
    estimate = statistics.estimate_accuracy(Correctness(per_seed, shared_images=False))

    assert (estimate.low, estimate.high) == pytest.approx(_wilson(27, 30), abs=1e-12)
    assert (estimate.value, estimate.n_seeds, estimate.n_images) == (pytest.approx(0.9), 3, 10)


def test_a_split_per_seed_has_the_t_interval_of_the_seeds():
    per_seed = [np.arange(40) < n for n in (25, 28, 30)]
    estimate = statistics.estimate_accuracy(Correctness(tuple(per_seed), shared_images=False))
    accuracies = [25 / 40, 28 / 40, 30 / 40]
    interval = stats.ttest_1samp(accuracies, 0).confidence_interval(0.95)
    assert (estimate.low, estimate.high) == pytest.approx((interval.low, interval.high))


def test_interval_narrows_with_more_images():
    estimates = [statistics.estimate_accuracy(_count(0.7, n)) for n in (100, 1000, 10000)]
    widths = [estimate.high - estimate.low for estimate in estimates]
    assert widths[0] > widths[1] > widths[2]
    assert widths[0] == pytest.approx(0.18, abs=0.01)  # the "about ±0.09" on 100 images


def test_wilson_interval_covers_the_true_accuracy_95_percent_of_the_time():
    true_accuracy, n_images = 0.4, 200
    draws = np.random.default_rng(0).binomial(n_images, true_accuracy, size=2000)
    intervals = {k: statistics.estimate_accuracy(_count(k / n_images, n_images)) for k in np.unique(draws)}
    covered = [intervals[k].low <= true_accuracy <= intervals[k].high for k in draws]
    assert 0.93 <= np.mean(covered) <= 0.97


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: _count(0.5, 0), "n_images=0"),
        (lambda: Correctness(()), "at least one seed"),
        (lambda: _count(1.2, 100), "between 0 and 1"),
        (lambda: _count(0.705, 100), "whole number"),
    ],
)
def test_bad_accuracies_are_rejected(make, message):
    with pytest.raises(LabInputError, match=message):
        statistics.estimate_accuracy(make())


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
    several = statistics.compare_predictions("q", "A", predictions * 3, "B", predictions * 3, labels)

    for comparison in (one_seed, several):
        assert (comparison.effect, comparison.low, comparison.high, comparison.p_value) == (0, 0, 0, 1.0)
        assert comparison.verdict == statistics.NO_DIFFERENCE


def test_several_seeds_compare_the_paired_difference_over_seeds_and_images():
    labels = np.arange(200) % 5
    a = [_predictions(labels, np.arange(200) < n) for n in (140, 148, 144)]
    b = [_predictions(labels, np.arange(200) < n) for n in (120, 132, 122)]
    comparison = statistics.compare_predictions("Experiment 5", "head-only", a, "full", b, labels)

    differences = np.stack([(x == labels).astype(int) - (y == labels) for x, y in zip(a, b, strict=True)])
    expected = statistics.two_way_intervals(differences)
    assert comparison.effect == pytest.approx(np.mean([0.10, 0.08, 0.11]))
    assert (comparison.low, comparison.high, comparison.p_value) == pytest.approx(
        (float(expected.low), float(expected.high), float(expected.p_value))
    )
    assert comparison.verdict == "head-only better than full"
    assert comparison.row()["evidence"] == "3 seeds x 200 images"


def test_seeds_that_agree_do_not_hide_the_images():
    # A leads B by 3-4 images in each of three seeds: a t-interval over seeds alone is about
    # ±0.014 wide; over images and seeds the lead rests on a few images, and is far less sure.
    labels = np.arange(100) % 5
    a = [_predictions(labels, np.arange(100) < n) for n in (52, 53, 54)]
    b = [_predictions(labels, np.arange(100) < n) for n in (49, 50, 50)]
    over_seeds = stats.ttest_1samp([0.03, 0.03, 0.04], 0)

    comparison = statistics.compare_predictions("q", "A", a, "B", b, labels)
    seeds_low, seeds_high = over_seeds.confidence_interval(0.95)
    assert comparison.high - comparison.low > 2 * (seeds_high - seeds_low)
    assert comparison.p_value > 3 * over_seeds.pvalue


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: statistics.compare_correctness("q", "A", _seeds(np.ones(4), np.ones(4)), "B", _seeds(np.ones(4))),
            "same seeds",
        ),
        (
            lambda: statistics.compare_predictions("q", "A", [np.zeros(3)], "B", [np.zeros(4)], np.zeros(4)),
            "same validation images",
        ),
        (lambda: statistics.compare_times("q", "A", [1.0], "B", [2.0, 2.1]), "two or more timed rounds"),
        (lambda: statistics.compare_with_constant("q", "cnn", _count(0.5, 100), 0.0), "between 0 and 1"),
    ],
)
def test_comparisons_reject_inputs_they_cannot_compare(call, message):
    with pytest.raises(LabInputError, match=message):
        call()


def test_against_chance_with_one_seed_and_with_several():
    one_seed = statistics.compare_with_constant("Experiment 1", "lab CNN", _count(0.35, 200), 0.2)
    # The score test, whose inversion is the Wilson interval below.
    z = (0.35 - 0.2) / math.sqrt(0.2 * 0.8 / 200)
    assert one_seed.p_value == pytest.approx(2 * stats.norm.sf(z))
    assert one_seed.effect == pytest.approx(0.15)
    assert (one_seed.low, one_seed.high) == pytest.approx(tuple(np.subtract(_wilson(70, 200), 0.2)))
    assert one_seed.verdict == "lab CNN better than chance (0.200)"

    rng = np.random.default_rng(1)
    several = statistics.compare_with_constant("Experiment 1", "lab CNN", _seeds(*(rng.random((3, 200)) < 0.21)), 0.2)
    assert several.verdict == statistics.NO_DIFFERENCE
    assert several.low < 0 < several.high


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


def test_findings_rows_are_generated_from_the_comparisons():
    labels = np.arange(100) % 5
    a = [_predictions(labels, np.arange(100) < 50)]
    b = [_predictions(labels, np.arange(100) < 45)]
    small = statistics.compare_predictions("Experiment 2", "transferred", a, "scratch", b, labels)
    missing = statistics.not_compared("Experiment 3, resnet50", "imagenet", "random", "imagenet failed")

    row = small.row()
    assert row["question"] == "Experiment 2: transferred vs scratch"
    assert row["verdict"].startswith("no difference detectable; would detect ±0.")
    assert row["difference"] == "+0.050" and row["evidence"] == "1 seed x 100 images (these trained models)"
    assert missing.row()["verdict"] == "not compared: imagenet failed"
    assert tuple(row) == statistics.FINDINGS_COLUMNS

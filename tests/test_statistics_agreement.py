"""Every verdict's p-value, interval and power agree with each other, on many random inputs.

For each method of lab/report/statistics.py (one seed's McNemar, the two-way interval, the
t-interval over seeds of --split-per-seed, the comparison with a constant, the ratio of epoch
times), p < 0.05 exactly when the 95% interval excludes the null; at a true difference equal to
a row's "would detect ±x", simulated experiments reject about 80% of the time; and in a
Holm-adjusted family, each interval is at the level of the step that decided its verdict.
Each simulation is vectorised over its experiments: a few seconds in all.
"""

import numpy as np
import pytest
from scipy import stats

from lab.report import statistics
from lab.report.statistics import ALPHA, NO_DIFFERENCE, Correctness

CASES = 400
# Simulated experiments per power check: a rejection rate's Monte Carlo standard error is then
# about 0.013 at 80%; the band is 75-85% widened by two of them.
POWER_RUNS = 1000
POWER_BAND = (0.725, 0.875)


def agree(p_value, low, high, null) -> None:
    """p < ALPHA exactly where [low, high] excludes `null` (p-values at ALPHA itself left out)."""
    p_value, low, high = (np.asarray(value, dtype=float) for value in (p_value, low, high))
    decided = np.abs(p_value - ALPHA) > 1e-9
    excludes = (low > null + 1e-12) | (high < null - 1e-12)
    disagree = decided & ((p_value < ALPHA) != excludes)
    assert not disagree.any(), (
        f"{disagree.sum()} of {disagree.size} disagree, e.g. p={p_value[disagree][:3]}, "
        f"interval {low[disagree][:3]}..{high[disagree][:3]}"
    )


def test_mcnemar_p_and_interval_agree():
    rng = np.random.default_rng(0)
    only_a, only_b = rng.integers(0, 30, CASES), rng.integers(0, 30, CASES)
    intervals = statistics.mcnemar_intervals(only_a, only_b, 100)
    agree(intervals.p_value, intervals.low, intervals.high, 0.0)


@pytest.mark.parametrize("n_seeds", [2, 3, 10])
def test_two_way_p_and_interval_agree(n_seeds):
    rng = np.random.default_rng(n_seeds)
    # Paired differences (-1, 0, 1) with an effect that varies between experiments, and a few
    # experiments with no spread at all.
    effect = rng.uniform(-0.15, 0.15, (CASES, 1, 1))
    draws = rng.random((CASES, n_seeds, 40))
    scores = np.where(draws < 0.15 + effect, 1, np.where(draws > 0.85 + effect, -1, 0)).astype(float)
    scores[:10] = rng.integers(-1, 2, (10, 1, 1))
    intervals = statistics.two_way_intervals(scores)
    agree(intervals.p_value, intervals.low, intervals.high, 0.0)


@pytest.mark.parametrize("n_seeds", [2, 3, 10])
def test_split_per_seed_t_p_and_interval_agree(n_seeds):
    rng = np.random.default_rng(10 + n_seeds)
    values = np.round(rng.normal(rng.uniform(-0.05, 0.05, (CASES, 1)), 0.03, (CASES, n_seeds)), 2)
    # Seeds that tie exactly: an interval of no width, and the sign test's p-value.
    values[:20] = np.round(rng.uniform(-0.05, 0.05, (20, 1)), 2)
    intervals = statistics.seed_intervals(values)
    agree(intervals.p_value, intervals.low, intervals.high, 0.0)


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_comparison_with_a_constant_p_and_interval_agree(n_seeds):
    rng = np.random.default_rng(20 + n_seeds)
    p_values, lows, highs = [], [], []
    for _ in range(CASES // 4):
        constant = rng.uniform(0.1, 0.6)
        right = rng.random((n_seeds, 80)) < constant + rng.uniform(-0.15, 0.15)
        comparison = statistics.compare_with_constant("q", "CNN", Correctness(tuple(right)), constant)
        p_values.append(comparison.p_value)
        lows.append(comparison.low)
        highs.append(comparison.high)
    agree(p_values, lows, highs, 0.0)


def test_epoch_time_ratio_p_and_interval_agree():
    rng = np.random.default_rng(30)
    p_values, lows, highs = [], [], []
    for _ in range(CASES // 4):
        rounds = rng.integers(2, 6, 2)
        a = np.exp(rng.normal(0.0, 0.1, rounds[0]))
        b = np.exp(rng.normal(rng.uniform(-0.15, 0.15), 0.1, rounds[1]))
        comparison = statistics.compare_times("q", "frozen", list(a), "unfrozen", list(b))
        p_values.append(comparison.p_value)
        lows.append(comparison.low)
        highs.append(comparison.high)
    agree(p_values, lows, highs, 1.0)


def _paired_differences(rng, runs: int, n_seeds: int, n_images: int, difference: float) -> np.ndarray:
    """(runs, seeds, images) paired differences of two arms whose expected difference over new
    images and new training runs is `difference`: each image leans its own way, each seed too.
    One seed's row speaks of its two trained models only, so with one seed no seed leans."""
    seed_spread = 0.03 if n_seeds > 1 else 0.0
    lean = rng.normal(difference, 0.1, (runs, 1, n_images)) + rng.normal(0, seed_spread, (runs, n_seeds, 1))
    discordant = 0.3
    up = np.clip((discordant + lean) / 2, 0, 1)
    down = np.clip((discordant - lean) / 2, 0, 1)
    draws = rng.random((runs, n_seeds, n_images))
    return np.where(draws < up, 1.0, np.where(draws > 1 - down, -1.0, 0.0))


def _mcnemar(scores: np.ndarray, n_images: int, alpha: float = ALPHA) -> statistics.Intervals:
    only_a, only_b = (scores[:, 0] == 1).sum(-1), (scores[:, 0] == -1).sum(-1)
    return statistics.mcnemar_intervals(only_a, only_b, n_images, alpha)


def _intervals(scores: np.ndarray, n_images: int) -> statistics.Intervals:
    return _mcnemar(scores, n_images) if scores.shape[1] == 1 else statistics.two_way_intervals(scores)


@pytest.mark.parametrize("n_seeds", [1, 3, 10])
def test_a_true_difference_of_would_detect_x_is_found_about_80_percent_of_the_time(n_seeds):
    """The detectable size a no-difference row states, from experiments with no true difference,
    taken as the true difference: the test then rejects with the power the row claims."""
    rng = np.random.default_rng(40 + n_seeds)
    n_images = 200
    null = _intervals(_paired_differences(rng, POWER_RUNS, n_seeds, n_images, 0.0), n_images)
    detectable = float(np.median(null.detectable()))
    found = _intervals(_paired_differences(rng, POWER_RUNS, n_seeds, n_images, detectable), n_images)
    power = float(np.mean(found.p_value < ALPHA))
    assert POWER_BAND[0] <= power <= POWER_BAND[1], f"{n_seeds} seeds: ±{detectable:.3f} found {power:.1%}"


def test_in_a_holm_family_the_detectable_size_is_the_verdicts_level_s():
    """The first Holm step of a family of nine tests at ALPHA / 9: the size a row states at that
    level is found about 80% of the time there (at ALPHA's level, it would be far less)."""
    rng = np.random.default_rng(50)
    n_images, family = 200, 9
    null = statistics.two_way_intervals(_paired_differences(rng, POWER_RUNS, 10, n_images, 0.0))
    detectable = float(np.median(statistics.detectable_size(null.standard_error, null.df, ALPHA / family)))
    assert detectable > float(np.median(null.detectable()))
    found = statistics.two_way_intervals(_paired_differences(rng, POWER_RUNS, 10, n_images, detectable))
    power = float(np.mean(found.p_value < ALPHA / family))
    assert POWER_BAND[0] <= power <= POWER_BAND[1], f"±{detectable:.3f} found {power:.1%} at ALPHA/{family}"


@pytest.mark.parametrize("n_seeds", [1, 3])
def test_holm_adjusted_intervals_exclude_zero_exactly_where_the_verdict_names_a_winner(n_seeds):
    rng = np.random.default_rng(60 + n_seeds)
    for _ in range(40):
        family = []
        for effect in rng.choice([0.0, 0.05, 0.1], 9):
            scores = _paired_differences(rng, 1, n_seeds, 150, effect)[0]
            a = Correctness(tuple(scores == 1))
            b = Correctness(tuple(scores == -1))
            family.append(statistics.compare_correctness("q", "A", a, "B", b))
        for comparison in statistics.adjusted_for_family(family):
            excludes = comparison.low > 0 or comparison.high < 0
            assert excludes == (comparison.verdict != NO_DIFFERENCE), comparison
            assert comparison.confidence >= 1 - ALPHA
            assert f"{comparison.confidence:.1%}, Holm's step" in comparison.row()["95% CI"] or (
                comparison.confidence == pytest.approx(1 - ALPHA)
            )


def test_a_holm_step_interval_is_the_t_interval_at_that_level():
    rng = np.random.default_rng(70)
    scores = _paired_differences(rng, 1, 3, 150, 0.05)[0]
    comparison = statistics.compare_correctness(
        "q", "A", Correctness(tuple(scores == 1)), "B", Correctness(tuple(scores == -1))
    )
    at = statistics.at_level(comparison, ALPHA / 4)
    half = stats.t.ppf(1 - ALPHA / 8, comparison.df) * comparison.standard_error
    assert (at.low, at.high) == pytest.approx((comparison.effect - half, comparison.effect + half))
    assert at.detectable > comparison.detectable and at.confidence == pytest.approx(1 - ALPHA / 4)

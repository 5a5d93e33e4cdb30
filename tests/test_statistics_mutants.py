"""lab/report/statistics.py: the cases mutation testing found untested (README, "Mutation testing of the statistics").

Written-out formulas for what the other three modules of its tests reach only through the
report (`independent_seed_intervals`, the method note), and the edges of the rest: leading
experiment axes, tied seeds, Holm's steps, Welch's interval, the rows' text. NumPy only: seconds.

The mutants no test kills, by mutmut's name (`mutmut show lab.report.statistics.NAME__mutmut_N`;
`x_` before a function, `xǁClassǁ` before a method), and why:

Equivalent: no input the lab can give tells them from the code.
- `zip(..., strict=True)` loosened (strict=False or None, or dropped): the sequences zipped have
  one length by construction (checked just above, or built from one list).
  xǁCorrectnessǁfrom_predictions 7, 10, 11; x_independent_seed_intervals 57, 60, 61, 66, 69, 70,
  122, 125, 126, 143, 146, 147; x_compare_correctness 13, 16, 17, 31, 34, 35;
  x_adjusted_for_family 63, 67, 68; xǁComparisonǁrow 11, 14, 15, 67, 70, 71.
- `dtype=float` dropped or None (`astype(None)`): the inputs are bool, int or float arrays, and
  every later step (means, divisions, logs, scipy) computes in float64 all the same.
  x_detectable_size 3, 5, 12, 14; x_two_way_intervals 4, 6; x_independent_seed_intervals 3, 5,
  7, 9; x_seed_intervals 4, 6; x_mcnemar_intervals 3, 5, 7, 9; x_compare_correctness 27, 28;
  x_compare_times 4, 6.
- A tie threshold moved: `<=` for `<` (or back) at _SAME or _SAME**2, and _SAME**3 for
  _SAME**2. Means of 0/1 (or -1/0/1) scores that tie are equal to the last bit (equal sums over
  equal counts) and the variance of equal values is 0 up to rounding (< 1e-30), while seed means
  that differ give MS_seeds >= 1 / (2 x images) > _SAME * 2 below 250 million images: only a
  value at the threshold itself, or 1e-10 from another, would tell. (A variance of 1e-10 is
  reachable, and test_one_differing_image_among_many_still_has_an_interval_of_some_width kills
  _SAME * 2 for `flat`.)
  x_two_way_intervals 69, 70, 71, 149, 151; x_independent_seed_intervals 171, 173;
  x__seed_part 52, 53, 54; x_seed_intervals 27, 29; x_compare_times 35, 44;
  xǁComparisonǁrow 50; x__correct_count 7; x__sign_test 7, 17.
- A branch that gives the same value on every input that reaches it. McNemar with no discordant
  image: binom.cdf(0, 0, 1/2) = 1 and 0 x (2 x share - 1) = 0 = the mean; with one, 2 x
  binom.cdf(0, 1, 1/2) = 1 (x_mcnemar_intervals 79, 80, 103, 118). The sign test decides only
  rows of no spread, whose values are all equal: all on one side of the reference or on it, so
  the smaller count is 0, p = 2 / 2**n <= 1 or 1, and never ALPHA (x__sign_test 6, 32, 33, 38;
  x__t_intervals 49). An effect of 0 returns before `effect >= 0` (x__verdict 7). The Holm rank
  at `first_kept` takes step_alpha[first_kept] on either branch (x_adjusted_for_family 51).
  `(n_seeds or 1) > 1` is `(n_seeds or 0) > 1` (x_method_note 33). Infinite degrees of freedom
  take the normal size and a share of 1 whatever `safe_df` holds there (x_detectable_size 41).
- Warnings: numpy's divide (or invalid) flag dropped where no such operation happens (a variance
  over a zero denominator is zero, so only 0/0 occurs; McNemar's scipy calls handle a zero count
  themselves), and every warning ignored instead of RuntimeWarning where scipy raises only that.
  test_independent_seed_intervals_compute_without_numpy_warnings runs the edge cases with
  warnings as errors. x_two_way_intervals 132, 134; x_independent_seed_intervals 148, 150;
  x_mcnemar_intervals 15, 16, 17, 18; x_detectable_size 71.
- The detectable size's bisection: a bracket still above the root (its lower end 0), 41 halvings
  for 40, or a power exactly at POWER moved to the other side: the same root to 2**-40 of the
  bracket, far below the three decimals a row prints. x_detectable_size 53, 54, 60, 61, 62, 67,
  75, 102, 109.
- Library defaults: proportion_ci's confidence is 0.95 without CONFIDENCE (x__wilson_estimate
  4); scipy's ttest_ind reads equal_var=None as False, Welch's test (x_compare_times 50);
  numpy's default sort keeps tied p-values in their order for families of the lab's size (20
  tied ones in test_tied_p_values_take_holm_s_steps_in_the_order_given), and reads "STABLE" as
  "stable" (x_adjusted_for_family 11, 13, 15).
- A several-seed accuracy's reference (1.0 for 0, x_estimate_accuracy 18) moves only its p-value,
  which an accuracy does not report, and the reach of an interval of no spread, which Wilson's
  interval replaces; the seeds of that interval are identical on shared images, so any one of
  them gives it (x_estimate_accuracy 24).
"""

import dataclasses
import math
import pathlib
import warnings

import numpy as np
import pytest
from scipy import stats

from lab.errors import LabInputError
from lab.report import statistics
from lab.report.statistics import ALPHA, NO_DIFFERENCE, NOT_COMPARED, Correctness

T = stats.t.ppf
EXAMPLE_REPORT = pathlib.Path(__file__).resolve().parents[1] / "reports" / "example-smoke.md"


def _seed_part(scores):
    """One arm's (MS_seeds / images, MS_residual, residual df), the two-way ANOVA written out."""
    seeds, images = scores.shape
    mean = scores.mean()
    seed_means = [scores[s].mean() for s in range(seeds)]
    image_means = [scores[:, i].mean() for i in range(images)]
    ms_seeds = images * sum((m - mean) ** 2 for m in seed_means) / (seeds - 1)
    residual_df = (seeds - 1) * (images - 1)
    ms_residual = sum(
        (scores[s, i] - seed_means[s] - image_means[i] + mean) ** 2 for s in range(seeds) for i in range(images)
    ) / residual_df
    if ms_seeds < 1e-18:
        ms_seeds = ms_residual
    return ms_seeds / images, ms_residual, residual_df


def _independent(a, b):
    """`independent_seed_intervals` of one experiment, from its docstring: (mean, low, high, p, df)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    images = a.shape[1]
    parts = [_seed_part(x) if len(x) > 1 else None for x in (a, b)]
    parts = [part or next(p for p in parts if p) for part in parts]
    counts = [len(a), len(b)]
    seed_var = [parts[k][0] / counts[k] for k in range(2)]
    residual_var = [parts[k][1] / counts[k] for k in range(2)]
    differences = a.mean(axis=0) - b.mean(axis=0)
    mean, spread = differences.mean(), differences.var(ddof=1)
    image_part = max(spread - residual_var[0] - residual_var[1], 0.0) / images
    variance = seed_var[0] + seed_var[1] + image_part
    noise = sum(seed_var[k] ** 2 / max(counts[k] - 1, 1) for k in range(2))
    if image_part > 0:
        noise += (spread**2 / (images - 1) + sum(residual_var[k] ** 2 / parts[k][2] for k in range(2))) / images**2
    df = variance**2 / noise
    half = T(0.975, df) * math.sqrt(variance)
    p = 2 * stats.t.sf(abs(mean) / math.sqrt(variance), df)
    return mean, mean - half, mean + half, p, df


def _independent_cases():
    rng = np.random.default_rng(5)
    cases = {
        "3 against 2 seeds": (rng.random((3, 30)) < 0.7, rng.random((2, 30)) < 0.5),
        "2 against 4 seeds": (rng.random((2, 30)) < 0.6, rng.random((4, 30)) < 0.6),
        "one baseline seed": (rng.random((3, 30)) < 0.7, rng.random((1, 30)) < 0.6),
        "one seed of ours": (rng.random((1, 30)) < 0.7, rng.random((3, 30)) < 0.6),
    }
    # Every image right in two of A's three seeds and one of B's two (a few seeds apart): the
    # images' differences vary less than the seeds' noise explains, and the image part is clipped.
    cells = np.arange(30)
    a = np.stack([(cells + seed) % 3 != 0 for seed in range(3)])
    a[0, :4] = True
    cases["image part clipped"] = (a, np.stack([(cells + seed) % 2 == 0 for seed in range(2)]))
    # Seed means that tie exactly (each seed one image off, a different image each time).
    tied = np.stack([np.arange(30) != wrong for wrong in (2, 9, 17)]) & (np.arange(30) < 24)
    cases["tied seeds"] = (tied, rng.random((2, 30)) < 0.5)
    return cases


@pytest.mark.parametrize("case", list(_independent_cases()))
def test_independent_seed_interval_is_its_written_out_formula(case):
    a, b = _independent_cases()[case]
    intervals = statistics.independent_seed_intervals(a, b)
    expected = _independent(a, b)
    got = (intervals.mean, intervals.low, intervals.high, intervals.p_value, intervals.df)
    assert tuple(float(x) for x in got) == pytest.approx(expected, rel=1e-9)
    _, low, high, _, df = expected
    assert float(intervals.standard_error) == pytest.approx((high - low) / 2 / T(0.975, df))


def test_independent_seed_intervals_of_experiments_side_by_side_are_each_one_s():
    """A leading axis of experiments: each row as if computed alone."""
    cases = [case for case in _independent_cases().values() if len(case[0]) == 3 and len(case[1]) == 2]
    together = statistics.independent_seed_intervals(
        np.stack([a for a, _ in cases]), np.stack([b for _, b in cases])
    )
    for row, (a, b) in enumerate(cases):
        alone = statistics.independent_seed_intervals(a, b)
        for field in ("mean", "low", "high", "p_value", "standard_error", "df"):
            assert getattr(together, field)[row] == pytest.approx(float(getattr(alone, field)), rel=1e-12), field


def test_independent_seeds_without_any_spread_take_the_sign_test():
    ones, zeros = np.ones((3, 12)), np.zeros((2, 12))
    better = statistics.independent_seed_intervals(ones, zeros)
    assert (float(better.mean), float(better.low), float(better.high)) == (1.0, 1.0, 1.0)
    # All 12 images differ one way: the two-sided sign test's p-value.
    assert float(better.p_value) == pytest.approx(2 / 2**12)
    same = statistics.independent_seed_intervals(ones, ones[:2])
    assert (float(same.mean), float(same.low), float(same.high), float(same.p_value)) == (0.0, 0.0, 0.0, 1.0)


@pytest.mark.parametrize(
    "a, b, message",
    [
        (np.ones((3, 5)), np.ones((2, 4)), "^both arms must predict the same validation images, two or more of them$"),
        (np.ones((3, 1)), np.ones((2, 1)), "^both arms must predict the same validation images, two or more of them$"),
        (np.ones((1, 5)), np.ones((1, 5)), "^independent seeds need two or more seeds in one arm$"),
    ],
)
def test_independent_seed_intervals_reject_what_they_cannot_pair(a, b, message):
    with pytest.raises(LabInputError, match=message):
        statistics.independent_seed_intervals(a, b)


def test_independent_seed_intervals_accept_two_images_and_two_seeds():
    intervals = statistics.independent_seed_intervals(np.array([[1, 0], [1, 1]]), np.array([[0, 0]]))
    assert float(intervals.mean) == pytest.approx(0.75)


def test_independent_seed_intervals_compute_without_numpy_warnings():
    """Seeds that tie exactly and images that explain nothing divide by zero inside: silently."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for a, b in [*_independent_cases().values(), (np.ones((3, 12)), np.zeros((2, 12)))]:
            statistics.independent_seed_intervals(a, b)
        statistics.two_way_intervals(np.ones((3, 12)))
        statistics.two_way_intervals(np.zeros((3, 12)))
        statistics.mcnemar_intervals(np.array([0, 3, 0, 5]), np.array([0, 0, 4, 5]), 20)


def _clopper_pearson(only_a, only_b, n_images, alpha=ALPHA):
    """McNemar's interval from the exact binomial interval of A's share of the discordant images."""
    discordant = only_a + only_b
    if discordant == 0:
        return 0.0, 0.0, 1.0
    interval = stats.binomtest(only_a, discordant).proportion_ci(1 - alpha, method="exact")
    p = stats.binomtest(only_a, discordant, 0.5).pvalue
    return discordant / n_images * (2 * interval.low - 1), discordant / n_images * (2 * interval.high - 1), p


@pytest.mark.parametrize("only_a, only_b", [(0, 0), (1, 0), (0, 1), (1, 1), (0, 6), (6, 0), (2, 9), (7, 7), (12, 3)])
def test_mcnemar_interval_is_the_exact_binomial_interval_of_the_discordant_share(only_a, only_b):
    intervals = statistics.mcnemar_intervals(np.array(only_a), np.array(only_b), 50)
    low, high, p = _clopper_pearson(only_a, only_b, 50)
    assert (float(intervals.low), float(intervals.high), float(intervals.p_value)) == pytest.approx((low, high, p))
    assert float(intervals.mean) == pytest.approx((only_a - only_b) / 50)
    # Each discordant image a fair coin under no difference; at least one image's worth.
    assert float(intervals.standard_error) == pytest.approx(math.sqrt(max(only_a + only_b, 1)) / 50)
    at_half = statistics.mcnemar_intervals(np.array(only_a), np.array(only_b), 50, ALPHA / 2)
    expected = _clopper_pearson(only_a, only_b, 50, ALPHA / 2)[:2]
    assert (float(at_half.low), float(at_half.high)) == pytest.approx(expected)


def _welch(a, b):
    """Welch's t on log times, written out: (ratio, low, high, p, standard error, df, detectable)."""
    la, lb = np.log(a), np.log(b)
    va, vb = la.var(ddof=1) / la.size, lb.var(ddof=1) / lb.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (la.size - 1) + vb**2 / (lb.size - 1))
    d = lb.mean() - la.mean()
    half = T(0.975, df) * se
    p = 2 * stats.t.sf(abs(d) / se, df)
    return math.exp(d), math.exp(d - half), math.exp(d + half), p, se, df, math.exp((T(0.975, df) + T(0.8, df)) * se)


def test_epoch_time_ratio_is_welch_s_t_on_log_times_written_out():
    frozen, unfrozen = [1.0, 1.1, 0.95, 1.05, 1.02], [2.3, 2.0, 2.6]
    comparison = statistics.compare_times("Experiment 4", "frozen", frozen, "unfrozen", unfrozen)
    got = (comparison.effect, comparison.low, comparison.high, comparison.p_value, comparison.standard_error,
           comparison.df, comparison.detectable)
    assert got == pytest.approx(_welch(np.array(frozen), np.array(unfrozen)))
    assert (comparison.question, comparison.a_name, comparison.b_name, comparison.measure) == (
        "Experiment 4", "frozen", "unfrozen", "ratio"
    )
    assert comparison.method == "Welch's t-test on log epoch times"
    row = comparison.row()
    assert row["difference"] == f"{comparison.effect:.2f}x" and row["evidence"] == "5 + 3 timed epochs, one process"
    same = statistics.compare_times("q", "A", [1.0, 1.2, 0.9], "B", [1.1, 0.95, 1.15])
    assert same.row()["verdict"] == f"no difference detectable; would detect {same.detectable:.2f}x"


def test_epoch_times_without_spread_give_a_point_and_a_sure_verdict():
    same = statistics.compare_times("q", "A", [2.0, 2.0], "B", [2.0, 2.0])
    assert (same.effect, same.low, same.high, same.p_value, same.standard_error) == (1.0, 1.0, 1.0, 1.0, 0.0)
    assert (same.detectable, same.df) == (1.0, math.inf)
    assert same.verdict == NO_DIFFERENCE
    faster = statistics.compare_times("q", "A", [1.0, 1.0], "B", [2.0, 2.0])
    assert (faster.effect, faster.low, faster.high, faster.p_value) == pytest.approx((2.0, 2.0, 2.0, 0.0))
    assert faster.verdict == "A faster than B"
    # Times equal to the tenth digit are one figure; to the fifth they are not.
    tenth = statistics.compare_times("q", "A", [1.0, 1.0 + 1e-10], "B", [2.0, 2.0])
    assert tenth.low == tenth.effect == tenth.high and tenth.p_value == 0.0
    nearly = statistics.compare_times("q", "A", [1.0, 1.0 + 1e-5], "B", [2.0, 2.0 + 2e-5])
    assert nearly.low < nearly.high and nearly.df < math.inf


@pytest.mark.parametrize("seconds", [[1.0, 0.0], [1.0, -1.0], [1.0, math.inf], [1.0, math.nan]])
def test_epoch_times_must_be_positive_seconds(seconds):
    with pytest.raises(LabInputError, match="A's epoch times must be positive seconds"):
        statistics.compare_times("q", "A", seconds, "B", [1.0, 1.1])


def test_a_ratio_at_a_holm_step_s_level_is_the_t_interval_of_the_log():
    comparison = statistics.compare_times("q", "A", [1.0, 1.1, 0.95, 1.05], "B", [1.3, 1.2, 1.45])
    at = statistics.at_level(comparison, ALPHA / 4)
    half = T(1 - ALPHA / 8, comparison.df) * comparison.standard_error
    assert (at.low, at.high) == pytest.approx((comparison.effect * math.exp(-half), comparison.effect * math.exp(half)))
    detectable = statistics.detectable_size(comparison.standard_error, comparison.df, ALPHA / 4)
    assert at.detectable == pytest.approx(math.exp(float(detectable)))
    assert at.confidence == pytest.approx(1 - ALPHA / 4)


def test_at_level_leaves_what_it_cannot_recompute():
    comparison = statistics.compare_times("q", "A", [1.0, 1.1, 0.95], "B", [1.3, 1.2, 1.45])
    for field in ("standard_error", "df"):
        unknown = dataclasses.replace(comparison, **{field: None})
        assert statistics.at_level(unknown, ALPHA / 4) is unknown
    missing = statistics.not_compared("q", "A", "B", "B failed")
    assert statistics.at_level(missing, ALPHA / 4) is missing
    # No spread at all: the interval (which reaches 0 where the sign test cannot reject) stays.
    flat = statistics.compare_correctness("q", "A", _seeds(np.ones(5), np.ones(5), np.ones(5)), "B",
                                          _seeds(np.zeros(5), np.zeros(5), np.zeros(5)))
    assert (flat.low, flat.high, flat.standard_error) == (0.0, 1.0, 0.0)
    at = statistics.at_level(flat, ALPHA / 3)
    assert (at.low, at.high) == (0.0, 1.0)


def _seeds(*rights, shared_images=True):
    return Correctness(tuple(np.asarray(right, dtype=bool) for right in rights), shared_images)


def _with_p(p_value, effect=0.1, name="A"):
    """A compared difference whose two-sided p-value is `p_value` (a t of 10 degrees of freedom)."""
    standard_error = abs(effect) / stats.t.isf(p_value / 2, 10)
    verdict = f"{name} better than B"
    return statistics.Comparison(
        "q", name, "B", "difference", effect, effect - 0.2, effect + 0.2, p_value, "t", verdict,
        n_seeds=3, n_images=100, standard_error=standard_error, df=10.0,
    )


def _holm(p_values):
    """Holm's adjusted p-values, written out: the i-th smallest times (m - i), running maximum, at most 1."""
    m = len(p_values)
    order = sorted(range(m), key=lambda i: p_values[i])
    adjusted, running = [0.0] * m, 0.0
    for rank, i in enumerate(order):
        running = max(running, p_values[i] * (m - rank))
        adjusted[i] = min(running, 1.0)
    return adjusted


@pytest.mark.parametrize(
    "p_values, levels",
    [
        # Rejected, rejected, kept: the kept one at the first step that did not reject (ALPHA / 1).
        ([0.03, 0.001, 0.01], [1, 3, 2]),
        # Every step rejects: each at its own step.
        ([0.004, 0.001, 0.02], [2, 3, 1]),
        # The first step does not reject: all at ALPHA / 3; adjusted p-values capped at 1.
        ([0.7, 0.6, 0.04], [3, 3, 3]),
        # Two of them.
        ([0.04, 0.01], [1, 2]),
    ],
)
def test_holm_adjustment_and_its_levels_written_out(p_values, levels):
    family = [_with_p(p, name=f"A{i}") for i, p in enumerate(p_values)]
    missing = statistics.not_compared("q", "C", "B", "C failed")
    adjusted = statistics.adjusted_for_family([*family, missing])
    assert adjusted[-1] is missing
    for comparison, original, p, divisor in zip(adjusted, family, _holm(p_values), levels, strict=False):
        assert comparison.p_adjusted == pytest.approx(p)
        assert comparison.family_size == len(p_values)
        assert comparison.confidence == pytest.approx(1 - ALPHA / divisor)
        assert comparison.verdict == (original.verdict if p < ALPHA else NO_DIFFERENCE)


def test_holm_at_alpha_itself_does_not_reject():
    family = [_with_p(ALPHA / 4, name="A0"), *(_with_p(0.5, name=f"A{i}") for i in range(1, 4))]
    adjusted = statistics.adjusted_for_family(family)
    assert adjusted[0].p_adjusted == ALPHA
    assert all(comparison.verdict == NO_DIFFERENCE for comparison in adjusted)
    assert all(comparison.confidence == pytest.approx(1 - ALPHA / 4) for comparison in adjusted)


def test_a_family_of_one_comparison_is_returned_as_it_is():
    alone, missing = _with_p(0.01), statistics.not_compared("q", "C", "B", "C failed")
    assert statistics.adjusted_for_family([alone, missing]) == [alone, missing]


def test_tied_p_values_take_holm_s_steps_in_the_order_given():
    family = [_with_p(0.0001, name=f"A{i}") for i in range(20)]
    adjusted = statistics.adjusted_for_family(family)
    assert [c.confidence for c in adjusted] == pytest.approx([1 - ALPHA / (20 - i) for i in range(20)])


def test_a_comparison_with_a_constant_takes_the_constant_off_every_figure():
    rng = np.random.default_rng(2)
    right = rng.random((3, 120)) < 0.4
    several = statistics.compare_with_constant("Experiment 1", "CNN", _seeds(*right), 0.2, "chance")
    accuracy = statistics.estimate_accuracy(_seeds(*right))
    assert several.effect == pytest.approx(accuracy.value - 0.2)
    expected = statistics.two_way_intervals(right.astype(float), 0.2)
    assert (several.low, several.high, several.p_value) == pytest.approx(
        (float(expected.low) - 0.2, float(expected.high) - 0.2, float(expected.p_value))
    )
    assert several.row()["question"] == "Experiment 1: CNN vs chance (0.200)"
    one = statistics.compare_with_constant("Experiment 1", "CNN", Correctness.from_count(0.3, 100), 0.2)
    assert one.method == "score test (Wilson)"
    # A split per seed: the t-test of the seeds' accuracies against the constant.
    split = statistics.compare_with_constant("q", "CNN", _seeds(*right, shared_images=False), 0.35)
    assert split.p_value == pytest.approx(stats.ttest_1samp(right.mean(axis=1), 0.35).pvalue)
    assert split.method == "t-test over seeds, each with its own split"


@pytest.mark.parametrize("constant", [0.0, 1.0, 1.5, -0.2])
def test_a_constant_to_compare_with_is_strictly_between_0_and_1(constant):
    with pytest.raises(LabInputError, match="between 0 and 1"):
        statistics.compare_with_constant("q", "CNN", Correctness.from_count(0.5, 10), constant)


def test_an_estimate_keeps_its_seeds_and_images_and_stays_within_0_and_1():
    one = statistics.estimate_accuracy(Correctness.from_count(0.7, 10))
    assert one.per_seed == [0.7] and one.text() == f"0.700 ({one.low:.3f}..{one.high:.3f})"
    nearly_all = statistics.estimate_accuracy(_seeds(np.arange(30) != 3, np.ones(30), np.ones(30)))
    assert (nearly_all.n_seeds, nearly_all.n_images, nearly_all.high) == (3, 30, 1.0)
    assert 0.0 < nearly_all.low < nearly_all.value
    nearly_none = statistics.estimate_accuracy(_seeds(np.arange(30) == 3, np.zeros(30), np.zeros(30)))
    assert nearly_none.low == 0.0


@pytest.mark.parametrize("accuracy", [0.0, 1.0])
def test_accuracies_of_0_and_1_are_accuracies(accuracy):
    estimate = statistics.estimate_accuracy(Correctness.from_count(accuracy, 20))
    assert estimate.value == accuracy


def test_not_compared_keeps_its_question_arms_and_reason():
    missing = statistics.not_compared("Experiment 3, resnet50", "imagenet", "random", "imagenet failed")
    assert (missing.question, missing.a_name, missing.b_name, missing.measure, missing.method) == (
        "Experiment 3, resnet50", "imagenet", "random", "difference", ""
    )
    assert missing.row()["question"] == "Experiment 3, resnet50: imagenet vs random"


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda: Correctness.from_predictions([np.zeros(3)] * 2, [np.zeros(3)]),
            "^2 seeds of predictions but 1 of labels$",
        ),
        (
            lambda: Correctness.from_predictions([np.zeros(3)], [np.zeros(4)]),
            r"^\(3,\) predictions for \(4,\) validation labels: both arms must predict the same validation images$",
        ),
        (
            lambda: statistics.compare_predictions("q", "A", [np.zeros(2)], "B", [np.zeros(2)], np.zeros((2, 2))),
            "non-empty 1-D array",
        ),
        (lambda: statistics.compare_predictions("q", "A", [np.zeros(0)], "B", [np.zeros(0)], np.zeros(0)),
         "non-empty 1-D array"),
        (lambda: statistics.seed_intervals(np.ones(1)), "two or more seeds, got 1"),
        (lambda: statistics.estimate_accuracy(_seeds(np.ones(3), np.ones(4))),
         "^seeds scored on the same images must have the same number of them$"),
        (lambda: Correctness.from_count(0.705, 100), "measured on$"),
    ],
)
def test_bad_input_is_named(call, message):
    with pytest.raises(LabInputError, match=message):
        call()


def test_predictions_keep_a_split_per_seed_and_one_image_is_enough():
    assert Correctness.from_predictions([np.zeros(3)], [np.zeros(3)], shared_images=False).shared_images is False
    one_image = statistics.compare_predictions("q", "A", [np.array([1])], "B", [np.array([0])], np.array([1]))
    assert one_image.discordant == (1, 0)


def test_the_example_report_s_method_note_is_today_s():
    """README's example report (one seed, and epoch times) carries the note method_note writes now."""
    note = statistics.method_note([_row(), _row("ratio", n_seeds=None)])
    assert note in EXAMPLE_REPORT.read_text(encoding="utf-8").splitlines()


def _row(measure="difference", n_seeds=1, split=False, verdict="A better than B"):
    return statistics.Comparison(
        "q", "A", "B", measure, 1.5, 1.2, 1.8, 0.01, "t", verdict, n_seeds=n_seeds, n_images=40, split_per_seed=split
    )


# How each method's paragraph begins, and the method it names.
METHOD_PARAGRAPHS = {
    "one seed": ("With one seed a row speaks of these trained models", "McNemar's exact test"),
    "seeds on the same images": (
        "With several seeds on the same images",
        "a two-way (seeds x images) variance of the paired per-image, per-seed difference, with Satterthwaite's "
        "degrees of freedom (Bouthillier et al. 2021",
    ),
    "split per seed": ("With a split per seed", "a t-interval over seeds."),
    "ratio": ("Speed-ups are ratios of geometric mean epoch times", "Welch's t-test on log times"),
}


@pytest.mark.parametrize(
    "rows, named",
    [
        ([_row()], {"one seed"}),
        ([_row(n_seeds=2)], {"seeds on the same images"}),
        ([_row(n_seeds=3, split=True)], {"split per seed"}),
        ([_row("ratio", n_seeds=None)], {"ratio"}),
        ([_row(n_seeds=1, verdict=NOT_COMPARED), _row("ratio", n_seeds=None)], {"ratio"}),
        ([_row(), _row(n_seeds=3), _row(n_seeds=2, split=True), _row("ratio", n_seeds=None)], set(METHOD_PARAGRAPHS)),
    ],
)
def test_the_method_note_names_exactly_the_methods_of_its_rows(rows, named):
    note = statistics.method_note(rows)
    assert note.startswith("A verdict names a winner only where its two-sided test gives p < 0.05 (Holm-adjusted ")
    assert "80% power" in note
    for paragraph, (start, method) in METHOD_PARAGRAPHS.items():
        assert (f". {start}" in note) == (method in note) == (paragraph in named), paragraph


def test_paired_comparisons_name_their_method_and_keep_what_at_level_needs():
    labels = np.arange(60) % 5
    right = [np.arange(60) < n for n in (40, 44, 41)]
    a = [np.where(r, labels, (labels + 1) % 5) for r in right]
    b = [np.where(np.arange(60) < 35, labels, (labels + 1) % 5)] * 3
    one = statistics.compare_predictions("Experiment 2", "A", a[:1], "B", b[:1], labels)
    assert one.method == "McNemar's exact test (5 images only A got right, 0 only B)"
    several = statistics.compare_predictions("Experiment 5", "A", a, "B", b, labels)
    assert several.method == "two-way t-test over seeds and images"
    for comparison, question in ((one, "Experiment 2"), (several, "Experiment 5")):
        assert (comparison.question, comparison.measure, comparison.split_per_seed) == (question, "difference", False)
    reference = np.arange(60) < 35
    differences = np.stack([x.astype(int) - reference.astype(int) for x in right])
    assert several.df == pytest.approx(float(statistics.two_way_intervals(differences).df))
    split = statistics.compare_correctness("q", "A", _seeds(*right, shared_images=False), "B",
                                           _seeds(*[np.arange(60) < 35] * 3, shared_images=False))
    assert split.method == "t-test over seeds, each with its own split" and split.split_per_seed is True


@pytest.mark.parametrize(
    "a, b, message",
    [
        (
            _seeds(np.ones(4), np.ones(4)),
            _seeds(np.ones(4)),
            "^q: A ran 2 seeds and B 1; paired comparisons need the same seeds in both arms$",
        ),
        (
            _seeds(np.ones(4), np.ones(4)),
            _seeds(np.ones(4), np.ones(5)),
            "^q: both arms must predict the same validation images, seed by seed$",
        ),
        (_seeds(np.ones(4), np.ones(4)), _seeds(np.ones(4), np.ones(4), shared_images=False), "seed by seed$"),
        (_seeds(np.ones(4)), Correctness((np.ones(0, dtype=bool),)), "n_images=0"),
        (Correctness(()), Correctness(()), "^an accuracy needs at least one seed's value; none was recorded$"),
    ],
)
def test_paired_comparisons_reject_arms_that_do_not_pair(a, b, message):
    with pytest.raises(LabInputError, match=message):
        statistics.compare_correctness("q", "A", a, "B", b)


def test_one_image_is_an_accuracy():
    assert statistics.estimate_accuracy(Correctness.from_count(1.0, 1)).n_images == 1


@pytest.mark.parametrize(
    "p_value, effect, verdict",
    [
        (ALPHA, 0.1, NO_DIFFERENCE),
        (0.01, 0.0, NO_DIFFERENCE),
        (0.01, 1.0, "A better than B"),
        (0.01, -0.1, "B better than A"),
    ],
)
def test_a_verdict_needs_p_below_alpha_and_a_difference(p_value, effect, verdict):
    intervals = statistics.Intervals(*(np.array(x) for x in (effect, effect - 0.1, effect + 0.1, p_value, 0.05, 9.0)))
    comparison = statistics._comparison("q", "A", "B", intervals, "t", "better", _seeds(np.ones(3), np.ones(3)))
    assert comparison.verdict == verdict


@pytest.mark.parametrize("p_value, text", [(0.0009, "<0.001"), (0.001, "0.001"), (0.5, "0.500"), (0.9999, "1.000")])
def test_p_values_print_to_three_decimals(p_value, text):
    assert _with_p(p_value).row()["p"] == text


def test_findings_rows_of_every_kind():
    missing = statistics.not_compared("q", "A", "B", "B failed").row()
    assert list(missing.values()) == ["q: A vs B", "not compared: B failed", "-", "-", "-", "-"]
    ratio = statistics.compare_times("q", "A", [1.0, 1.1, 0.9], "B", [2.0, 2.1, 1.9, 2.2]).row()
    assert ratio["evidence"] == "3 + 4 timed epochs, one process"
    split = _row(n_seeds=3, split=True).row()
    assert split["evidence"] == "3 seeds x 40 images (split per seed)"
    family = statistics.adjusted_for_family([_with_p(0.0001, name="A0"), _with_p(0.0002, name="A1"), _with_p(0.3)])
    first = family[0].row()
    assert first["95% CI"] == f"{family[0].low:+.3f}..{family[0].high:+.3f} (98.3%, Holm's step)"
    assert first["p"] == "<0.001 (Holm, 3; raw <0.001)"
    assert family[2].row()["95% CI"] == f"{family[2].low:+.3f}..{family[2].high:+.3f}"
    assert family[2].row()["verdict"] == f"no difference detectable; would detect ±{family[2].detectable:.3f}"
    # A "better" verdict does not print a detectable size, whatever it holds.
    assert dataclasses.replace(_with_p(0.001), detectable=0.05).row()["verdict"] == "A better than B"


@pytest.mark.parametrize("alpha", [ALPHA, ALPHA / 4])
def test_the_detectable_size_is_where_the_noncentral_t_reaches_80_percent_power(alpha):
    """Its definition: at d x (median share of the truth) / standard error, the two-sided test
    rejects with probability POWER; with infinite degrees of freedom, the normal shortcut."""
    standard_error = np.array([[0.01, 0.02, 0.05, 0.04, 0.03]])
    df = np.array([3.0, 5.0, 30.0, 1e4, np.inf])
    size = statistics.detectable_size(standard_error, df, alpha)
    assert size.shape == (1, 5) and (size > 0).all()
    finite = df[:4]
    critical = stats.t.ppf(1 - alpha / 2, finite)
    noncentrality = size[0, :4] / standard_error[0, :4] * np.sqrt(stats.chi2.ppf(0.5, finite) / finite)
    power = stats.nct.sf(critical, finite, noncentrality) + stats.nct.cdf(-critical, finite, noncentrality)
    assert power == pytest.approx([statistics.POWER] * 4, abs=1e-6)
    normal = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(statistics.POWER)
    assert size[0, 4] == pytest.approx(normal * 0.03)
    intervals = statistics.Intervals(*(np.array(0.0),) * 4, np.array(0.02), np.array(5.0))
    assert intervals.detectable(alpha) == pytest.approx(statistics.detectable_size(0.02, 5.0, alpha))


@pytest.mark.parametrize("shape", [(1, 5), (3, 1), (1, 1)])
def test_a_two_way_interval_needs_two_seeds_and_two_images(shape):
    with pytest.raises(LabInputError, match=f"got {shape[0]} x {shape[1]}"):
        statistics.two_way_intervals(np.ones(shape))


def test_two_seeds_of_two_images_have_a_two_way_interval():
    intervals = statistics.two_way_intervals(np.array([[1.0, 0.0], [1.0, 1.0]]))
    assert float(intervals.low) < float(intervals.mean) == 0.75 < float(intervals.high)


@pytest.mark.parametrize("function", [statistics.two_way_intervals, statistics.seed_intervals])
def test_experiments_side_by_side_are_each_computed_alone(function):
    rng = np.random.default_rng(8)
    scores = (rng.random((3, 4, 25)) < rng.uniform(0.3, 0.8, (3, 1, 1))).astype(float)
    if function is statistics.seed_intervals:
        scores = scores.mean(axis=-1)
    together = function(scores, 0.5)
    for row in range(3):
        alone = function(scores[row], 0.5)
        for field in ("mean", "low", "high", "p_value", "standard_error", "df"):
            assert getattr(together, field)[row] == pytest.approx(float(getattr(alone, field)), rel=1e-12), field


def test_seeds_that_tie_take_the_interaction_with_its_degrees_of_freedom():
    """Seed means that tie exactly: MS_residual stands in for MS_seeds, with (seeds - 1) x (images - 1)
    degrees of freedom, in Satterthwaite's formula written out."""
    right = (np.stack([np.arange(30) != wrong for wrong in (2, 9, 17)]) & (np.arange(30) < 24)).astype(float)
    intervals = statistics.two_way_intervals(right)
    seed_means, image_means, mean = right.mean(1), right.mean(0), right.mean()
    assert np.ptp(seed_means) == 0
    ms_images = 3 * np.sum((image_means - mean) ** 2) / 29
    ms_residual = np.sum((right - seed_means[:, None] - image_means[None, :] + mean) ** 2) / (2 * 29)
    seed_part, image_part = ms_residual / 90, max(ms_images - ms_residual, 0) / 90
    assert image_part > 0
    noise = (ms_images**2 / 29 + ms_residual**2 / (2 * 29)) / 90**2
    df = (seed_part + image_part) ** 2 / (seed_part**2 / (2 * 29) + noise)
    half = T(0.975, df) * math.sqrt(seed_part + image_part)
    assert (float(intervals.df), float(intervals.low), float(intervals.high)) == pytest.approx(
        (df, mean - half, mean + half)
    )


def test_one_differing_image_among_many_still_has_an_interval_of_some_width():
    """10 seeds x CIFAR-10's 10,000 test images, one cell apart from all-wrong: a variance near
    1e-10, far from none (values closer than 1e-9 are one figure; variances closer than 1e-18)."""
    cells = np.zeros((10, 10_000))
    cells[3, 7] = 1
    for intervals in (
        statistics.two_way_intervals(cells),
        statistics.independent_seed_intervals(cells[2:5], cells[5:7]),
    ):
        # A t-interval with finite degrees of freedom and its p-value, not the sign test's.
        assert float(intervals.low) < 0 and float(intervals.df) < math.inf and float(intervals.p_value) < 1
    assert float(statistics.seed_intervals(np.array([0.5, 0.5, 0.5 + 1e-5])).low) > 0.49


def test_values_that_tie_take_the_sign_test_of_their_own_experiment():
    """Seeds that tie exactly, experiment by experiment: at the reference (p = 1), or all on one
    side of it (two-sided sign test of three: p = 2 / 2**3)."""
    tied = statistics.seed_intervals(np.array([[0.5] * 3, [0.6] * 3, [0.6] * 3, [0.2] * 3]), 0.5)
    assert tied.p_value.tolist() == [1.0, 0.25, 0.25, 0.25]
    assert (tied.low, tied.high) == (pytest.approx([0.5, 0.5, 0.5, 0.2]), pytest.approx([0.5, 0.6, 0.6, 0.5]))

"""Accuracies with 95% intervals, paired comparisons with verdicts, and the findings they support.

Every accuracy of the lab is measured on validation images, with one seed or several, and
both are samples: other images from the same source would score differently, and so would
other training runs. Bouthillier et al. (2021, "Accounting for Variance in Machine Learning
Benchmarks") measure data sampling and seeds as separate sources of variance, both large.

- One seed: the interval is over the images, for these trained models: a Wilson interval for
  an accuracy, the score test against a constant (the test the Wilson interval inverts), McNemar's exact test (with its
  Clopper-Pearson interval) for two arms. Training again is not measured.
- Several seeds, scored on the same images: the per-image, per-seed correctness is a crossed
  two-way design (seeds x images). The variance of its mean is estimated from the two-way
  ANOVA's mean squares as the spread of the seed means (training noise, as a t-interval over
  seeds would see it) plus the spread of the image means beyond what the seeds explain (which
  images were drawn): (MS_seeds + max(MS_images - MS_residual, 0)) / (seeds x images) (with
  MS_residual for MS_seeds where the seed means tie exactly), with Satterthwaite's degrees of
  freedom and a t quantile. For two arms the same is done on the per-image, per-seed
  difference, so both arms are resampled with the same images and seeds. The truth it covers
  is the arms' expected difference over new images and new training runs (one seed: over new
  images, for these two trained models; 93-97% coverage in the calibration test, one seed's
  exact interval conservative at 94-98%).
- Several seeds, each with its own train/validation split (`--split-per-seed`): the seeds'
  accuracies (or differences) are independent draws of both sources, and a t-interval over
  them covers both.

`tests/test_statistics_calibration.py` simulates experiments whose truth is known and checks
that these intervals cover it for 1, 3 and 10 seeds. Comparisons read
together as a family get Holm-adjusted p-values (`adjusted_for_family`). A comparison with no
detectable difference carries the smallest difference it could have detected with 80% power.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence

import numpy as np
from scipy import stats

from lab.errors import LabInputError

CONFIDENCE = 0.95
ALPHA = 1 - CONFIDENCE
POWER = 0.8
NO_DIFFERENCE = "no difference detectable at this budget"
NOT_COMPARED = "not compared"
# Values closer than this are the same figure (accuracies are float32 ratios).
_SAME = 1e-9


@dataclasses.dataclass(frozen=True)
class Correctness:
    """Which validation images one arm got right, seed by seed.

    Args:
        per_seed: one boolean array per seed, an entry per validation image.
        shared_images: every seed was scored on the same images, in the same order (False
            when each seed drew its own split: `--split-per-seed`).
    """

    per_seed: tuple[np.ndarray, ...]
    shared_images: bool = True

    @classmethod
    def from_predictions(
        cls, predictions: Sequence[np.ndarray], labels: Sequence[np.ndarray], shared_images: bool = True
    ) -> Correctness:
        """Correctness of per-seed predictions against each seed's labels."""
        if len(predictions) != len(labels):
            raise LabInputError(f"{len(predictions)} seeds of predictions but {len(labels)} of labels")
        per_seed = []
        for seed_predictions, seed_labels in zip(predictions, labels, strict=True):
            seed_predictions, seed_labels = np.asarray(seed_predictions), np.asarray(seed_labels)
            if seed_predictions.shape != seed_labels.shape:
                raise LabInputError(
                    f"{seed_predictions.shape} predictions for {seed_labels.shape} validation labels: "
                    "both arms must predict the same validation images"
                )
            per_seed.append(seed_predictions == seed_labels)
        return cls(tuple(per_seed), shared_images)

    @classmethod
    def from_count(cls, accuracy: float, n_images: int) -> Correctness:
        """One seed known only by its accuracy on `n_images` images (a count is all it needs)."""
        _check_images(n_images)
        _check_accuracies([accuracy])
        correct = _correct_count(accuracy, n_images)
        return cls((np.arange(n_images) < correct,))

    @property
    def n_seeds(self) -> int:
        return len(self.per_seed)

    @property
    def n_images(self) -> int:
        """Validation images per seed (the smallest, with a split per seed)."""
        return min(seed.size for seed in self.per_seed)

    def accuracies(self) -> list[float]:
        return [float(seed.mean()) for seed in self.per_seed]


@dataclasses.dataclass(frozen=True)
class Intervals:
    """Means with 95% intervals and two-sided p-values, one per simulated or real experiment.

    Args:
        mean: the estimate.
        low, high: its 95% interval.
        p_value: the two-sided test of the mean against the reference value.
        standard_error: the estimate's standard error.
        df: the t quantile's degrees of freedom (inf for a normal one).
    """

    mean: np.ndarray
    low: np.ndarray
    high: np.ndarray
    p_value: np.ndarray
    standard_error: np.ndarray
    df: np.ndarray

    def detectable(self, alpha: float = ALPHA) -> np.ndarray:
        """The smallest true difference a two-sided test at `alpha` finds with POWER."""
        return detectable_size(self.standard_error, self.df, alpha)


def detectable_size(standard_error, df, alpha: float = ALPHA):
    """The smallest true difference a two-sided test at `alpha` finds with POWER, for an
    estimate with this standard error and degrees of freedom.

    The t statistic at a true difference d is noncentral t with noncentrality d / standard
    error: d is where the test's rejection probability under it reaches POWER. The textbook
    shortcut, (t quantile at alpha + t quantile at POWER) x standard error, overstates the
    power at few degrees of freedom: with three seeds (about 2 degrees of freedom) the size it
    gives was found 62% of the time in tests/test_statistics_agreement.py's simulation.
    """
    standard_error = np.asarray(standard_error, dtype=float)
    df = np.broadcast_to(np.asarray(df, dtype=float), standard_error.shape)
    critical = stats.t.ppf(1 - alpha / 2, df)
    normal = stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER)
    finite = np.isfinite(df)
    safe_df = np.where(finite, df, 1.0)
    # Bisection on the noncentrality, vectorised over experiments: rejection probability rises with it.
    low = np.zeros(standard_error.shape)
    high = np.where(finite, critical + 10 * (stats.t.ppf(POWER, safe_df) + 1) + 1000 / np.maximum(safe_df, 0.1), normal)
    with warnings.catch_warnings():
        # Far in its tail scipy's noncentral t warns that its series stopped short: the value
        # it gives there is still on the right side of POWER, which is all bisection asks.
        warnings.simplefilter("ignore", RuntimeWarning)
        for _ in range(40):
            middle = (low + high) / 2
            power = stats.nct.sf(critical, safe_df, middle) + stats.nct.cdf(-critical, safe_df, middle)
            low, high = np.where(power < POWER, middle, low), np.where(power < POWER, high, middle)
    noncentrality = np.where(finite, (low + high) / 2, normal)
    # The noncentrality is in units of the true standard error, which an estimate from few
    # degrees of freedom understates more often than not: divided by its median share of the
    # truth, sqrt(median of chi-squared(df) / df), a typical row's estimate stands for the truth.
    median_share = np.sqrt(stats.chi2.ppf(0.5, safe_df) / safe_df)
    return noncentrality * standard_error / np.where(finite, median_share, 1.0)


def two_way_intervals(scores: np.ndarray, reference: float = 0.0) -> Intervals:
    """Intervals for the mean of seeds x images scores, both seeds and images sampled.

    Args:
        scores: (..., seeds, images): per-seed, per-image correctness (0/1) or paired
            differences of two arms' correctness (-1, 0, 1); leading axes are separate
            experiments. At least two seeds and two images.
        reference: the value the p-value tests against (a constant accuracy, or 0).

    Returns:
        The means' intervals (see the module docstring for the method).
    """
    scores = np.asarray(scores, dtype=float)
    n_seeds, n_images = scores.shape[-2:]
    if n_seeds < 2 or n_images < 2:
        raise LabInputError(f"a two-way interval needs two or more seeds and images, got {n_seeds} x {n_images}")
    mean = scores.mean(axis=(-2, -1))
    seed_means = scores.mean(axis=-1)
    image_means = scores.mean(axis=-2)
    ms_seeds = n_images * seed_means.var(axis=-1, ddof=1)
    ms_images = n_seeds * image_means.var(axis=-1, ddof=1)
    residuals = scores - seed_means[..., :, None] - image_means[..., None, :] + mean[..., None, None]
    ms_residual = (residuals**2).sum(axis=(-2, -1)) / ((n_seeds - 1) * (n_images - 1))
    cells = n_seeds * n_images
    # Seed means that tie exactly (a discrete count: each seed one image behind) are no sign of
    # zero training noise: the seed-by-image interaction, which they vary by at least, stands in.
    tied = ms_seeds <= _SAME**2
    seed_part = np.where(tied, ms_residual, ms_seeds) / cells
    seed_df = np.where(tied, (n_seeds - 1) * (n_images - 1), n_seeds - 1)
    image_part = np.maximum(ms_images - ms_residual, 0.0) / cells
    variance = seed_part + image_part
    # Satterthwaite: the image part is a difference of two mean squares, and is as uncertain as
    # both together (it adds nothing where it was cut to zero).
    image_noise = (ms_images**2 / (n_images - 1) + ms_residual**2 / ((n_seeds - 1) * (n_images - 1))) / cells**2
    image_part_noise = np.where(image_part > 0, image_noise, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = variance**2 / (seed_part**2 / seed_df + image_part_noise)
    flat = variance <= _SAME**2
    # No spread at all (every seed and image scored alike): the interval has no width, and
    # the p-value is the sign test's over the images, which is what such data support.
    sign_p = _sign_test(image_means, reference)
    return _t_intervals(mean, variance, np.where(flat, np.inf, df), reference, flat, sign_p)


def independent_seed_intervals(a_scores: np.ndarray, b_scores: np.ndarray) -> Intervals:
    """Intervals for the difference of two arms' means whose seeds are independent training runs
    (two sessions' seeds) scored on the same images.

    The images pair up and the seeds do not: the variance is each arm's seed part (its two-way
    MS_seeds / (seeds x images), as in `two_way_intervals`) plus the spread of the per-image
    difference of the arms' seed means beyond what each arm's residual noise explains. An arm of
    one seed cannot show its seed part: it takes the other arm's (the same training, in the
    usual case of a baseline). Satterthwaite's degrees of freedom, a t quantile.

    Args:
        a_scores, b_scores: (..., seeds, images) correctness (0/1) of each arm; at least two
            seeds in one of them, the same images in both.
    """
    a_scores, b_scores = np.asarray(a_scores, dtype=float), np.asarray(b_scores, dtype=float)
    n_images = a_scores.shape[-1]
    if b_scores.shape[-1] != n_images or n_images < 2:
        raise LabInputError("both arms must predict the same validation images, two or more of them")
    if max(a_scores.shape[-2], b_scores.shape[-2]) < 2:
        raise LabInputError("independent seeds need two or more seeds in one arm")
    parts = [_seed_part(scores) if scores.shape[-2] > 1 else None for scores in (a_scores, b_scores)]
    known = next(part for part in parts if part is not None)
    parts = [part if part is not None else known for part in parts]
    seed_counts = [scores.shape[-2] for scores in (a_scores, b_scores)]
    seed_variance = [seed_part / count for (seed_part, _, _), count in zip(parts, seed_counts, strict=True)]
    residual_variance = [residual / count for (_, residual, _), count in zip(parts, seed_counts, strict=True)]
    image_differences = a_scores.mean(axis=-2) - b_scores.mean(axis=-2)
    mean = image_differences.mean(axis=-1)
    spread = image_differences.var(axis=-1, ddof=1)
    image_part = np.maximum(spread - residual_variance[0] - residual_variance[1], 0.0) / n_images
    variance = seed_variance[0] + seed_variance[1] + image_part
    residual_dfs = [df for (_, _, df) in parts]
    image_noise = (
        spread**2 / (n_images - 1)
        + sum(part**2 / df for part, df in zip(residual_variance, residual_dfs, strict=True))
    ) / n_images**2
    seed_noise = sum(
        part**2 / max(count - 1, 1) for part, count in zip(seed_variance, seed_counts, strict=True)
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        df = variance**2 / (seed_noise + np.where(image_part > 0, image_noise, 0.0))
    flat = variance <= _SAME**2
    return _t_intervals(mean, variance, np.where(flat, np.inf, df), 0.0, flat, _sign_test(image_differences, 0.0))


def _seed_part(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """One arm's (MS_seeds / images, MS_residual, the residual's degrees of freedom) of its seeds
    x images scores: the variance of one seed's mean, and the per-cell noise. Seed means that
    tie exactly take the residual instead, as in `two_way_intervals`."""
    n_seeds, n_images = scores.shape[-2:]
    mean = scores.mean(axis=(-2, -1))
    seed_means, image_means = scores.mean(axis=-1), scores.mean(axis=-2)
    ms_seeds = n_images * seed_means.var(axis=-1, ddof=1)
    residuals = scores - seed_means[..., :, None] - image_means[..., None, :] + mean[..., None, None]
    residual_df = (n_seeds - 1) * (n_images - 1)
    ms_residual = (residuals**2).sum(axis=(-2, -1)) / residual_df
    ms_seeds = np.where(ms_seeds <= _SAME**2, ms_residual, ms_seeds)
    return ms_seeds / n_images, ms_residual, residual_df


def seed_intervals(seed_values: np.ndarray, reference: float = 0.0) -> Intervals:
    """Intervals for the mean of independent per-seed values (each seed its own images).

    Args:
        seed_values: (..., seeds): each seed's accuracy, or its difference of two arms.
        reference: the value the p-value tests against.
    """
    values = np.asarray(seed_values, dtype=float)
    n_seeds = values.shape[-1]
    if n_seeds < 2:
        raise LabInputError(f"an interval over seeds needs two or more seeds, got {n_seeds}")
    mean = values.mean(axis=-1)
    variance = values.var(axis=-1, ddof=1) / n_seeds
    flat = variance <= _SAME**2
    df = np.full(mean.shape, float(n_seeds - 1))
    return _t_intervals(mean, variance, df, reference, flat, _sign_test(values, reference))


def mcnemar_intervals(only_a: np.ndarray, only_b: np.ndarray, n_images: int, alpha: float = ALPHA) -> Intervals:
    """McNemar's exact test and its interval, for two arms of one seed on the same images.

    Conditional on the discordant images, A's share of them is binomial with p = 1/2 under no
    difference; the exact (Clopper-Pearson) interval of that share rejects 1/2 exactly when
    the exact two-sided test does, so interval and p-value agree.

    Args:
        only_a, only_b: images only A (only B) got right, per experiment.
        n_images: validation images both predicted.
        alpha: one minus the interval's confidence (a Holm step's level, `adjusted_for_family`).
    """
    only_a, only_b = np.asarray(only_a, dtype=float), np.asarray(only_b, dtype=float)
    discordant = only_a + only_b
    mean = (only_a - only_b) / n_images
    with np.errstate(divide="ignore", invalid="ignore"):
        share_low = np.where(only_a > 0, stats.beta.ppf(alpha / 2, only_a, discordant - only_a + 1), 0.0)
        share_high = np.where(only_b > 0, stats.beta.ppf(1 - alpha / 2, only_a + 1, discordant - only_a), 1.0)
    smaller = np.minimum(only_a, only_b)
    p_value = np.where(discordant > 0, np.minimum(1.0, 2 * stats.binom.cdf(smaller, discordant, 0.5)), 1.0)
    low = np.where(discordant > 0, discordant / n_images * (2 * share_low - 1), mean)
    high = np.where(discordant > 0, discordant / n_images * (2 * share_high - 1), mean)
    # Under no difference each discordant image is a fair coin: the difference's standard
    # error is sqrt(discordant) / n_images (at least one image, for the detectable size).
    standard_error = np.sqrt(np.maximum(discordant, 1.0)) / n_images
    return Intervals(mean, low, high, p_value, standard_error, np.full(mean.shape, np.inf))


@dataclasses.dataclass(frozen=True)
class Estimate:
    """An accuracy with its 95% interval.

    Args:
        value: the accuracy of the one seed, or the mean over seeds.
        low, high: the 95% interval.
        method: `wilson` (one seed, or seeds that scored alike on every image: over the validation
            images), `two-way t-test over seeds and images` (several seeds on the same images) or
            `t-test over seeds, each with its own split` (`--split-per-seed`).
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
        question: what is compared, as the findings row begins (`Experiment 2`).
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
        n_images: validation images each seed predicted (None for timings).
        n_rounds: timed epochs of A and of B (timings only).
        reason: why the arms were not compared.
        p_adjusted: the p-value Holm-adjusted over the comparison's family (`adjusted_for_family`),
            which then decides the verdict; None when the comparison stands alone.
        family_size: the comparisons `p_adjusted` is adjusted over; None when it stands alone.
        detectable: the smallest difference (for a ratio, the smallest speed-up or slow-down
            factor) this budget detects with 80% power, at the level of the interval (Holm's
            step, in a family).
        split_per_seed: every seed drew its own validation images.
        experiment: the lab's experiment (1..5) whose question this answers, where known.
        confidence: the interval's confidence: 95%, or, in a Holm-adjusted family, the level of
            the Holm step that decided the verdict (`adjusted_for_family`).
        standard_error, df: the estimate's standard error and degrees of freedom (for a ratio,
            of its log), from which an interval at another confidence follows; None where unknown.
        discordant: one seed's McNemar test: the images only A, and only B, got right.
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
    detectable: float | None = None
    split_per_seed: bool = False
    experiment: int | None = None
    confidence: float = CONFIDENCE
    standard_error: float | None = None
    df: float | None = None
    discordant: tuple[int, int] | None = None

    def row(self) -> dict[str, str]:
        """The comparison as a Findings table row (`FINDINGS_COLUMNS`)."""
        question = f"{self.question}: {self.a_name} vs {self.b_name}"
        if self.verdict == NOT_COMPARED:
            cells = (question, f"not compared: {self.reason}", "-", "-", "-", "-")
            return dict(zip(FINDINGS_COLUMNS, cells, strict=True))
        if self.measure == "ratio":
            effect, interval = f"{self.effect:.2f}x", f"{self.low:.2f}x..{self.high:.2f}x"
            evidence = f"{self.n_rounds[0]} + {self.n_rounds[1]} timed epochs, one process"
        else:
            effect, interval = f"{self.effect:+.3f}", f"{self.low:+.3f}..{self.high:+.3f}"
            evidence = f"{self.n_seeds} seed{'s' if self.n_seeds != 1 else ''} x {self.n_images} images"
            evidence += " (split per seed)" if self.split_per_seed else ""
            evidence += " (these trained models)" if self.n_seeds == 1 else ""
        if abs(self.confidence - CONFIDENCE) > _SAME:
            interval += f" ({self.confidence:.1%}, Holm's step)"
        verdict = self.verdict
        if verdict == NO_DIFFERENCE and self.detectable is not None:
            verdict = f"no difference detectable; would detect {self._detectable_text()}"
        p_text = _p_text(self.p_value)
        if self.p_adjusted is not None:
            p_text = f"{_p_text(self.p_adjusted)} (Holm, {self.family_size}; raw {_p_text(self.p_value)})"
        return dict(zip(FINDINGS_COLUMNS, (question, verdict, effect, interval, p_text, evidence), strict=True))

    def _detectable_text(self) -> str:
        if self.measure == "ratio":
            return f"{self.detectable:.2f}x"
        return f"±{self.detectable:.3f}"


FINDINGS_COLUMNS = ("question", "verdict", "difference", "95% CI", "p", "evidence")


def estimate_accuracy(correctness: Correctness) -> Estimate:
    """An accuracy with its 95% interval: Wilson for one seed, over images and seeds for several.

    Raises:
        LabInputError: no seeds or no images.
    """
    per_seed = _checked(correctness)
    accuracies = correctness.accuracies()
    if correctness.n_seeds == 1:
        return _wilson_estimate(per_seed[0], accuracies)
    intervals, method = _several_seeds(correctness, per_seed, 0.0)
    if intervals.standard_error == 0:
        # Nothing varied (every seed right, or wrong, on every image; or split seeds that tie): the
        # spread that a t-interval scales is absent, and only the count of images bounds the
        # accuracy, as it does one seed's. (Reaching a reference, as comparisons do, means nothing here.)
        pooled = per_seed[0] if correctness.shared_images else np.concatenate(per_seed)
        return dataclasses.replace(_wilson_estimate(pooled, accuracies), n_seeds=correctness.n_seeds,
                                   n_images=correctness.n_images)
    value = float(np.mean(accuracies))
    return Estimate(
        value, max(float(intervals.low), 0.0), min(float(intervals.high), 1.0), method,
        correctness.n_seeds, correctness.n_images, accuracies,
    )


def _wilson_estimate(right: np.ndarray, accuracies: list[float]) -> Estimate:
    """Wilson's interval over the images `right` marks, around the mean of `accuracies`."""
    interval = stats.binomtest(int(right.sum()), right.size).proportion_ci(CONFIDENCE, method="wilson")
    return Estimate(
        float(np.mean(accuracies)), float(interval.low), float(interval.high), "wilson", 1, right.size, accuracies
    )


def compare_correctness(
    question: str, a_name: str, a: Correctness, b_name: str, b: Correctness
) -> Comparison:
    """Compares two arms that predicted the same validation images with the same seeds.

    One seed: McNemar's exact test on the images one arm got right and the other wrong. Several
    seeds: the paired per-image, per-seed difference, over images and seeds (or over seeds when
    each seed drew its own split).

    Raises:
        LabInputError: no images, no seeds, arms with different seeds, or seeds whose images differ.
    """
    a_seeds, b_seeds = _checked(a), _checked(b)
    if len(a_seeds) != len(b_seeds):
        raise LabInputError(
            f"{question}: {a_name} ran {len(a_seeds)} seeds and {b_name} {len(b_seeds)}; "
            "paired comparisons need the same seeds in both arms"
        )
    if any(x.shape != y.shape for x, y in zip(a_seeds, b_seeds, strict=True)) or a.shared_images != b.shared_images:
        raise LabInputError(f"{question}: both arms must predict the same validation images, seed by seed")
    differences = Correctness(
        tuple(x.astype(int) - y.astype(int) for x, y in zip(a_seeds, b_seeds, strict=True)), a.shared_images
    )
    if len(a_seeds) == 1:
        only_a = int(np.sum(a_seeds[0] & ~b_seeds[0]))
        only_b = int(np.sum(~a_seeds[0] & b_seeds[0]))
        intervals = mcnemar_intervals(np.array(only_a), np.array(only_b), a_seeds[0].size)
        method = f"McNemar's exact test ({only_a} images only {a_name} got right, {only_b} only {b_name})"
        return _comparison(question, a_name, b_name, intervals, method, "better", differences, (only_a, only_b))
    intervals, method = _several_seeds(differences, differences.per_seed, 0.0)
    return _comparison(question, a_name, b_name, intervals, method, "better", differences)


def compare_predictions(
    question: str,
    a_name: str,
    a_predictions: Sequence[np.ndarray],
    b_name: str,
    b_predictions: Sequence[np.ndarray],
    labels: np.ndarray,
) -> Comparison:
    """`compare_correctness` of per-seed predictions, every seed on the same labelled images."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or labels.size == 0:
        raise LabInputError(
            f"{question}: the validation labels must be a non-empty 1-D array, got shape {labels.shape}"
        )
    try:
        a = Correctness.from_predictions(a_predictions, [labels] * len(a_predictions))
        b = Correctness.from_predictions(b_predictions, [labels] * len(b_predictions))
    except LabInputError as error:
        raise LabInputError(f"{question}: {error}") from None
    return compare_correctness(question, a_name, a, b_name, b)


def compare_with_constant(
    question: str, name: str, correctness: Correctness, constant: float, constant_name: str = "chance"
) -> Comparison:
    """Compares an accuracy with a fixed one (experiment 1: the CNN against chance).

    One seed: the score test of the correct count against `constant`, whose inversion is the
    Wilson interval (so the two agree). Several seeds: the accuracy's interval over images and
    seeds, and the t-test it implies.
    """
    if not 0.0 < constant < 1.0:
        raise LabInputError(f"{question}: the accuracy to compare with must be between 0 and 1, got {constant}")
    estimate = estimate_accuracy(correctness)
    b_name = f"{constant_name} ({constant:.3f})"
    if estimate.n_seeds == 1:
        standard_error = np.sqrt(constant * (1 - constant) / estimate.n_images)
        p_value = float(2 * stats.norm.sf(abs(estimate.value - constant) / standard_error))
        intervals = Intervals(
            np.array(estimate.value - constant), np.array(estimate.low - constant),
            np.array(estimate.high - constant), np.array(p_value), np.array(standard_error), np.array(np.inf),
        )
        method = "score test (Wilson)"
    else:
        intervals, method = _several_seeds(correctness, _checked(correctness), constant)
        intervals = dataclasses.replace(
            intervals, mean=intervals.mean - constant, low=intervals.low - constant, high=intervals.high - constant
        )
    return _comparison(question, name, b_name, intervals, method, "better", correctness)


def compare_times(
    question: str,
    a_name: str,
    a_seconds: Sequence[float],
    b_name: str,
    b_seconds: Sequence[float],
) -> Comparison:
    """How many times faster A's epochs are than B's, from each arm's timed rounds.

    The ratio of geometric means with a Welch t-interval on the log times: times are
    positive and skewed, and a ratio is a difference of logs. The rounds are epochs of one
    process on one machine: the interval covers their epoch-to-epoch variation, not other
    sessions, loads or machines.

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
    log_ratio = float(b_logs.mean() - a_logs.mean())
    a_var, b_var = a_logs.var(ddof=1) / a_logs.size, b_logs.var(ddof=1) / b_logs.size
    variance = a_var + b_var
    if variance <= _SAME**2:
        low = high = log_ratio
        p_value, standard_error, df = (1.0 if abs(log_ratio) < _SAME else 0.0), 0.0, np.inf
    else:
        test = stats.ttest_ind(b_logs, a_logs, equal_var=False)
        interval = test.confidence_interval(CONFIDENCE)
        low, high, p_value = float(interval.low), float(interval.high), float(test.pvalue)
        standard_error, df = float(np.sqrt(variance)), float(test.df)
    detectable_log = (stats.t.ppf(1 - ALPHA / 2, df) + stats.t.ppf(POWER, df)) * standard_error
    return Comparison(
        question, a_name, b_name, "ratio", float(np.exp(log_ratio)), float(np.exp(low)), float(np.exp(high)),
        p_value, "Welch's t-test on log epoch times",
        _verdict(a_name, b_name, log_ratio, p_value, "faster"), n_rounds=(a_logs.size, b_logs.size),
        detectable=float(np.exp(detectable_log)), standard_error=standard_error, df=float(df),
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

    Each interval and smallest detectable difference is recomputed at the level of the Holm
    step that decided its verdict: the i-th smallest p-value (from 0) is tested at
    ALPHA / (size - i) while the steps before it rejected, and a comparison past the first step
    that did not reject at that step's level. So an interval excludes 0 exactly where the
    verdict names a winner.

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
    step_alpha = ALPHA / (size - np.arange(size))
    first_kept = next((rank for rank in range(size) if stepped[rank] >= ALPHA), size)
    levels = np.empty(size)
    levels[order] = np.where(np.arange(size) < first_kept, step_alpha, step_alpha[min(first_kept, size - 1)])
    answers = list(family)
    for index, p_adjusted, alpha in zip(compared, adjusted, levels, strict=True):
        comparison = answers[index]
        verdict = NO_DIFFERENCE if p_adjusted >= ALPHA else comparison.verdict
        answers[index] = at_level(
            dataclasses.replace(comparison, p_adjusted=float(p_adjusted), family_size=size, verdict=verdict),
            float(alpha),
        )
    return answers


def at_level(comparison: Comparison, alpha: float) -> Comparison:
    """`comparison` with its interval and smallest detectable difference at confidence 1 - `alpha`.

    Needs what the interval came from: McNemar's discordant counts, or the standard error and
    degrees of freedom of a t-interval (of the log, for a ratio). A comparison without them is
    returned as it is.
    """
    if comparison.effect is None or comparison.standard_error is None or comparison.df is None:
        return comparison
    standard_error, df = comparison.standard_error, comparison.df
    if comparison.discordant is not None:
        only_a, only_b = comparison.discordant
        intervals = mcnemar_intervals(np.array(only_a), np.array(only_b), comparison.n_images, alpha)
        low, high = float(intervals.low), float(intervals.high)
    elif standard_error > 0:
        center = np.log(comparison.effect) if comparison.measure == "ratio" else comparison.effect
        half = float(stats.t.ppf(1 - alpha / 2, df)) * standard_error
        low, high = center - half, center + half
        if comparison.measure == "ratio":
            low, high = float(np.exp(low)), float(np.exp(high))
    else:
        low, high = comparison.low, comparison.high
    detectable = float(detectable_size(standard_error, df, alpha))
    if comparison.measure == "ratio":
        detectable = float(np.exp(detectable))
    return dataclasses.replace(comparison, low=low, high=high, detectable=detectable, confidence=1 - alpha)


def method_note(comparisons: Sequence[Comparison]) -> str:
    """The methods behind a Findings table, in one paragraph for below it."""
    parts = [
        f"A verdict names a winner only where its two-sided test gives p < {ALPHA:.2f} (Holm-adjusted "
        "over one question's comparisons where the p column says so, with the interval at the confidence "
        "of the Holm step that decided it, so that it excludes 0 exactly where a winner is named); "
        "otherwise \"no difference "
        f"detectable\" gives the smallest difference this run would have found with {POWER:.0%} power, "
        "which more seeds, `--split-per-seed` or more images bring down."
    ]
    compared = [c for c in comparisons if c.verdict != NOT_COMPARED]
    if any(c.measure == "difference" and c.n_seeds == 1 for c in compared):
        parts.append(
            "With one seed a row speaks of these trained models on new images like these (McNemar's exact "
            "test, or the score test against chance): training again is not measured."
        )
    if any(c.measure == "difference" and (c.n_seeds or 0) > 1 and not c.split_per_seed for c in compared):
        parts.append(
            "With several seeds on the same images, intervals and tests count both sources of variation, "
            "the seeds and which validation images were drawn: a two-way (seeds x images) variance of the "
            "paired per-image, per-seed difference, with Satterthwaite's degrees of freedom (Bouthillier et "
            "al. 2021 measure both sources as large)."
        )
    if any(c.split_per_seed for c in compared):
        parts.append(
            "With a split per seed each seed's value is an independent draw of images and training: "
            "a t-interval over seeds."
        )
    if any(c.measure == "ratio" for c in compared):
        parts.append(
            "Speed-ups are ratios of geometric mean epoch times (Welch's t-test on log times) over the "
            "timed epochs of one process on this machine: they do not cover other sessions or machines."
        )
    return " ".join(parts)


def _several_seeds(
    correctness: Correctness, per_seed: tuple[np.ndarray, ...], reference: float
) -> tuple[Intervals, str]:
    """Intervals over images and seeds, or over seeds when each drew its own split."""
    if correctness.shared_images:
        if len({seed.size for seed in per_seed}) != 1:
            raise LabInputError("seeds scored on the same images must have the same number of them")
        return two_way_intervals(np.stack(per_seed), reference), "two-way t-test over seeds and images"
    means = np.array([seed.mean() for seed in per_seed])
    return seed_intervals(means, reference), "t-test over seeds, each with its own split"


def _comparison(
    question: str, a_name: str, b_name: str, intervals: Intervals, method: str, better: str,
    correctness: Correctness, discordant: tuple[int, int] | None = None,
) -> Comparison:
    effect = float(intervals.mean)
    p_value = float(intervals.p_value)
    return Comparison(
        question, a_name, b_name, "difference", effect, float(intervals.low), float(intervals.high), p_value,
        method, _verdict(a_name, b_name, effect, p_value, better), n_seeds=correctness.n_seeds,
        n_images=correctness.n_images, detectable=float(intervals.detectable()),
        split_per_seed=not correctness.shared_images, standard_error=float(intervals.standard_error),
        df=float(intervals.df), discordant=discordant,
    )


def _t_intervals(
    mean: np.ndarray, variance: np.ndarray, df: np.ndarray, reference: float, flat: np.ndarray, flat_p: np.ndarray
) -> Intervals:
    standard_error = np.sqrt(np.maximum(variance, 0.0))
    quantile = stats.t.ppf(1 - ALPHA / 2, df)
    with np.errstate(divide="ignore", invalid="ignore"):
        p_value = 2 * stats.t.sf(np.abs(mean - reference) / standard_error, df)
    p_value = np.where(flat, flat_p, p_value)
    low, high = mean - quantile * standard_error, mean + quantile * standard_error
    # Values with no spread give an interval of no width, and the sign test the p-value: where
    # that test cannot reject the reference (three seeds that tie), the interval reaches it, so
    # that interval and p-value never disagree.
    unrejected = flat & (p_value >= ALPHA)
    low = np.where(unrejected, np.minimum(low, reference), low)
    high = np.where(unrejected, np.maximum(high, reference), high)
    return Intervals(mean, low, high, p_value, standard_error, df)


def _sign_test(values: np.ndarray, reference: float) -> np.ndarray:
    """Two-sided sign test of values against `reference` along the last axis (ties dropped)."""
    above = np.sum(values - reference > _SAME, axis=-1)
    differing = np.sum(np.abs(values - reference) > _SAME, axis=-1)
    smaller = np.minimum(above, differing - above)
    return np.where(differing > 0, np.minimum(1.0, 2 * stats.binom.cdf(smaller, differing, 0.5)), 1.0)


def _verdict(a_name: str, b_name: str, effect: float, p_value: float, better: str) -> str:
    if p_value >= ALPHA or effect == 0:
        return NO_DIFFERENCE
    return f"{a_name} {better} than {b_name}" if effect > 0 else f"{b_name} {better} than {a_name}"


def _p_text(p_value: float) -> str:
    return "<0.001" if p_value < 0.001 else f"{p_value:.3f}"


def _checked(correctness: Correctness) -> tuple[np.ndarray, ...]:
    if not correctness.per_seed:
        raise LabInputError("an accuracy needs at least one seed's value; none was recorded")
    for seed in correctness.per_seed:
        _check_images(np.asarray(seed).size)
    return tuple(np.asarray(seed) for seed in correctness.per_seed)


def _check_images(n_images: int) -> None:
    if n_images <= 0:
        raise LabInputError(
            f"an accuracy needs validation images, got n_images={n_images}: check --subset and the split"
        )


def _check_accuracies(values: Sequence[float]) -> None:
    if not all(0.0 <= value <= 1.0 for value in values):
        raise LabInputError(f"accuracies must lie between 0 and 1, got {list(values)}")


def _correct_count(accuracy: float, n_images: int) -> int:
    correct = round(accuracy * n_images)
    # Keras accuracies are float32 ratios: a whole count to well within a thousandth of an image.
    if abs(accuracy * n_images - correct) > 1e-3:
        raise LabInputError(
            f"accuracy {accuracy} is not a whole number of correct images out of {n_images}: "
            "pass the number of validation images the accuracy was measured on"
        )
    return correct

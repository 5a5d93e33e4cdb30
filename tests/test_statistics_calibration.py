"""lab/report/statistics.py's intervals cover the truth of simulated experiments 93-97% of the time.

Each simulated experiment draws 100 validation images from a large population and trains each
arm with a few seeds. An image is right for an arm with a probability of its own: 0.97 or
0.03 (heterogeneous images: trained networks are nearly deterministic image by image) or one
probability for every image (homogeneous). Training noise is a shift of a whole seed up or down
on the logit scale. The truth an interval should cover is the arms' expected difference over
new images and new training runs; with one seed, it is these two trained models' expected
difference over new images (what McNemar's test speaks of). NumPy only: seconds.

With 8,000 simulated experiments a coverage near 95% has a Monte Carlo standard error of about
0.25%, so each band edge is at least four of them from the coverage the method truly has in
every scenario here (measured on 20,000: 95.0-96.9% at several seeds, 95.3-96.6% at one seed, whose
exact interval is conservative by construction). The slow variant (LAB_SLOW=1) reruns every
scenario on 20 other seeds of the simulation.
"""

import dataclasses
import os

import numpy as np
import pytest

from lab.report import statistics

EXPERIMENTS = 8000
# Several seeds: the tied-seeds rule makes the homogeneous three-seed case conservative (96.9%).
SEVERAL_SEEDS_BAND, ONE_SEED_BAND = (0.93, 0.98), (0.94, 0.98)
SIMULATION_SEEDS = range(20) if os.environ.get("LAB_SLOW") == "1" else range(1)
IMAGES = 100
NODES, WEIGHTS = np.polynomial.hermite_e.hermegauss(40)
WEIGHTS = WEIGHTS / WEIGHTS.sum()


def _expit(x):
    return 1 / (1 + np.exp(-x))


def _logit(p):
    return np.log(p / (1 - p))


@dataclasses.dataclass(frozen=True)
class Arm:
    """An arm's population of images: (logit, share) pairs, and its seeds' logit spread."""

    images: tuple[tuple[float, float], ...]
    seed_spread: float

    def draw_images(self, rng, n):
        logits, shares = zip(*self.images, strict=True)
        return rng.choice(np.array(logits), size=n, p=np.array(shares))

    def accuracy(self, shift):
        """Expected accuracy over the image population of a model shifted by `shift` (logits)."""
        return sum(share * _expit(logit + shift) for logit, share in self.images)

    def expected_accuracy(self):
        return float(np.sum(WEIGHTS * self.accuracy(self.seed_spread * NODES)))


def _arms(images, difference, seed_spread):
    if images == "heterogeneous":
        right, wrong = _logit(0.97), _logit(0.03)
        share = difference / 2 / 0.94
        return (Arm(((right, 0.6 + share), (wrong, 0.4 - share)), seed_spread),
                Arm(((right, 0.6 - share), (wrong, 0.4 + share)), seed_spread))
    return (Arm(((_logit(0.7 + difference / 2), 1.0),), seed_spread),
            Arm(((_logit(0.7 - difference / 2), 1.0),), seed_spread))


def _simulate(rng, a, b, seeds, itself=False, offset=None, split_per_seed=False):
    """Correctness (experiments, seeds, images) of both arms, and each experiment's truth.

    `itself`: B is A, on A's images. `offset`: B sees A's images, each `offset` logits off.
    `split_per_seed`: each seed draws its own images (the arms of a seed pair on them).
    """
    drawn = (EXPERIMENTS, seeds if split_per_seed else 1, IMAGES)
    a_logits = a.draw_images(rng, drawn)
    if itself:
        b_logits, b = a_logits, a
    elif offset is not None:
        b_logits = a_logits + offset
    else:
        b_logits = b.draw_images(rng, drawn)
    a_shift = a.seed_spread * rng.standard_normal((EXPERIMENTS, seeds, 1))
    b_shift = b.seed_spread * rng.standard_normal((EXPERIMENTS, seeds, 1))
    a_right = rng.random((EXPERIMENTS, seeds, IMAGES)) < _expit(a_logits + a_shift)
    b_right = rng.random((EXPERIMENTS, seeds, IMAGES)) < _expit(b_logits + b_shift)
    if seeds == 1:
        truth = a.accuracy(a_shift[:, 0, 0]) - b.accuracy(b_shift[:, 0, 0])
    else:
        truth = np.full(EXPERIMENTS, a.expected_accuracy() - b.expected_accuracy())
    return a_right, b_right, truth


def _intervals(a_right, b_right):
    """The suite's intervals for each simulated experiment, as `compare_correctness` computes them."""
    if a_right.shape[1] == 1:
        only_a = np.sum(a_right & ~b_right, axis=(1, 2))
        only_b = np.sum(~a_right & b_right, axis=(1, 2))
        return statistics.mcnemar_intervals(only_a, only_b, IMAGES)
    return statistics.two_way_intervals(a_right.astype(int) - b_right.astype(int))


SCENARIOS = [
    (images, difference, spread)
    for images in ("heterogeneous", "homogeneous")
    for difference in (0.0, 0.1)
    for spread in (0.0, 0.5)
]


def _covered(intervals, truth) -> float:
    return float(np.mean((intervals.low <= truth) & (truth <= intervals.high)))


@pytest.mark.parametrize("simulation", SIMULATION_SEEDS)
@pytest.mark.parametrize("seeds", [1, 3, 10])
@pytest.mark.parametrize("images, difference, seed_spread", SCENARIOS)
def test_intervals_cover_the_truth_95_percent_of_the_time(images, difference, seed_spread, seeds, simulation):
    rng = np.random.default_rng([seeds, int(difference * 10), int(seed_spread * 10), len(images), simulation])
    a_right, b_right, truth = _simulate(rng, *_arms(images, difference, seed_spread), seeds)

    coverage = _covered(_intervals(a_right, b_right), truth)
    low, high = ONE_SEED_BAND if seeds == 1 else SEVERAL_SEEDS_BAND
    assert low <= coverage <= high, coverage


@pytest.mark.parametrize("simulation", SIMULATION_SEEDS)
@pytest.mark.parametrize("seeds", [1, 3, 10])
def test_arms_on_images_of_shared_difficulty_with_a_difference_are_covered(seeds, simulation):
    """Both arms see the same images, B a constant 0.4 logits behind on each: a difference the
    images' difficulty does not cancel."""
    a, _ = _arms("heterogeneous", 0.0, 0.5)
    behind = Arm(tuple((logit - 0.4, share) for logit, share in a.images), a.seed_spread)
    rng = np.random.default_rng([seeds, 21, simulation])
    a_right, b_right, truth = _simulate(rng, a, behind, seeds, offset=-0.4)

    coverage = _covered(_intervals(a_right, b_right), truth)
    # One seed: McNemar's interval scales the discordant share's exact interval by the observed
    # discordant count, whose own spread it leaves out: here it covers 93.5% (measured on 8,000),
    # the one case below 95% found, and the band says so rather than hide it.
    low, high = (0.925, 0.98) if seeds == 1 else SEVERAL_SEEDS_BAND
    assert low <= coverage <= high, coverage


@pytest.mark.parametrize("simulation", SIMULATION_SEEDS)
@pytest.mark.parametrize("seeds", [3, 10])
@pytest.mark.parametrize("images", ["heterogeneous", "homogeneous"])
def test_one_arm_s_accuracy_over_seeds_and_images_is_covered(images, seeds, simulation):
    arm, _ = _arms(images, 0.0, 0.5)
    rng = np.random.default_rng([seeds, len(images), 31, simulation])
    a_right, _, _ = _simulate(rng, arm, arm, seeds, itself=True)

    coverage = _covered(statistics.two_way_intervals(a_right.astype(float)), arm.expected_accuracy())
    assert SEVERAL_SEEDS_BAND[0] <= coverage <= SEVERAL_SEEDS_BAND[1], coverage


@pytest.mark.parametrize("simulation", SIMULATION_SEEDS)
@pytest.mark.parametrize("seeds", [3, 10])
def test_split_per_seed_differences_over_seeds_are_covered(seeds, simulation):
    """--split-per-seed: each seed draws its own images, both arms of a seed the same ones."""
    a, b = _arms("heterogeneous", 0.1, 0.5)
    rng = np.random.default_rng([seeds, 41, simulation])
    a_right, b_right, truth = _simulate(rng, a, b, seeds, split_per_seed=True)

    per_seed = (a_right.astype(float) - b_right.astype(float)).mean(axis=2)
    coverage = _covered(statistics.seed_intervals(per_seed), truth)
    assert SEVERAL_SEEDS_BAND[0] <= coverage <= SEVERAL_SEEDS_BAND[1], coverage


@pytest.mark.parametrize("seeds", [1, 3, 10])
@pytest.mark.parametrize("images", ["heterogeneous", "homogeneous"])
def test_an_arm_compared_with_itself_is_rarely_called_better(images, seeds):
    # With one seed, two trainings of one arm differ by their seed shifts, and McNemar's test is
    # right to see that: the arm is compared with itself without seed noise there.
    spread = 0.0 if seeds == 1 else 0.5
    arm, _ = _arms(images, 0.0, spread)
    rng = np.random.default_rng([seeds, len(images), 7])
    a_right, b_right, _ = _simulate(rng, arm, arm, seeds, itself=True)

    intervals = _intervals(a_right, b_right)

    # 5%, plus three Monte Carlo standard errors of a rate near 5% over 8,000 experiments.
    assert np.mean(intervals.p_value < statistics.ALPHA) <= 0.05 + 3 * np.sqrt(0.05 * 0.95 / EXPERIMENTS)


def test_an_interval_over_seeds_alone_fails_where_images_matter():
    # The method this suite used before: a t-interval of the per-seed differences, which leaves
    # out which images were drawn. On nearly deterministic images it covers the truth far less
    # often than 95% (the check above would fail it).
    rng = np.random.default_rng(10)
    a_right, b_right, truth = _simulate(rng, *_arms("heterogeneous", 0.0, 0.0), 10)

    per_seed = (a_right.astype(int) - b_right.astype(int)).mean(axis=2)
    intervals = statistics.seed_intervals(per_seed)

    assert np.mean((intervals.low <= truth) & (truth <= intervals.high)) < 0.5

"""lab/report/statistics.py's intervals cover the truth of simulated experiments 93-97% of the time.

Each simulated experiment draws 100 validation images from a large population and trains each
arm with a few seeds. An image is right for an arm with a probability of its own: 0.97 or
0.03 (heterogeneous images: trained networks are nearly deterministic image by image) or one
probability for every image (homogeneous). Training noise is a shift of a whole seed up or down
on the logit scale. The truth an interval should cover is the arms' expected difference over
new images and new training runs; with one seed, it is these two trained models' expected
difference over new images (what McNemar's test speaks of). NumPy only: seconds.
"""

import dataclasses

import numpy as np
import pytest

from lab.report import statistics

EXPERIMENTS = 2000
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


def _simulate(rng, a, b, seeds, itself=False):
    """Correctness (experiments, seeds, images) of both arms, and each experiment's truth."""
    a_logits = a.draw_images(rng, (EXPERIMENTS, 1, IMAGES))
    b_logits = a_logits if itself else b.draw_images(rng, (EXPERIMENTS, 1, IMAGES))
    b = a if itself else b
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


@pytest.mark.parametrize("seeds", [1, 3, 10])
@pytest.mark.parametrize("images, difference, seed_spread", SCENARIOS)
def test_intervals_cover_the_truth_95_percent_of_the_time(images, difference, seed_spread, seeds):
    rng = np.random.default_rng([seeds, int(difference * 10), int(seed_spread * 10), len(images)])
    a_right, b_right, truth = _simulate(rng, *_arms(images, difference, seed_spread), seeds)

    intervals = _intervals(a_right, b_right)

    coverage = np.mean((intervals.low <= truth) & (truth <= intervals.high))
    # One seed's interval is McNemar's exact one: conservative by construction on a discrete
    # count (about 96-97.5% here), never below 95% but for the simulation's own noise.
    low, high = (0.94, 0.98) if seeds == 1 else (0.93, 0.97)
    assert low <= coverage <= high, coverage


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

    assert np.mean(intervals.p_value < statistics.ALPHA) <= 0.05


def test_an_interval_over_seeds_alone_fails_where_images_matter():
    # The method this suite used before: a t-interval of the per-seed differences, which leaves
    # out which images were drawn. On nearly deterministic images it covers the truth far less
    # often than 95% (the check above would fail it).
    rng = np.random.default_rng(10)
    a_right, b_right, truth = _simulate(rng, *_arms("heterogeneous", 0.0, 0.0), 10)

    per_seed = (a_right.astype(int) - b_right.astype(int)).mean(axis=2)
    intervals = statistics.seed_intervals(per_seed)

    assert np.mean((intervals.low <= truth) & (truth <= intervals.high)) < 0.5

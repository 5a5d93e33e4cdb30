"""A learning-rate finder: Smith's range test, as fastai's `lr_find` and Lightning's `Tuner.lr_find`.

Train from the model's current weights for a few hundred steps at most, raising the learning
rate exponentially from `start` to `end`, and record the training loss of every step; its
exponential moving average (fastai's beta of 0.98, bias-corrected) is the curve read. The test
stops once that average exceeds 4 times its best value, or the loss is not finite: past there
the rate only diverges. Afterwards the model's variables and its optimizer's are put back byte
for byte, so the search leaves no trace on the training that follows (`state_digest` checks it).

The suggestion follows fastai's "valley" rule (its default since 2021, fastai pull request 3377):
the middle of the longest descending run of the smoothed curve, the first tenth of the steps and
the last five left out as fastai does. It is chosen over Lightning's steepest descent (the
minimum gradient of the loss against log rate) because a gradient read point by point follows
the curve's noise, so that the steepest point can be one dip anywhere along the descent (which
is why Lightning skips the first ten points); the valley spans the whole descent and lands in its
middle, below the rates where the loss bottoms out. On the tests' problem (tests/test_lr_finder.py)
both rules landed among the rates that train well, valley nearer the cautious end. Where the
smoothed loss never falls clearly below where it started (nothing trainable, or a model already
at its best on these batches), there is no descent to read: the search says so (`found=False`,
with the reason) and the caller keeps its own rate.

A `keras.optimizers.MultiOptimizer` (discriminative rates) has no single rate: the rate searched
is that of its fastest group, the head's, and every other group keeps its ratio to it.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Iterator

import keras
import numpy as np

from lab.measurements import LearningRateSearch
from lab.networks import optimizers

RULE = "valley"
# fastai's smoothing of the loss, its divergence threshold, and the ends its suggestion leaves out.
SMOOTHING = 0.98
DIVERGENCE_FACTOR = 4.0
SKIPPED_START_FRACTION = 0.1
SKIPPED_END_STEPS = 5
# A smoothed loss that never falls this share below the loss at the first rates has not moved
# beyond the batch-to-batch noise of the average (a frozen classifier's fell by 3% at most).
MIN_DECREASE = 0.1
MIN_STEPS = 20


def find_learning_rate(
    model: keras.Model, batches: Iterable, start: float = 1e-7, end: float = 10.0, steps: int = 100
) -> LearningRateSearch:
    """Runs the range test on a compiled `model` and puts its and its optimizer's state back.

    Args:
        model: compiled, with an optimizer whose rate (or every sub-optimizer's, for a
            MultiOptimizer) is a constant, not a schedule.
        batches: `(x, y)` batches: a tf.data.Dataset or a list, iterated again from the
            start as often as `steps` needs, so a small dataset serves a long test.
        start: the rate of the first step.
        end: the rate the last step would reach, had the loss not diverged before.
        steps: the most steps to run; fastai and Lightning run 100.

    Raises:
        ValueError: the range or the number of steps cannot make a test, the optimizer's rate
            is a schedule, or `batches` yields nothing.
    """
    if not 0 < start < end or steps < MIN_STEPS:
        raise ValueError(
            f"a range test needs 0 < start < end and at least {MIN_STEPS} steps; got "
            f"start={start}, end={end}, steps={steps}"
        )
    _build_optimizer(model)
    shares = rate_shares(model.optimizer)
    saved = _snapshot(model)
    try:
        rates, losses, smoothed, diverged = _range_test(model, batches, shares, start, end, steps)
    finally:
        _restore(model, saved)
    return _suggest(rates, losses, smoothed, diverged, steps, trainable=bool(model.trainable_weights))


def rate_shares(optimizer: keras.optimizers.Optimizer) -> list[tuple[keras.optimizers.Optimizer, float]]:
    """Each (sub-)optimizer that trains, with its rate as a share of the fastest one's.

    Raises:
        ValueError: a rate is a schedule (or a callable), which the test cannot set step by step.
    """
    rates = []
    for name, sub_optimizer in optimizers.group_optimizers(optimizer).items():
        rate = sub_optimizer.learning_rate
        if not isinstance(rate, keras.Variable):
            raise ValueError(
                f"optimizer {name} has a learning-rate schedule, not a constant: compile with a constant "
                "rate for the range test, which sets the rate itself step by step"
            )
        rates.append((sub_optimizer, float(rate.numpy())))
    # A MultiOptimizer with nothing trainable has built no sub-optimizer, so has no rate to share.
    fastest = max((rate for _, rate in rates), default=0.0)
    return [(sub_optimizer, rate / fastest) for sub_optimizer, rate in rates]


def state_digest(model: keras.Model) -> str:
    """A SHA-256 of every variable of `model` and of its optimizer: equal digests, equal bytes.

    Names are left out, so that two models built alike (`sequential`, `sequential_1`) compare.
    An optimizer not yet built is built first, its slots at zero as its first step would make
    them, so that a digest taken before a search compares with one taken after it.
    """
    _build_optimizer(model)
    digest = hashlib.sha256()
    for value in _snapshot(model):
        digest.update(f"{value.dtype} {value.shape}".encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def _build_optimizer(model: keras.Model) -> None:
    """Builds the optimizer if no step has yet, so that the slots a step creates are in a snapshot."""
    if not model.optimizer.built:
        model.optimizer.build(model.trainable_variables)


def _state_variables(model: keras.Model) -> list[keras.Variable]:
    """Every variable training changes: the model's, and its optimizer's (slots, step, rates)."""
    # `variables`, not `weights`: dropout's seed-generator states are state a later fit reads too.
    return [*model.variables, *model.optimizer.variables]


def _snapshot(model: keras.Model) -> list[np.ndarray]:
    """A copy of the value of every variable training changes."""
    return [keras.ops.convert_to_numpy(variable).copy() for variable in _state_variables(model)]


def _restore(model: keras.Model, saved: list[np.ndarray]) -> None:
    """Puts back the values `_snapshot` took."""
    for variable, value in zip(_state_variables(model), saved, strict=True):
        variable.assign(value)


def _range_test(
    model: keras.Model, batches: Iterable, shares: list, start: float, end: float, steps: int
) -> tuple[list[float], list[float], list[float], bool]:
    """Trains one batch per rate; returns rates, raw and smoothed losses, and whether it diverged."""
    rates, losses, smoothed = [], [], []
    average, best = 0.0, math.inf
    for step, batch in enumerate(_cycled(batches, steps)):
        rate = start * (end / start) ** (step / (steps - 1))
        for sub_optimizer, share in shares:
            sub_optimizer.learning_rate = rate * share
        loss = model.train_on_batch(*batch, return_dict=True)["loss"]
        average = SMOOTHING * average + (1 - SMOOTHING) * loss
        rates.append(rate)
        losses.append(loss)
        smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
        best = min(best, smoothed[-1])
        if not math.isfinite(loss) or smoothed[-1] > DIVERGENCE_FACTOR * best:
            return rates, losses, smoothed, True
    return rates, losses, smoothed, False


def _cycled(batches: Iterable, steps: int) -> Iterator:
    """`steps` batches, starting `batches` over as often as needed."""
    given = 0
    while True:
        yielded = given
        for batch in batches:
            yield batch
            given += 1
            if given == steps:
                return
        if given == yielded:
            raise ValueError("the batches yielded nothing: pass a tf.data.Dataset or a list, not a used iterator")


def _suggest(
    rates: list[float], losses: list[float], smoothed: list[float], diverged: bool, steps: int, trainable: bool
) -> LearningRateSearch:
    """The search's result, with the valley rule's suggestion where the loss fell enough to read one."""
    first = int(steps * SKIPPED_START_FRACTION)
    kept = np.array(smoothed[first:len(smoothed) - SKIPPED_END_STEPS])
    # The first rates are too small to move the weights: their raw losses say where the loss starts.
    baseline = float(np.mean(losses[: first + 1]))
    reason = ""
    if len(kept) < 2:
        reason = (
            f"the loss diverged at rate {rates[-1]:.1e}, after {len(rates)} of {steps} steps: "
            "nothing left to read a suggestion from; start the range lower"
        )
    elif kept.min() > (1 - MIN_DECREASE) * baseline:
        # Said of the smoothed loss the rule reads: single batches' raw losses may well have fallen.
        reason = (
            f"no descent to read: the smoothed loss over the steps read stayed within {MIN_DECREASE:.0%} of its "
            f"start, {baseline:.3g}"
        )
        if baseline > 0:
            reason += (f" (single batches' losses ranged {min(losses) / baseline:.2f}x to "
                       f"{max(losses) / baseline:.2f}x of it)")
        if not trainable:
            reason += ": the model has no trainable weights"
    suggestion = None if reason else rates[first + _valley(kept)]
    return LearningRateSearch(
        rates, losses, smoothed, RULE, not reason, suggestion, reason, rates[-1] if diverged else None
    )


def _valley(losses: np.ndarray) -> int:
    """fastai's valley: the index halfway along the longest descending run of `losses`.

    The run is the longest strictly decreasing subsequence, taken from its start to its end.
    """
    lengths = np.ones(len(losses), dtype=int)
    for index in range(1, len(losses)):
        higher = losses[:index] > losses[index]
        if higher.any():
            lengths[index] = 1 + lengths[:index][higher].max()
    end = int(np.argmax(lengths))
    start = end - lengths[end] + 1
    return start + (end - start) // 2

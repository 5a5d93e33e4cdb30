"""lab/finetune/lr_finder.py: the range test's suggestion, on a softmax classifier of overlapping Gaussian
blobs whose good rates are measured here by short fits, and the state it must leave untouched."""

import keras
import numpy as np
import pytest

from lab.finetune import lr_finder
from lab.measurements import LearningRateSearch
from lab.networks.adam import FusedAdam
from lab.report import plots

FEATURES, CLASSES, IMAGES, BATCH = 8, 4, 512, 32
# Short fits at every half decade from 1e-4 to 30: enough to find both ends of the good range.
GRID = [10.0**exponent for exponent in np.arange(-4.0, 1.6, 0.5)]
SHORT_FIT_STEPS = 32


@pytest.fixture(scope="module")
def batches() -> list[tuple[np.ndarray, np.ndarray]]:
    """16 batches of blobs that overlap (no rate drives the loss to 0) at an input scale of 3."""
    rng = np.random.default_rng(0)
    centres = rng.normal(0.0, 1.0, (CLASSES, FEATURES))
    labels = rng.integers(0, CLASSES, IMAGES)
    inputs = (3.0 * (centres[labels] + rng.normal(0.0, 1.0, (IMAGES, FEATURES)))).astype("float32")
    return [(inputs[start:start + BATCH], labels[start:start + BATCH]) for start in range(0, IMAGES, BATCH)]


def classifier(optimizer: keras.optimizers.Optimizer, hidden: bool = False) -> keras.Model:
    """A softmax classifier (with a Dense(16) below it if `hidden`), seeded, compiled with `optimizer`."""
    keras.utils.set_random_seed(0)
    layers = [keras.layers.Dense(16, activation="relu", name="hidden")] if hidden else []
    model = keras.Sequential(
        [keras.Input((FEATURES,)), *layers, keras.layers.Dense(CLASSES, activation="softmax", name="head")],
        name="blobs",
    )
    model.compile(optimizer, "sparse_categorical_crossentropy")
    return model


def losses_after_short_fits(model: keras.Model, batches, rates: list[float]) -> dict[float, float]:
    """Rate -> the loss on every batch after `SHORT_FIT_STEPS` steps of it, each from `model`'s state.

    One model, put back between fits, traces its steps once rather than once per rate.
    """
    model.optimizer.build(model.trainable_variables)
    weights = model.get_weights()
    slots = [variable.numpy() for variable in model.optimizer.variables]
    inputs, labels = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    losses = {}
    for rate in rates:
        model.set_weights(weights)
        for variable, value in zip(model.optimizer.variables, slots, strict=True):
            variable.assign(value)
        model.optimizer.learning_rate = rate
        for step in range(SHORT_FIT_STEPS):
            model.train_on_batch(*batches[step % len(batches)])
        losses[rate] = model.test_on_batch(inputs, labels)
    return losses


def test_suggestion_lies_among_the_rates_that_train_well(batches):
    inputs, labels = (np.concatenate(parts) for parts in zip(*batches, strict=True))
    start = classifier(FusedAdam(1e-3)).test_on_batch(inputs, labels)
    after = losses_after_short_fits(classifier(FusedAdam(1e-3)), batches, GRID)
    # Training well: at least half the fall in loss that the best rate of the grid achieves.
    best = min(after.values())
    good = [rate for rate, loss in after.items() if start - loss >= 0.5 * (start - best)]
    assert GRID[0] < min(good) and max(good) < GRID[-1], f"the good range is not bounded: {after}"

    search = lr_finder.find_learning_rate(classifier(FusedAdam(1e-3)), batches)

    assert search.found and search.reason == "" and search.rule == "valley"
    assert min(good) <= search.suggestion <= max(good), f"{search.suggestion:.2g} outside {good}"
    # Fewer batches than steps: the test went through them again to run all its steps.
    assert len(search.rates) == len(search.losses) == len(search.smoothed) == 100
    assert search.rates[0] == pytest.approx(1e-7) and search.rates[-1] == pytest.approx(10.0)
    assert np.allclose(np.diff(np.log(search.rates)), np.log(1e8) / 99)


def test_weights_and_optimizer_state_come_back_byte_for_byte(batches):
    searched, untouched = classifier(FusedAdam(1e-2)), classifier(FusedAdam(1e-2))
    for model in (searched, untouched):
        for batch in batches[:3]:
            model.train_on_batch(*batch)
    before = lr_finder.state_digest(searched)
    assert before == lr_finder.state_digest(untouched)

    lr_finder.find_learning_rate(searched, batches)

    assert lr_finder.state_digest(searched) == before
    assert float(searched.optimizer.learning_rate.numpy()) == pytest.approx(1e-2)
    # The training that follows is the one that would have followed without the search.
    for model in (searched, untouched):
        model.train_on_batch(*batches[3])
    assert lr_finder.state_digest(searched) == lr_finder.state_digest(untouched)


def test_a_multi_optimizer_keeps_its_groups_ratio_and_its_state(batches):
    head, hidden = FusedAdam(1e-2, name="head"), FusedAdam(1e-3, name="hidden")
    routes = keras.optimizers.OptimizerMap(head, {"blobs/hidden/.*": hidden})
    model = classifier(keras.optimizers.MultiOptimizer(routes), hidden=True)
    # Not trained yet: the digest builds the optimizer as the search will, slots at zero.
    before = lr_finder.state_digest(model)

    shares = {optimizer.name: share for optimizer, share in lr_finder.rate_shares(model.optimizer)}
    search = lr_finder.find_learning_rate(model, batches)

    assert shares == pytest.approx({"head": 1.0, "hidden": 0.1})
    assert search.found
    assert lr_finder.state_digest(model) == before
    assert [float(o.learning_rate.numpy()) for o in (head, hidden)] == pytest.approx([1e-2, 1e-3])


@pytest.mark.filterwarnings("ignore:The model does not have any trainable weights")
def test_a_model_with_nothing_trainable_has_no_suggestion(batches):
    model = classifier(FusedAdam(1e-3))
    model.trainable = False
    model.compile(FusedAdam(1e-3), "sparse_categorical_crossentropy")

    search = lr_finder.find_learning_rate(model, batches)

    assert not search.found and search.suggestion is None
    assert "no descent to read" in search.reason and "no trainable weights" in search.reason


def test_the_test_stops_where_the_loss_diverges(batches):
    search = lr_finder.find_learning_rate(classifier(FusedAdam(1e-3)), batches, end=1e4)

    assert search.diverged_at == search.rates[-1] and len(search.rates) < 100
    assert search.smoothed[-1] > lr_finder.DIVERGENCE_FACTOR * min(search.smoothed)


def test_a_schedule_or_a_used_iterator_is_refused(batches):
    scheduled = classifier(FusedAdam(keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.5)))
    with pytest.raises(ValueError, match="schedule"):
        lr_finder.find_learning_rate(scheduled, batches)
    with pytest.raises(ValueError, match="yielded nothing"):
        lr_finder.find_learning_rate(classifier(FusedAdam(1e-3)), iter([]))


def test_the_plot_draws_every_search_and_nothing_without_one(batches):
    found = lr_finder.find_learning_rate(classifier(FusedAdam(1e-3)), batches, steps=30)
    flat = LearningRateSearch([1e-7, 1e-6], [1.0, 1.0], [1.0, 1.0], "valley", False, None, "flat", None)

    assert plots.lr_search({"linear": found, "frozen": flat}).startswith(b"\x89PNG")
    assert plots.lr_search({}) is None

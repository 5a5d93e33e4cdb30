"""lab/networks/optimizers.py: discriminative learning rates, schedules and the per-group rate recorder,
on a MobileNet 0.25 classifier at 32 px with random weights (no weights file needed)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lab.errors import LabInputError
from lab.finetune import freezing
from lab.networks import models, optimizers
from lab.networks.backbones import get_backbone

MOBILENET = get_backbone("mobilenet")
CLASSES = 5
# Rates large enough that every update dwarfs the weight it changes: float32 rounds w - update
# to about 6e-8 of |w|, which at ordinary rates would hide the 7th digit of update / gradient.
PROOF_HEAD_RATE = 1e12


@pytest.fixture
def classifier():
    """A fresh MobileNet 0.25 classifier at 32 px, random weights, seeded (tests change it)."""
    keras.utils.set_random_seed(0)
    return models.backbone_classifier(MOBILENET, 32, CLASSES, None)


@pytest.fixture(scope="module")
def unchanged_classifier():
    """One MobileNet 0.25 classifier at 32 px for the tests that only read it."""
    return models.backbone_classifier(MOBILENET, 32, CLASSES, None)


@pytest.fixture
def batch():
    """A fixed batch of 8 random images in [0, 1] and their labels."""
    rng = np.random.default_rng(0)
    return rng.random((8, 32, 32, 3), dtype=np.float32), rng.integers(0, CLASSES, 8)


def blocks_of(model):
    """Block name -> names of its base layers, as the registry splits the base."""
    stages = MOBILENET.stages_top_down(freezing.base_of(model))
    return {name: {layer.name for layer in layers} for name, layers in stages}


def weight_bytes(model, paths):
    """The exact bytes of the weights of `model` whose paths are in `paths`."""
    return {weight.path: weight.numpy().tobytes() for weight in model.weights if weight.path in paths}


def test_groups_are_the_head_and_each_block_top_down(unchanged_classifier):
    groups = optimizers.parameter_groups(unchanged_classifier, MOBILENET, 1e-3)

    names = [group.name for group in groups]
    assert names == ["head", *blocks_of(unchanged_classifier)]
    assert [group.depth for group in groups] == list(range(len(groups)))
    for group in groups:
        assert group.learning_rate == pytest.approx(1e-3 / 2.6**group.depth, rel=1e-12)
    # Every weight is in exactly one group; nested base weights carry no `base/` prefix.
    paths = [path for group in groups for path in group.variable_paths]
    assert sorted(paths) == sorted(weight.path for weight in unchanged_classifier.weights)
    assert groups[0].variable_paths == ("head/kernel", "head/bias")
    assert "conv_pw_13/kernel" in groups[1].variable_paths


def test_factor_one_gives_every_group_the_head_rate(unchanged_classifier):
    groups = optimizers.parameter_groups(unchanged_classifier, MOBILENET, 1e-3, factor=1.0)

    assert {group.learning_rate for group in groups} == {1e-3}


@pytest.mark.parametrize("factor", [0.5, 0.0, -2.6, float("nan")])
def test_factor_below_one_is_refused(unchanged_classifier, factor):
    with pytest.raises(LabInputError, match="factor of at least 1"):
        optimizers.parameter_groups(unchanged_classifier, MOBILENET, 1e-3, factor=factor)


def test_each_optimizer_is_fresh(unchanged_classifier):
    groups = optimizers.parameter_groups(unchanged_classifier, MOBILENET, 1e-3)

    first, second = (optimizers.discriminative_optimizer(groups) for _ in range(2))

    assert [sub.name for sub in first.optimizers] == [group.name for group in groups]
    assert not {id(sub) for sub in first.optimizers} & {id(sub) for sub in second.optimizers}


def test_one_sgd_step_moves_each_block_at_its_rate_and_a_frozen_block_not_at_all(classifier, batch):
    images, labels = batch
    base = freezing.base_of(classifier)
    blocks = blocks_of(classifier)
    frozen = list(blocks)[1]
    # The rates as the issue defines them, from the registry's blocks, independently of the
    # groups under test: head / 2.6 ** depth, the head at depth 0 and the topmost block at 1.
    block_of = {weight.path: "head" for weight in classifier.get_layer("head").weights}
    expected_rate = dict.fromkeys(block_of, PROOF_HEAD_RATE)
    for depth, (block, layer_names) in enumerate(blocks.items(), start=1):
        for weight in (weight for name in layer_names for weight in base.get_layer(name).weights):
            block_of[weight.path] = block
            expected_rate[weight.path] = PROOF_HEAD_RATE / 2.6**depth
    frozen_paths = [path for path, block in block_of.items() if block == frozen]
    # Trainable BatchNormalization normalises with batch statistics, so that gradients reach
    # every block of a randomly initialised base (frozen, its zero/one statistics flatten them).
    thawed = set().union(*(names for block, names in blocks.items() if block != frozen))
    freezing.set_base_trainable(classifier, thawed, train_bn=True)
    groups = optimizers.parameter_groups(classifier, MOBILENET, PROOF_HEAD_RATE)
    # Eager, so that the step's gradients are bit for bit the ones computed here.
    classifier.compile(
        optimizer=optimizers.discriminative_optimizer(groups, keras.optimizers.SGD),
        loss="sparse_categorical_crossentropy",
        run_eagerly=True,
    )
    with tf.GradientTape() as tape:
        loss = classifier.compute_loss(x=images, y=labels, y_pred=classifier(images, training=True), training=True)
    variables = classifier.trainable_variables
    gradients = {
        variable.path: gradient.numpy().astype(np.float64)
        for variable, gradient in zip(variables, tape.gradient(loss, variables), strict=True)
    }
    before = {weight.path: weight.numpy() for weight in classifier.weights}

    classifier.train_on_batch(images, labels)

    after = {weight.path: weight.numpy() for weight in classifier.weights}
    measured = {}
    for path, gradient in gradients.items():
        update = before[path].astype(np.float64) - after[path].astype(np.float64)
        assert np.all(update[gradient == 0] == 0), f"{path} moved where its gradient is 0"
        # update / gradient over the whole tensor, by least squares: exact for SGD's update.
        measured[path] = float(np.sum(update * gradient) / np.sum(gradient * gradient))
    assert measured == pytest.approx({path: expected_rate[path] for path in measured}, rel=1e-6)
    assert {block_of[path] for path in measured} == {"head", *blocks} - {frozen}
    assert all(before[path].tobytes() == after[path].tobytes() for path in frozen_paths)


def test_triangular_rises_for_a_tenth_of_the_steps_then_falls_to_a_32nd():
    schedule = optimizers.learning_rate_schedule("triangular", 0.01, 100)

    rates = np.array([float(schedule(step)) for step in range(101)])

    assert int(np.argmax(rates)) == 10
    assert rates[10] == pytest.approx(0.01, rel=1e-6)
    assert rates[0] == pytest.approx(0.01 / 32, rel=1e-6) and rates[100] == pytest.approx(0.01 / 32, rel=1e-6)
    assert rates.max() / rates.min() == pytest.approx(32, rel=1e-5)
    np.testing.assert_allclose(np.diff(rates[:11]), (0.01 - 0.01 / 32) / 10, rtol=1e-4)
    np.testing.assert_allclose(np.diff(rates[10:]), -(0.01 - 0.01 / 32) / 90, rtol=1e-3)


@pytest.mark.parametrize("steps", [1, 2, 7, 15])
def test_triangular_stays_within_its_range_when_steps_are_few(steps):
    schedule = optimizers.SlantedTriangular(1.0, steps)

    rates = [float(schedule(step)) for step in range(steps + 3)]

    assert min(rates) == pytest.approx(1 / 32, rel=1e-6)
    assert max(rates) <= 1.0 and float(schedule(steps)) == pytest.approx(1 / 32, rel=1e-6)


def test_triangular_survives_serialization():
    schedule = optimizers.SlantedTriangular(0.5, 40, cut_fraction=0.25, ratio=8)

    copy = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))

    assert isinstance(copy, optimizers.SlantedTriangular)
    assert copy.get_config() == schedule.get_config()
    assert [float(copy(step)) for step in range(41)] == [float(schedule(step)) for step in range(41)]


def test_cosine_warms_up_linearly_then_decays():
    schedule = optimizers.learning_rate_schedule("cosine", 0.01, 100)

    rates = np.array([float(schedule(step)) for step in range(100)])

    warmup = optimizers.COSINE_WARMUP_FRACTION * 100
    np.testing.assert_allclose(rates[: int(warmup) + 1], 0.01 * np.arange(1, warmup + 2) / (warmup + 1), rtol=1e-5)
    assert int(np.argmax(rates)) == warmup
    assert np.all(np.diff(rates[int(warmup):]) < 0)
    assert rates[-1] < 0.01 * 1e-2


def test_constant_schedule_is_the_rate_itself():
    assert optimizers.learning_rate_schedule("constant", 0.01) == 0.01


@pytest.mark.parametrize("kind", ["linear", "Cosine", ""])
def test_unknown_schedule_names_the_option(kind):
    with pytest.raises(LabInputError, match="--lr-schedule with one of constant, cosine, triangular"):
        optimizers.learning_rate_schedule(kind, 0.01, 10)


def test_stages_recompile_and_record_the_rate_each_group_used(classifier, batch):
    # Two stages as experiment 5 runs them: head only, then the top block thawed as well, each
    # compiled with fresh sub-optimizers under a triangular schedule. BatchNormalization trains
    # so that gradients reach the random base (see the SGD test above).
    images, labels = batch
    groups = optimizers.parameter_groups(classifier, MOBILENET, 1e-3)
    top = groups[1]
    recorder = optimizers.GroupLearningRates()
    epochs, steps_per_epoch = 2, 2
    steps = epochs * steps_per_epoch
    for stage, thawed in enumerate([set(), blocks_of(classifier)[top.name]]):
        freezing.set_base_trainable(classifier, thawed, train_bn=True)
        classifier.compile(
            optimizer=optimizers.discriminative_optimizer(groups, schedule="triangular", steps=steps),
            loss="sparse_categorical_crossentropy",
            jit_compile=False,
        )
        top_before = weight_bytes(classifier, top.variable_paths)
        batch_size = len(labels) // steps_per_epoch
        classifier.fit(images, labels, batch_size=batch_size, epochs=epochs, callbacks=[recorder], verbose=0)
        assert (weight_bytes(classifier, top.variable_paths) != top_before) == (stage == 1)

    triangle = np.array([float(optimizers.SlantedTriangular(1.0, steps)(step)) for step in range(steps)])
    last_of_each_epoch = triangle[steps_per_epoch - 1 :: steps_per_epoch]
    head_rate, top_rate = groups[0].learning_rate, top.learning_rate
    assert set(recorder.per_step) == set(recorder.per_epoch) == {"head", top.name}
    # The head trained in both stages, each restarting the schedule; the top block in the second.
    np.testing.assert_allclose(recorder.per_step["head"], head_rate * np.tile(triangle, 2), rtol=1e-6)
    np.testing.assert_allclose(recorder.per_step[top.name], top_rate * triangle, rtol=1e-6)
    np.testing.assert_allclose(recorder.per_epoch["head"], head_rate * np.tile(last_of_each_epoch, 2), rtol=1e-6)
    np.testing.assert_allclose(recorder.per_epoch[top.name], top_rate * last_of_each_epoch, rtol=1e-6)


@pytest.fixture
def mixed_float16():
    """The mixed_float16 policy of --mixed-precision, for one test."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("mixed_float16")
    yield
    keras.config.set_dtype_policy(previous)


def two_layer_model():
    """Dense(8) under Dense(3); the top one float32, as the classifier's head is."""
    return keras.Sequential(
        [
            keras.Input((4,)),
            keras.layers.Dense(8, name="lower"),
            keras.layers.Dense(3, name="upper", activation="softmax", dtype="float32"),
        ]
    )


def group_of(model, layer_name, depth, rate):
    """A parameter group of exactly the weights of one layer."""
    paths = tuple(weight.path for weight in model.get_layer(layer_name).weights)
    return optimizers.ParameterGroup(layer_name, depth, rate, paths)


def test_mixed_precision_wraps_the_multi_optimizer_and_skipped_steps_are_not_recorded(mixed_float16):
    keras.utils.set_random_seed(0)
    model = two_layer_model()
    groups = [group_of(model, "upper", 0, 1e-3), group_of(model, "lower", 1, 1e-4)]
    optimizer = optimizers.discriminative_optimizer(groups, keras.optimizers.SGD)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    recorder = optimizers.GroupLearningRates()
    before = [weight.numpy().copy() for weight in model.weights]
    # Inputs of 100 overflow float16 gradients at the initial loss scale of 2**15: the loss
    # scale optimizer skips those steps and halves the scale until they fit.
    steps = 8
    images, labels = np.full((2 * steps, 4), 100, np.float32), np.arange(2 * steps) % 3

    model.fit(images, labels, batch_size=2, callbacks=[recorder], verbose=0)

    assert isinstance(model.optimizer, keras.optimizers.LossScaleOptimizer)
    applied = {sub.name: int(sub.iterations) for sub in model.optimizer.inner_optimizer.optimizers}
    assert 0 < applied["upper"] == applied["lower"] < steps
    assert set(recorder.per_step) == {"upper", "lower"}
    assert recorder.per_step["upper"] == pytest.approx([1e-3] * applied["upper"])
    assert recorder.per_step["lower"] == pytest.approx([1e-4] * applied["lower"])
    assert all(not np.array_equal(old, weight.numpy()) for old, weight in zip(before, model.weights, strict=True))


def test_a_variable_in_no_group_stops_training():
    model = two_layer_model()
    model.compile(
        optimizer=optimizers.discriminative_optimizer([group_of(model, "upper", 0, 0.1)]),
        loss="sparse_categorical_crossentropy",
    )

    with pytest.raises(ValueError, match="lower/kernel is in no parameter group"):
        model.fit(np.ones((4, 4), np.float32), np.arange(4) % 3, epochs=1, verbose=0)

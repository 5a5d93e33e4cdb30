"""lab/networks/models.py and lab/finetune/freezing.py on small models: the lab CNN, its transfer, and a MobileNet
classifier at 32 px with random weights (structure only, so no weights file is needed)."""

import itertools

import keras
import numpy as np
import pytest

from lab import profiles
from lab.errors import LabInputError
from lab.finetune import freezing
from lab.networks import models
from lab.networks.backbones import get_backbone

MOBILENET = get_backbone("mobilenet")


@pytest.fixture
def classifier():
    """A fresh MobileNet 0.25 classifier at 32 px, random weights, 5 classes (tests change it)."""
    return models.backbone_classifier(MOBILENET, 32, 5, None)


def test_lab_cnn_layers():
    model = models.lab_cnn(5)

    conv, pool = keras.layers.Conv2D, keras.layers.MaxPooling2D
    dense = keras.layers.Dense
    assert [type(layer) for layer in model.layers] == [conv, pool] * 3 + [keras.layers.Flatten, dense, dense]
    convolutions = [layer for layer in model.layers if isinstance(layer, conv)]
    assert [layer.filters for layer in convolutions] == [32, 64, 128]
    assert all(layer.kernel_size == (5, 5) and layer.padding == "same" for layer in convolutions)
    assert all(layer.activation is keras.activations.relu for layer in convolutions)
    dense, classifier_layer = [layer for layer in model.layers if isinstance(layer, keras.layers.Dense)]
    assert dense.units == 128 and dense.activation is keras.activations.relu
    assert classifier_layer.activation is keras.activations.softmax
    assert model.output_shape == (None, 5)


@pytest.mark.parametrize(
    "num_classes, image_size, filters",
    [(5, 32, (32, 64, 128)), (10, 32, (16, 32, 64)), (3, 16, (4, 8, 8)), (7, 30, (8, 4, 2)), (2, 9, (1, 1, 1))],
)
def test_lab_cnn_parameter_count_matches_keras(num_classes, image_size, filters):
    # Odd sizes (30 -> 15 -> 7 -> 3) check that pooling floors the same way in both.
    model = models.lab_cnn(num_classes, image_size, filters)
    assert models.lab_cnn_parameter_count(num_classes, image_size, filters) == model.count_params()


def test_transfer_model_shares_the_convolutions():
    base = models.lab_cnn(5, 32, (4, 8, 8))

    transfer = models.transfer_model(base, 10)

    assert transfer.output_shape == (None, 10)
    carried = models.feature_layers(transfer)
    assert [layer.name for layer in carried] == [layer.name for layer in models.feature_layers(base)]
    assert all(a is b for a, b in zip(carried, models.feature_layers(base), strict=True))
    # Shared layers: a change to the base's kernel is a change to the transferred model's.
    kernel = base.get_layer("conv1").kernel
    kernel.assign(kernel + 1.0)
    np.testing.assert_array_equal(transfer.get_layer("conv1").kernel.numpy(), kernel.numpy())
    new_dense = [layer for layer in transfer.layers if isinstance(layer, keras.layers.Dense)]
    assert [layer.units for layer in new_dense] == [128, 10]
    assert not any(layer in base.layers for layer in new_dense)
    assert len(transfer.trainable_weights) == 10


def test_flatten_layer_is_found_by_type_not_position():
    sequential = models.lab_cnn(5, 16, (2, 2, 2))
    functional = models.transfer_model(sequential, 10)
    inputs = keras.Input((4, 4, 3))
    renamed = keras.layers.Flatten(name="not_called_flatten")
    odd = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.Dense(3)(renamed(inputs))))

    assert models.flatten_layer(sequential) is sequential.get_layer("flatten")
    assert models.flatten_layer(functional) is sequential.get_layer("flatten")
    assert models.flatten_layer(odd) is renamed


@pytest.mark.parametrize("flattens", [0, 2])
def test_flatten_layer_needs_exactly_one(flattens):
    inputs = keras.Input((4, 4, 3))
    outputs = inputs
    for index in range(flattens):
        outputs = keras.layers.Flatten(name=f"flat{index}")(outputs)
    outputs = keras.layers.Dense(2)(outputs)

    with pytest.raises(ValueError, match=f"{flattens} Flatten layers"):
        models.flatten_layer(keras.Model(inputs, outputs))


def test_frozen_base_leaves_two_trainable_tensors(classifier):
    freezing.freeze_base(classifier)

    head = classifier.get_layer(models.HEAD_LAYER_NAME)
    assert len(classifier.trainable_weights) == 2
    assert {w.path for w in classifier.trainable_weights} == {w.path for w in head.weights}
    assert freezing.trainable_base_layers(classifier) == []


@pytest.mark.parametrize("train_bn", [False, True], ids=["bn-frozen", "bn-trainable"])
def test_thawed_base_trains_what_expected_trainable_tensors_counts(train_bn, classifier):
    freezing.freeze_base(classifier)
    freezing.unfreeze_base(classifier, train_bn=train_bn)

    base = freezing.base_of(classifier)
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert norms, "MobileNet has BatchNormalization layers to check"
    assert all(layer.trainable == train_bn for layer in norms)
    assert all(bool(layer.trainable_weights) == train_bn for layer in norms)
    expected = freezing.expected_trainable_tensors(base.layers, train_bn=train_bn)
    assert expected == len(classifier.trainable_weights) - 2
    assert freezing.weighted_base_layers(classifier) == [
        layer.name for layer in base.layers if layer.weights and not isinstance(layer, keras.layers.BatchNormalization)
    ]


def test_thawing_reaches_layers_frozen_one_by_one(classifier):
    # Keras 3: `base.trainable = True` on a base whose own flag is already True does not
    # reach layers frozen one by one; set_base_trainable must set every flag.
    base = freezing.base_of(classifier)
    for layer in base.layers:
        layer.trainable = False
    freezing.unfreeze_base(classifier, train_bn=False)
    assert len(classifier.trainable_weights) - 2 == freezing.expected_trainable_tensors(base.layers, train_bn=False)


def _apply(classifier, stage):
    freezing.set_base_trainable(classifier, set(stage.trainable_layers))
    return len(classifier.trainable_weights)


@pytest.mark.parametrize("kind", ["blocks", "layers"])
def test_gradual_schedule_thaws_more_at_lower_rates(kind, classifier):
    base = freezing.base_of(classifier)
    weighted = freezing.weighted_base_layers(classifier)
    step = MOBILENET.layers_per_stage
    available = len(MOBILENET.block_starts) if kind == "blocks" else -(-len(weighted) // step)

    schedule = freezing.gradual_schedule(MOBILENET, base, kind, available, 2)

    assert len(schedule) == available + 1
    assert schedule[0].name == "head" and schedule[0].trainable_layers == ()
    counts = [_apply(classifier, stage) for stage in schedule]
    assert counts[0] == 2
    assert all(later > earlier for earlier, later in itertools.pairwise(counts)), counts
    rates = [stage.learning_rate for stage in schedule]
    assert all(later < earlier for earlier, later in itertools.pairwise(rates)), rates
    for stage in schedule:
        freezing.set_base_trainable(classifier, set(stage.trainable_layers))
        trainable = freezing.trainable_base_layers(classifier)
        assert trainable == weighted[len(weighted) - len(trainable):], "thawed layers are not the topmost"
    # The last stage thaws the whole base.
    assert set(freezing.trainable_base_layers(classifier)) == set(weighted)
    assert all(stage.epochs == 2 for stage in schedule)


@pytest.mark.parametrize("kind", ["blocks", "layers"])
def test_gradual_schedule_with_too_many_stages(kind, classifier):
    base = freezing.base_of(classifier)
    step = MOBILENET.layers_per_stage
    weighted = len(freezing.weighted_base_layers(classifier))
    groups = len(MOBILENET.stages_top_down(base)) if kind == "blocks" else -(-weighted // step)

    assert len(freezing.gradual_schedule(MOBILENET, base, kind, groups, 1)) == groups + 1
    unit = "blocks" if kind == "blocks" else f"groups of {step} layers"
    with pytest.raises(LabInputError, match=f"{groups} {unit}"):
        freezing.gradual_schedule(MOBILENET, base, kind, groups + 1, 1)


def test_gradual_schedule_with_an_unknown_kind(classifier):
    with pytest.raises(LabInputError) as raised:
        freezing.gradual_schedule(MOBILENET, freezing.base_of(classifier), "random", 1, 1)
    assert all(kind in str(raised.value) for kind in freezing.SCHEDULE_KINDS)


def test_strategies_share_one_budget_of_epochs(classifier):
    base = freezing.base_of(classifier)
    # MobileNet 0.25 has 27 weighted layers: enough for two stages of gradual-layers.
    stages, epochs_per_stage = 2, 3

    totals = {
        strategy: sum(
            stage.epochs for stage in freezing.strategy_stages(strategy, MOBILENET, base, stages, epochs_per_stage)
        )
        for strategy in freezing.STRATEGIES
    }

    assert set(totals.values()) == {(stages + 1) * epochs_per_stage}, totals
    head_only = freezing.strategy_stages("head-only", MOBILENET, base, stages, epochs_per_stage)
    assert all(stage.trainable_layers == () for stage in head_only)
    full = freezing.strategy_stages("full", MOBILENET, base, stages, epochs_per_stage)
    assert all(set(stage.trainable_layers) == {layer.name for layer in base.layers} for stage in full)
    with pytest.raises(LabInputError, match="head-only"):
        freezing.strategy_stages("everything", MOBILENET, base, stages, epochs_per_stage)


def test_every_strategy_rate_follows_the_heads(classifier):
    base = freezing.base_of(classifier)

    def rates(strategy, head_rate=freezing.HEAD_LEARNING_RATE):
        return [stage.learning_rate for stage in freezing.strategy_stages(strategy, MOBILENET, base, 2, 1, head_rate)]

    for strategy in freezing.STRATEGIES:
        assert rates(strategy, 4e-3) == pytest.approx([rate * 4 for rate in rates(strategy)]), strategy
    assert rates("gradual-blocks", 4e-3) == pytest.approx([4e-3, 4e-4, 4e-5])
    assert rates("full", 4e-3) == pytest.approx([4e-4] * 3)


def test_changed_weights_names_exactly_the_changed_one():
    model = models.lab_cnn(5, 16, (2, 2, 2))
    before = freezing.weight_bytes(model.layers)

    assert freezing.changed_weights(before, freezing.weight_bytes(model.layers)) == []
    bias = model.get_layer("dense").bias
    bias.assign(bias.numpy() + np.float32(1e-6) * (np.arange(bias.shape[0]) == 7))

    assert freezing.changed_weights(before, freezing.weight_bytes(model.layers)) == [bias.path]
    assert len(before) == len(model.weights)


@pytest.fixture(scope="module")
def bases():
    """Backbones built at 32 px with random weights on first use, once per module: name -> model."""
    built = {}

    def get(name):
        if name not in built:
            built[name] = get_backbone(name).build(32, None)
        return built[name]

    return get


# Not `backbone_name`: experiments/conftest.py parametrizes that argument from --backbones.
PROFILE_CASES = [
    (profile.name, backbone, strategy)
    for profile in profiles.PROFILES.values()
    for backbone in profile.default_backbones["unfreeze"]
    for strategy in freezing.STRATEGIES
]


@pytest.mark.parametrize(
    "profile_name, backbone, strategy", PROFILE_CASES, ids=["-".join(case) for case in PROFILE_CASES]
)
def test_every_profile_strategy_fits_its_backbones(profile_name, backbone, strategy, bases):
    # Experiment 5 runs every strategy on the profile's backbones with the profile's stages:
    # a schedule that cannot be built there fails the lab's own run.
    profile = profiles.get_profile(profile_name)
    stages = freezing.strategy_stages(
        strategy, get_backbone(backbone), bases(backbone), profile.unfreeze_stages, profile.stage_epochs
    )
    assert len(stages) == profile.unfreeze_stages + 1


@pytest.fixture
def mixed_precision():
    """The mixed_float16 policy of --mixed-precision, for one test."""
    keras.mixed_precision.set_global_policy("mixed_float16")
    yield
    keras.mixed_precision.set_global_policy("float32")


def test_mixed_precision_computes_in_float16_and_keeps_softmax_in_float32(mixed_precision):
    classifier = models.backbone_classifier(MOBILENET, 32, 5, None)
    cnn = models.lab_cnn(5, 32, (4, 4, 4))

    assert freezing.base_of(classifier).layers[1].compute_dtype == "float16"
    assert classifier.get_layer(models.HEAD_LAYER_NAME).compute_dtype == "float32"
    assert classifier(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"
    assert cnn.layers[0].compute_dtype == "float16"
    assert cnn(np.zeros((1, 32, 32, 3), np.float32)).dtype == "float32"


def _train_step_traces(model: keras.Model) -> int:
    """How many times two epochs of `fit` trace `model`'s train step (full batches only)."""
    traces = []
    step = model.train_step

    def counted(data):
        traces.append(data)
        return step(data)

    model.train_step = counted
    rng = np.random.default_rng(0)
    size = model.input_shape[1]
    model.fit(rng.random((64, size, size, 3), dtype=np.float32), rng.integers(0, 5, 64), batch_size=32, epochs=2,
              verbose=0)
    return len(traces)


@pytest.mark.parametrize("sequential", [True, False], ids=["lab_cnn", "classifier"])
def test_first_fit_after_compile_traces_the_train_step_once(sequential, classifier):
    model = models.lab_cnn(5, 16, (4, 8, 8)) if sequential else classifier
    if not sequential:
        freezing.freeze_base(model)
    models.compile_for_classification(model)
    assert _train_step_traces(model) == 1


def test_keras_alone_traces_the_first_fit_twice(monkeypatch):
    # Keras creates the optimizer's and metrics' variables in the first trace, then traces again.
    monkeypatch.setattr(models, "build_training_state", lambda model: None)
    model = models.lab_cnn(5, 16, (4, 8, 8))
    models.compile_for_classification(model)
    assert _train_step_traces(model) == 2

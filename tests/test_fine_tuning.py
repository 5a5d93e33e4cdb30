"""Experiment 5's fine-tuning tools: the discriminative strategies, each stage's optimizer and
rates, the rate record across stages and its plot, augmentation, early stopping and their
options; on a MobileNet 0.25 classifier at 32 px with random weights and tiny synthetic data."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from lab import config
from lab.errors import LabInputError
from lab.finetune import fine_tuning, freezing
from lab.networks import models, optimizers, training
from lab.networks.backbones import get_backbone
from lab.report import plots, render
from lab.report.results import Record, Results, RunHeader

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

MOBILENET = get_backbone("mobilenet")
CLASSES = 5
STAGES, EPOCHS_PER_STAGE = 2, 2


@pytest.fixture(scope="module")
def classifier():
    """One MobileNet 0.25 classifier at 32 px; each test sets the trainable flags it needs."""
    keras.utils.set_random_seed(0)
    return models.backbone_classifier(MOBILENET, 32, CLASSES, None)


def stages_of(strategy, model):
    return freezing.strategy_stages(strategy, MOBILENET, freezing.base_of(model), STAGES, EPOCHS_PER_STAGE)


def test_gradual_discriminative_thaws_as_gradual_blocks_at_the_head_rate(classifier):
    blocks = stages_of("gradual-blocks", classifier)
    discriminative = stages_of("gradual-discriminative", classifier)

    assert [stage.trainable_layers for stage in discriminative] == [stage.trainable_layers for stage in blocks]
    assert all(stage.discriminative for stage in discriminative)
    assert {stage.learning_rate for stage in discriminative} == {freezing.HEAD_LEARNING_RATE}
    assert not any(stage.discriminative for stage in blocks)


def test_full_discriminative_trains_what_full_trains_from_the_start(classifier):
    full = stages_of("full", classifier)
    discriminative = stages_of("full-discriminative", classifier)

    base_layers = tuple(layer.name for layer in freezing.base_of(classifier).layers)
    assert {stage.trainable_layers for stage in discriminative} == {stage.trainable_layers for stage in full}
    assert discriminative[0].trainable_layers == base_layers
    assert all(stage.discriminative and stage.learning_rate == freezing.HEAD_LEARNING_RATE for stage in discriminative)


@pytest.mark.parametrize(
    "strategy, spans",
    [
        ("gradual-blocks", [2, 2, 2]),
        ("gradual-discriminative", [2, 2, 2]),
        ("head-only", [6, 0, 0]),
        ("full-discriminative", [6, 0, 0]),
    ],
)
def test_a_compile_spans_the_stages_that_train_alike(classifier, strategy, spans):
    assert freezing.compile_spans(stages_of(strategy, classifier)) == spans


def test_a_discriminative_stage_gives_each_thawed_block_its_rate(classifier):
    stage = stages_of("gradual-discriminative", classifier)[1]
    freezing.set_base_trainable(classifier, set(stage.trainable_layers))
    top_block = MOBILENET.stages_top_down(freezing.base_of(classifier))[0][0]

    rates = fine_tuning.stage_rates(classifier, MOBILENET, stage, factor=4.0)
    optimizer = fine_tuning.stage_optimizer(classifier, MOBILENET, stage, "constant", 4.0, steps=10)

    assert rates == pytest.approx({"head": 1e-3, top_block: 1e-3 / 4})
    assert isinstance(optimizer, keras.optimizers.MultiOptimizer)
    configured = {sub.name: float(sub.learning_rate) for sub in optimizer.optimizers}
    assert configured[top_block] == pytest.approx(1e-3 / 4, rel=1e-6)
    assert set(rates) < set(configured), "the frozen blocks keep their own sub-optimizers, unbuilt"
    assert fine_tuning.describe_rates(rates) == f"head 1.0e-03, {top_block} 2.5e-04"


@pytest.mark.parametrize("schedule", optimizers.LR_SCHEDULES)
def test_a_single_rate_stage_is_one_adam_following_the_schedule(classifier, schedule):
    stage = stages_of("full", classifier)[0]
    freezing.set_base_trainable(classifier, set(stage.trainable_layers))

    optimizer = fine_tuning.stage_optimizer(classifier, MOBILENET, stage, schedule, 2.6, steps=60)

    assert isinstance(optimizer, keras.optimizers.Adam) and optimizer.name == fine_tuning.SINGLE_GROUP
    expected = optimizers.learning_rate_schedule(schedule, stage.learning_rate, 60)
    first_step_rate = expected if schedule == "constant" else float(expected(0))
    assert float(optimizer.learning_rate) == pytest.approx(first_step_rate, rel=1e-6)
    assert fine_tuning.stage_rates(classifier, MOBILENET, stage, 2.6) == {"all": stage.learning_rate}


def test_steps_per_epoch_count_the_last_partial_batch():
    assert [fine_tuning.steps_per_epoch(images, 32) for images in (1, 32, 33, 400)] == [1, 1, 2, 13]


def test_rate_curves_line_groups_up_by_epoch_across_fits():
    curves = fine_tuning.RateCurves()

    curves.add_fit({"head": [1.0, 2.0]}, 2)
    curves.add_fit({"head": [3.0, 4.0], "top": [5.0, 6.0]}, 2)
    curves.add_fit({"top": [7.0]}, 2)

    assert curves.epochs == 6
    assert curves.rates == {
        "head": [1.0, 2.0, 3.0, 4.0, None, None],
        "top": [None, None, 5.0, 6.0, None, 7.0],
    }
    with pytest.raises(ValueError, match="rates for 3 epochs of a 2-epoch fit"):
        curves.add_fit({"head": [1.0, 1.0, 1.0]}, 2)


def test_augmentation_changes_training_inputs_and_leaves_predictions_deterministic(classifier):
    keras.utils.set_random_seed(1)
    augmented = models.backbone_classifier(MOBILENET, 32, CLASSES, None, augment=True)
    plain = models.backbone_classifier(MOBILENET, 32, CLASSES, None)
    plain.set_weights(augmented.get_weights())
    images = np.random.default_rng(0).random((4, 32, 32, 3), dtype=np.float32)
    augmentation = augmented.get_layer(models.AUGMENTATION_LAYER_NAME)

    first, second = (keras.ops.convert_to_numpy(augmentation(images, training=True)) for _ in range(2))

    assert augmented.layers[1] is augmentation, "augmentation is not at the front"
    assert first.shape == images.shape and not np.allclose(first, images, atol=1e-3)
    assert not np.allclose(first, second, atol=1e-3), "two training passes drew the same transformation"
    predictions = augmented.predict(images, verbose=0)
    np.testing.assert_array_equal(predictions, augmented.predict(images, verbose=0))
    np.testing.assert_array_equal(predictions, plain.predict(images, verbose=0))


def test_early_stopping_ends_with_the_best_epochs_weights():
    # Validation labels are the training labels flipped, so learning the training set lowers
    # validation accuracy: the fit stops early and its best epoch is not its last.
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    inputs = rng.normal(size=(64, 4)).astype(np.float32)
    labels = (inputs[:, 0] > 0).astype(np.int64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile(keras.optimizers.SGD(0.5), "sparse_categorical_crossentropy", metrics=["accuracy"])
    snapshots = []
    keep = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: snapshots.append(model.get_weights()))

    result = training.fit(
        model, _batches(inputs, labels), 30, validation=_batches(inputs, 1 - labels), callbacks=[keep],
        early_stopping_patience=2,
    )

    assert result.stopped_epoch == len(result.loss) < 30
    assert result.best_epoch == int(np.argmax(result.validation_accuracy)) + 1 < result.stopped_epoch
    for kept, best in zip(model.get_weights(), snapshots[result.best_epoch - 1], strict=True):
        np.testing.assert_array_equal(kept, best)
    assert result.final_validation_accuracy == max(result.validation_accuracy)
    _, accuracy = model.evaluate(_batches(inputs, 1 - labels), verbose=0)
    assert accuracy == pytest.approx(result.final_validation_accuracy)
    summary = result.early_stopping_summary()
    assert summary == {"stopped at epoch": result.stopped_epoch, "best epoch": result.best_epoch}


def test_without_early_stopping_every_epoch_runs_and_the_last_counts():
    inputs = np.random.default_rng(0).normal(size=(16, 4)).astype(np.float32)
    labels = (inputs[:, 0] > 0).astype(np.int64)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
    model.compile("adam", "sparse_categorical_crossentropy", metrics=["accuracy"])

    result = training.fit(model, _batches(inputs, labels), 3, validation=_batches(inputs, labels))

    assert len(result.loss) == 3 and result.stopped_epoch is None and result.best_epoch is None
    assert result.final_validation_accuracy == result.validation_accuracy[-1]
    assert result.early_stopping_summary() == {}


def _batches(inputs, labels):
    return tf.data.Dataset.from_tensor_slices((inputs, labels)).batch(16)


@pytest.mark.parametrize(
    "changes, fragments",
    [
        ({"lr_factor": 0.5}, ["--lr-factor", "from 1 to", "0.5"]),
        ({"lr_factor": float("nan")}, ["--lr-factor", "from 1 to"]),
        ({"lr_schedule": "linear"}, ["--lr-schedule", "linear", "constant, cosine, triangular"]),
        ({"early_stopping": 0}, ["--early-stopping", "at least 1", "leave the option out"]),
    ],
    ids=["factor-below-one", "factor-nan", "unknown-schedule", "patience-zero"],
)
def test_fine_tuning_options_are_checked(changes, fragments):
    options = {"lr_schedule": "constant", "lr_factor": 2.6, "early_stopping": None, **changes}

    with pytest.raises(LabInputError) as raised:
        config.check_fine_tuning(**options)

    assert all(fragment in str(raised.value) for fragment in fragments), str(raised.value)


def test_fine_tuning_options_reach_the_run_config():
    run = config.build_config(
        "smoke", "mock", None, 0, None, None, "none", None,
        lr_schedule="triangular", lr_factor=1.0, augment=True, early_stopping=1,
    )

    options = run.options
    assert (options.lr_schedule, options.lr_factor, options.augment) == ("triangular", 1.0, True)
    assert options.early_stopping == 1


def _rate_record(strategy, rate_curves, seed=0):
    return Record(
        experiment=5, table="Strategies on one budget", keys=("backbone", "strategy"), label=f"mobilenet {strategy}",
        row={"backbone": "mobilenet", "strategy": strategy}, rate_curves=rate_curves, seed=seed,
    )


def test_the_report_plots_the_rates_each_group_used_after_a_json_round_trip():
    header = RunHeader(profile="smoke", seed=0, data_source="sample", data_source_description="sample",
                       weights_description="--weights none")
    records = [
        _rate_record("gradual-discriminative", {"head": [1e-3] * 4, "top_conv": [None, None, 3.8e-4, 3.8e-4]}),
        _rate_record("gradual-discriminative", {"head": [1e-3] * 4, "top_conv": [None, None, 3.8e-4, 3.8e-4]}, 1),
        _rate_record("head-only", {"all": [1e-3] * 4}),
    ]
    results = Results.from_json(json.loads(json.dumps(Results(header, records).to_json())))

    rendered = render.render(results, "figures")

    assert results.records[0].rate_curves["top_conv"][:2] == [None, None]
    assert rendered.figures["experiment5-learning-rates.png"].startswith(PNG_SIGNATURE)
    assert "(figures/experiment5-learning-rates.png)" in rendered.markdown
    assert plots.learning_rates([_rate_record("full", None)]) is None

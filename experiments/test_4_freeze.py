"""Experiment 4: freeze the pretrained base, train only the new head, and time it.

`layer.trainable = False` on every base layer leaves two trainable tensors, the head's kernel
and bias. A fit must leave every base weight byte-identical, BatchNormalization statistics
included. Then the claim the lab is about, measured: seconds per epoch with the base
unfrozen, frozen, and frozen with its features computed once (lab/finetune/features.py).
"""

from __future__ import annotations

import dataclasses
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from lab.finetune import features, freezing
from lab.finetune.stage_cache import CachedStage
from lab.inputs.data import ImageData
from lab.networks import models
from lab.networks.training import fit_on, predicted_classes, tensorboard_callbacks
from lab.report.results import Table
from lab.runtime import timesplit
from lab.runtime.hparams import FitSettings
from lab.runtime.timing import EpochTimes

pytestmark = pytest.mark.experiment(4, backbones="freeze")

FROZEN_BASE = Table("Frozen base, trained head ({dataset})", keys=("backbone", "weights"))
# The frozen-base case trains the classifier itself, not a head on cached features.
WHOLE_CLASSIFIER = CachedStage("the frozen-base case trains the whole classifier", None)
CACHED_FEATURES = Table("Cached features: one extraction, then head-only epochs", keys=("backbone",))


@pytest.mark.parametrize("weights_kind", ["imagenet", "none"])
def test_frozen_base_trains_only_the_head(
    weights_kind, seed, backbone_case, profile, keras_verbose, tensorboard_dir, record, compiled_models
):
    case = backbone_case(weights_kind, paired=True)
    run = case.run(compiled_models, "frozen base", seed)
    model = run.classifier
    freezing.freeze_base(model)
    trained, _ = run.span_model(0, WHOLE_CLASSIFIER)
    base = freezing.base_of(model)
    head = model.get_layer(models.HEAD_LAYER_NAME)

    assert len(model.trainable_weights) == 2
    assert {w.path for w in model.trainable_weights} == {w.path for w in head.weights}
    assert not base.trainable_weights and len(base.non_trainable_weights) == len(base.weights)

    base_before = freezing.weight_bytes(base.layers)
    head_before = freezing.weight_bytes([head])
    settings = FitSettings(
        experiment=4, seed=seed, backbone=case.name, weights=weights_kind,
        image_size=case.image_size, train_images=case.data.train_count,
    )
    result = fit_on(
        trained, case.data, profile.backbone_epochs, profile.batch_size, seed, keras_verbose,
        tensorboard_callbacks(tensorboard_dir, settings=settings),
    )

    assert freezing.changed_weights(base_before, freezing.weight_bytes(base.layers)) == []
    head_moved = freezing.changed_weights(head_before, freezing.weight_bytes([head]))
    # A randomly initialised MobileNet's pooled features are all but zero, so only the bias
    # of its head can learn: a real effect of these networks, recorded rather than hidden.
    assert head_moved, "the head did not train"
    record(
        FROZEN_BASE,
        {
            "backbone": case.name,
            "weights": weights_kind,
            "input": f"{case.image_size}px",
            "train images": case.data.train_count,
            "epochs": profile.backbone_epochs,
            "trainable tensors": len(model.trainable_weights),
            "base tensors unchanged": len(base_before),
            "head tensors moved": len(head_moved),
            **result.summary(),
        },
        label=f"{case.name} {weights_kind}",
        curves=result.curves(),
        validation=case.data,
        predictions=predicted_classes(model, case.data.batches("validation", profile.batch_size)),
    )


@dataclasses.dataclass
class EpochTiming:
    """What the three epoch-time cases share: a classifier and the batches of one epoch.

    Epoch time does not depend on the weights' values: a random base keeps this runnable offline.
    """

    backbone: str
    data: ImageData
    model: keras.Model
    batches: tf.data.Dataset
    images_per_epoch: int
    rounds: int

    @property
    def image_size(self) -> int:
        return self.data.image_size

    @property
    def base(self) -> keras.Model:
        return freezing.base_of(self.model)

    def time_epochs(self, benchmark, mode: str, model: keras.Model, batches: tf.data.Dataset) -> None:
        """Times one-epoch fits of `model` on `batches` after an untimed warm-up epoch (graph tracing).

        Their epochs, warm-up first, go to the session's time split as the epochs of one fit.
        """
        benchmark.extra_info.update(
            backbone=self.backbone, mode=mode, image_size=self.image_size, images_per_epoch=self.images_per_epoch
        )
        epochs = EpochTimes()
        benchmark.pedantic(model.fit, args=(batches,), kwargs={"epochs": 1, "verbose": 0, "callbacks": [epochs]},
                           rounds=self.rounds, warmup_rounds=1)
        timesplit.add_fit(epochs.seconds)


@pytest.fixture
def epoch_timing(backbone_case, profile, run_config) -> EpochTiming:
    """A classifier on a randomly initialised base and the shuffled batches of one timed epoch."""
    case = backbone_case("none")
    limit = profile.benchmark_images
    return EpochTiming(
        backbone=case.name,
        data=case.data,
        model=case.classifier(run_config.seed),
        batches=case.data.batches("train", profile.batch_size, seed=run_config.seed, limit=limit),
        images_per_epoch=min(case.data.train_count, limit or case.data.train_count),
        rounds=profile.benchmark_rounds,
    )


@pytest.mark.arm(mode="unfrozen")
def test_epoch_time_unfrozen(epoch_timing, benchmark, record_benchmark):
    model, base = epoch_timing.model, epoch_timing.base
    freezing.unfreeze_base(model, train_bn=True)
    models.compile_for_classification(model)
    trainable_base = freezing.expected_trainable_tensors(base.layers, train_bn=True)
    assert len(model.trainable_weights) == trainable_base + 2
    before = freezing.weight_bytes(base.layers)
    statistics_before = freezing.batch_norm_statistics(model)

    epoch_timing.time_epochs(benchmark, "unfrozen", model, epoch_timing.batches)

    moved = freezing.changed_weights(before, freezing.weight_bytes(base.layers))
    assert moved and set(moved) <= {w.path for w in base.trainable_weights} | set(statistics_before)
    # The lab's plain unfreezing trains BatchNormalization too: in Keras 3 a trainable
    # BatchNormalization layer normalises with batch statistics and moves its averages
    # (ConvNeXt has none: it normalises with LayerNormalization).
    assert not statistics_before or freezing.batch_norm_statistics(model) != statistics_before
    benchmark.extra_info["base_tensors_moved"] = f"{len(moved)}/{trainable_base}"
    record_benchmark(benchmark)


@pytest.mark.arm(mode="frozen")
def test_epoch_time_frozen(epoch_timing, benchmark, record_benchmark):
    model, base = epoch_timing.model, epoch_timing.base
    freezing.freeze_base(model)
    models.compile_for_classification(model)
    assert len(model.trainable_weights) == 2
    before = freezing.weight_bytes(base.layers)

    epoch_timing.time_epochs(benchmark, "frozen", model, epoch_timing.batches)

    assert freezing.changed_weights(before, freezing.weight_bytes(base.layers)) == []
    record_benchmark(benchmark)


@pytest.mark.arm(mode="frozen-cached")
def test_epoch_time_frozen_cached(epoch_timing, profile, run_config, benchmark, record_benchmark, record):
    if run_config.options.augment:
        pytest.skip("frozen-cached trains the head on features computed once from unaugmented images, which "
                    "--augment would make wrong: run without --augment for this case")
    model, data = epoch_timing.model, epoch_timing.data
    freezing.freeze_base(model)
    in_order = data.batches("train", profile.batch_size, limit=profile.benchmark_images)
    started = time.perf_counter()
    (cached,) = features.extract_features(model, in_order)
    extraction_seconds = time.perf_counter() - started
    head = features.standalone_head(model)
    feature_batches = features.features_dataset(
        cached, data.train_labels[: len(cached)], profile.batch_size, run_config.seed
    )

    epoch_timing.time_epochs(benchmark, "frozen-cached", head, feature_batches)

    features.put_head_back(model, head)
    full_predictions = model.predict(in_order, verbose=0)
    head_predictions = head.predict(cached, batch_size=profile.batch_size, verbose=0)
    np.testing.assert_allclose(full_predictions, head_predictions, rtol=1e-4, atol=1e-5)
    benchmark.extra_info["feature_extraction_seconds"] = extraction_seconds
    record_benchmark(benchmark)
    record(
        CACHED_FEATURES,
        {
            "backbone": epoch_timing.backbone,
            "images": len(cached),
            "extraction s (once)": extraction_seconds,
            "max |full model - head on features|": float(np.max(np.abs(full_predictions - head_predictions))),
        },
    )

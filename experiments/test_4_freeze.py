"""Experiment 4: freeze the pretrained base, train only the new head, and time it.

`layer.trainable = False` on every base layer leaves two trainable tensors, the head's kernel
and bias. A fit must leave every base weight byte-identical, BatchNormalization statistics
included. Then the claim the lab is about, measured: seconds per epoch with the base
unfrozen, frozen, and frozen with its features computed once (lab/features.py).
"""

import time

import numpy as np
import pytest

from lab import features, freezing, models
from lab.backbones import get_backbone
from lab.training import fit_on

pytestmark = pytest.mark.experiment

BACKBONE_GROUP = "freeze"
MODES = ["unfrozen", "frozen", "frozen-cached"]


@pytest.mark.parametrize("weights_kind", ["imagenet", "none"])
def test_frozen_base_trains_only_the_head(
    backbone_name, weights_kind, backbone_weights, backbone_flowers, profile, run_config, keras_verbose, record
):
    backbone = get_backbone(backbone_name)
    weights = backbone_weights(backbone, weights_kind)
    flowers = backbone_flowers(backbone)
    image_size = flowers.image_size

    model = models.backbone_classifier(backbone, image_size, flowers.num_classes, weights.path)
    freezing.freeze_base(model)
    models.compile_for_classification(model)
    base = freezing.base_of(model)
    head = model.get_layer(models.HEAD_LAYER_NAME)

    assert len(model.trainable_weights) == 2
    assert {w.path for w in model.trainable_weights} == {w.path for w in head.weights}
    assert not base.trainable_weights and len(base.non_trainable_weights) == len(base.weights)

    base_before = freezing.weight_bytes(base.layers)
    head_before = freezing.weight_bytes([head])
    result = fit_on(model, flowers, profile.backbone_epochs, profile.batch_size, run_config.seed, keras_verbose)

    assert freezing.changed_weights(base_before, freezing.weight_bytes(base.layers)) == []
    head_moved = freezing.changed_weights(head_before, freezing.weight_bytes([head]))
    # A randomly initialised MobileNet's pooled features are all but zero, so only the bias
    # of its head can learn: a real effect of these networks, recorded rather than hidden.
    assert head_moved, "the head did not train"
    record(
        "4",
        "Frozen base, trained head (tf_flowers)",
        {
            "backbone": backbone_name,
            "weights": weights_kind,
            "input": f"{image_size}px",
            "train images": flowers.train_count,
            "epochs": profile.backbone_epochs,
            "trainable tensors": len(model.trainable_weights),
            "base tensors unchanged": len(base_before),
            "head tensors moved": len(head_moved),
            **result.summary(),
        },
        label=f"{backbone_name} {weights_kind}",
        curves=result.curves(),
    )


@pytest.mark.parametrize("mode", MODES)
def test_epoch_time(backbone_name, mode, backbone_flowers, profile, run_config, benchmark, record_benchmark, record):
    backbone = get_backbone(backbone_name)
    flowers = backbone_flowers(backbone)
    image_size = flowers.image_size
    images = flowers.batches("train", profile.batch_size, seed=run_config.seed, limit=profile.benchmark_images)
    images_per_epoch = min(flowers.train_count, profile.benchmark_images or flowers.train_count)
    # Epoch time does not depend on the weights' values: a random base keeps this runnable offline.
    model = models.backbone_classifier(backbone, image_size, flowers.num_classes, None)
    base = freezing.base_of(model)
    benchmark.extra_info.update(
        backbone=backbone_name, mode=mode, images_per_epoch=images_per_epoch, image_size=image_size
    )

    if mode == "unfrozen":
        freezing.unfreeze_base(model)
        models.compile_for_classification(model)
        trainable_base = freezing.expected_trainable_tensors(base.layers, batch_norm=True)
        assert len(model.trainable_weights) == trainable_base + 2
        before = freezing.weight_bytes(base.layers)
        statistics_before = freezing.batch_norm_statistics(model)
        benchmark.pedantic(model.fit, args=(images,), kwargs={"epochs": 1, "verbose": 0},
                           rounds=profile.benchmark_rounds, warmup_rounds=1)
        moved = freezing.changed_weights(before, freezing.weight_bytes(base.layers))
        assert moved and set(moved) <= {w.path for w in base.trainable_weights} | set(statistics_before)
        # The lab's plain unfreezing trains BatchNormalization too: in Keras 3 a trainable
        # BatchNormalization layer normalises with batch statistics and moves its averages.
        assert freezing.batch_norm_statistics(model) != statistics_before
        benchmark.extra_info["base_tensors_moved"] = f"{len(moved)}/{trainable_base}"
    elif mode == "frozen":
        freezing.freeze_base(model)
        models.compile_for_classification(model)
        assert len(model.trainable_weights) == 2
        before = freezing.weight_bytes(base.layers)
        benchmark.pedantic(model.fit, args=(images,), kwargs={"epochs": 1, "verbose": 0},
                           rounds=profile.benchmark_rounds, warmup_rounds=1)
        assert freezing.changed_weights(before, freezing.weight_bytes(base.layers)) == []
    else:
        freezing.freeze_base(model)
        in_order = flowers.batches("train", profile.batch_size, limit=profile.benchmark_images)
        started = time.perf_counter()
        cached = features.extract_features(model, in_order)
        extraction_seconds = time.perf_counter() - started
        head = features.standalone_head(model)
        feature_batches = features.features_dataset(cached, flowers.train_labels[: len(cached)], profile.batch_size, run_config.seed)
        benchmark.pedantic(head.fit, args=(feature_batches,), kwargs={"epochs": 1, "verbose": 0},
                           rounds=profile.benchmark_rounds, warmup_rounds=1)
        features.put_head_back(model, head)
        full_predictions = model.predict(in_order, verbose=0)
        head_predictions = head.predict(cached, batch_size=profile.batch_size, verbose=0)
        np.testing.assert_allclose(full_predictions, head_predictions, rtol=1e-4, atol=1e-5)
        benchmark.extra_info["feature_extraction_seconds"] = extraction_seconds
        record(
            "4",
            "Cached features: one extraction, then head-only epochs",
            {
                "backbone": backbone_name,
                "images": len(cached),
                "extraction s (once)": extraction_seconds,
                "max |full model - head on features|": float(np.max(np.abs(full_predictions - head_predictions))),
            },
        )
    record_benchmark(benchmark)

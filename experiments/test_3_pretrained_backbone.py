"""Experiment 3: a backbone pretrained on ImageNet, under a new classifier for --dataset (tf_flowers).

`keras.applications` backbone without its top, images resized to the backbone's input size
(224x224 in the full profile, as the lab says), global average pooling and a Dense softmax.
The backbone is checked against Keras's published structure and against the weights file
itself; then its features are put to work: a head trained on the pooled features of the
pretrained base, against the same head on a randomly initialised base, same data and budget.
The features are computed once where that is the same training (lab/finetune/stage_cache.py); a base
that draws random numbers (EfficientNet's dropout), or --augment, trains the head end to end.
Another seed trains the head compiled for the first (lab/finetune/reuse.py), with its weights drawn anew.
"""

import numpy as np
import pytest

from lab.finetune import freezing
from lab.networks import models
from lab.networks.backbones import get_backbone, weights_file_tensors
from lab.networks.training import fit, predicted_classes, tensorboard_callbacks
from lab.report.results import Table
from lab.runtime.hparams import FitSettings

pytestmark = pytest.mark.experiment(3, backbones="pretrained")

STRUCTURE = Table("Backbones against Keras's published structure", keys=("backbone",))
WEIGHTS_FILE = Table("ImageNet weights against the file", keys=("backbone",))
PRETRAINED_HEAD = Table("A head on pretrained against random features ({dataset})", keys=("backbone", "weights"))


def test_backbone_matches_keras_structure(backbone_name, profile, record):
    backbone = get_backbone(backbone_name)
    image_size = profile.image_size_of(backbone)
    base = backbone.build(image_size, None)

    side = -(-image_size // 32)
    assert len(base.layers) == backbone.layer_count
    assert base.count_params() == backbone.parameter_count
    # Downsampled 32 times with `same` padding; networks that pad `valid` (Inception, Xception) end smaller.
    assert base.output_shape[-1] == backbone.feature_channels
    assert 1 <= base.output_shape[1] == base.output_shape[2] <= side
    record(
        STRUCTURE,
        {
            "backbone": backbone_name,
            "keras.applications": backbone.keras_name,
            "input": f"{image_size}px",
            "ImageNet weights file": backbone.weights_file,
            "layers": len(base.layers),
            "parameters": base.count_params(),
            "output": "x".join(str(d) for d in base.output_shape[1:]),
        },
    )


def test_imagenet_weights_equal_the_file(backbone_name, backbone_weights, profile, record):
    backbone = get_backbone(backbone_name)
    image_size = profile.image_size_of(backbone)
    weights = backbone_weights(backbone, "imagenet")
    base = backbone.build(image_size, weights.path)

    loaded = [layer.get_weights() for layer in base.layers if layer.weights]
    from_file = weights_file_tensors(weights.path)
    assert len(loaded) == len(from_file)
    for layer_weights, file_weights in zip(loaded, from_file, strict=True):
        assert all(np.array_equal(a, b) for a, b in zip(layer_weights, file_weights, strict=True))
    random_base = backbone.build(image_size, None)
    random_loaded = [layer.get_weights() for layer in random_base.layers if layer.weights]
    differing = sum(not np.array_equal(a[0], b[0]) for a, b in zip(loaded, random_loaded, strict=True))
    assert differing == len(loaded), "some ImageNet tensors equal a random initialisation"
    record(
        WEIGHTS_FILE,
        {
            "backbone": backbone_name,
            "weights": weights.origin,
            "layers with weights": len(loaded),
            "tensors equal to the file": sum(len(w) for w in loaded),
            "layers differing from random init": differing,
        },
    )


@pytest.mark.parametrize("weights_kind", ["imagenet", "none"])
def test_pretrained_features_classify_flowers(
    weights_kind, seed, backbone_case, profile, run_config, keras_verbose, tensorboard_dir, record,
    prefix_activations, compiled_models,
):
    case = backbone_case(weights_kind, paired=True)
    backbone, data = case.backbone, case.data

    run = case.run(compiled_models, "pretrained head", seed)
    classifier = run.classifier
    assert classifier.output_shape == (None, data.num_classes)
    assert classifier.get_layer(models.BASE_LAYER_NAME).output_shape[-1] == backbone.feature_channels

    # On the base's pooled features, computed once where the cache allows: ImageNet's are the
    # same for every seed, and the same as experiment 5's head stage, which finds them kept.
    head, head_stage = run.head_span(data, profile.batch_size, run_config.cache_budget, prefix_activations)
    if head_stage.cached:
        assert head_stage.crossing == ("pooling",)
        pooled = (data.train_count, backbone.feature_channels)
        assert [array.shape for array in head_stage.train_activations] == [pooled]
        assert head is head_stage.top
    head_layer = classifier.get_layer(models.HEAD_LAYER_NAME)
    assert [w.path for w in head.trainable_weights] == [w.path for w in head_layer.weights]
    # A cached epoch is one Dense layer's pass; an end-to-end one runs the whole base.
    epochs = profile.cached_head_epochs if head_stage.cached else profile.backbone_epochs

    base = freezing.base_of(classifier)
    base_before = freezing.weight_bytes(base.layers)
    head_before = freezing.weight_bytes([head_layer])
    validation_batches = head_stage.validation_batches(profile.batch_size)
    settings = FitSettings(
        experiment=3, seed=seed, backbone=case.name, weights=weights_kind,
        image_size=case.image_size, train_images=data.train_count,
    )
    result = fit(
        head,
        head_stage.train_batches(profile.batch_size, seed),
        epochs,
        validation=validation_batches,
        verbose=keras_verbose,
        callbacks=tensorboard_callbacks(tensorboard_dir, settings=settings),
    )
    predictions = predicted_classes(head, validation_batches)

    assert freezing.changed_weights(base_before, freezing.weight_bytes(base.layers)) == []
    head_moved = freezing.changed_weights(head_before, freezing.weight_bytes([head_layer]))
    if not head_moved and weights_kind == "none" and head_stage.features_all_zero():
        pytest.skip(
            f"{case.name}'s random features are exactly zero on these images, so its head had no gradient to "
            "follow (README, Known limits: a random MobileNet is no fair random baseline)"
        )
    assert head_moved, "the head did not train"
    record(
        PRETRAINED_HEAD,
        {
            "backbone": case.name,
            "weights": weights_kind,
            "input": f"{case.image_size}px",
            "train images": data.train_count,
            "validation images": data.validation_count,
            "epochs": epochs,
            "path": head_stage.path,
            **result.summary(),
        },
        label=f"{case.name} {weights_kind}",
        curves=result.curves(),
        validation=data,
        predictions=predictions,
    )

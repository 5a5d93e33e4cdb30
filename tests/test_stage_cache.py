"""lab/finetune/stage_cache.py: a stage of gradual unfreezing trained on its frozen prefix's cached activations."""

import dataclasses

import keras
import numpy as np
import pytest

from lab.finetune import freezing, stage_cache
from lab.inputs.data import CLASS_NAMES, ImageData
from lab.networks import models
from lab.networks.backbones import get_backbone
from lab.networks.training import fit
from lab.runtime import keras_internals

IMAGE_SIZE = 32
BATCH_SIZE = 8
LEARNING_RATE = 1e-3
# The same training gives the same weights up to float round-off: relative difference of each
# trained tensor, ||cached - end to end|| / ||end to end||.
SAME_TRAINING = 1e-5


@pytest.fixture
def tiny_flowers():
    """Thirty-two random 32 px 'flowers' in five classes, as an ImageData (train 24, validation 8)."""
    rng = np.random.default_rng(11)
    images = rng.integers(0, 256, (32, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 32).astype(np.int64)
    return ImageData(
        name="tf_flowers", source="mock", class_names=CLASS_NAMES["tf_flowers"], total_examples=32,
        image_size=IMAGE_SIZE,
        train_images=images[:24], train_labels=labels[:24],
        validation_images=images[24:], validation_labels=labels[24:],
    )


def pretrained_classifier(name: str, weights_dir) -> keras.Model:
    # Real weights: a random MobileNet's activations are near-constant, which would let a
    # top trained on the wrong tensors pass unnoticed.
    backbone = get_backbone(name)
    keras.utils.set_random_seed(0)
    return models.backbone_classifier(backbone, IMAGE_SIZE, 5, str(weights_dir / backbone.weights_file))


def thaw_from(classifier: keras.Model, first_layer: str) -> None:
    """Makes `first_layer` and every base layer above it trainable (BatchNormalization frozen)."""
    names = [layer.name for layer in freezing.base_of(classifier).layers]
    freezing.set_base_trainable(classifier, set(names[names.index(first_layer):]))


def relative_difference(value: np.ndarray, reference: np.ndarray) -> float:
    return float(np.linalg.norm(value - reference) / np.linalg.norm(reference))


@pytest.mark.parametrize(
    ("backbone_name", "first_thawed", "crossing"),
    [
        # Inside a residual block: its input (the previous block's sum) skips over the cut.
        ("mobilenet_v2", "block_5_project", ("block_4_add", "block_5_depthwise_relu")),
        ("mobilenet", "conv_pw_12", ("conv_dw_12_relu",)),
    ],
)
def test_cached_stage_trains_like_the_whole_classifier(
    backbone_name, first_thawed, crossing, tiny_flowers, sample_weights_dir
):
    classifier = pretrained_classifier(backbone_name, sample_weights_dir)
    thaw_from(classifier, first_thawed)
    start = classifier.get_weights()
    trained_start = [weight.numpy() for weight in classifier.trainable_weights]
    base = freezing.base_of(classifier)
    frozen_layers = [layer for layer in base.layers if not layer.trainable_weights]
    frozen_before = freezing.weight_bytes(frozen_layers)
    statistics_before = freezing.batch_norm_statistics(classifier)

    stage = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE)
    assert stage.cached, stage.reason
    assert (stage.cut_layer, stage.crossing) == (first_thawed, crossing)
    assert [array.shape[1:] for array in stage.train_activations] == [
        tuple(base.get_layer(name).output.shape[1:]) for name in crossing
    ]
    assert [id(weight) for weight in stage.top.trainable_weights] == [
        id(weight) for weight in classifier.trainable_weights
    ]

    # A fixed batch order (no shuffle): a shuffled epoch batches the images otherwise than the
    # prefix pass did, and the kernels' round-off depends on the batch; Adam amplifies it where
    # a gradient is near zero (measured: 3e-5 on Conv_1/kernel with the same shuffle seed).
    models.compile_for_classification(stage.top, LEARNING_RATE)
    fit(stage.top, stage.train_batches(BATCH_SIZE, seed=None), epochs=1)
    cached = [weight.numpy() for weight in classifier.trainable_weights]
    top_predictions = stage.top.predict(stage.validation_activations, verbose=0)
    classifier_predictions = classifier.predict(tiny_flowers.scaled("validation"), verbose=0)
    assert freezing.changed_weights(frozen_before, freezing.weight_bytes(frozen_layers)) == []
    assert freezing.batch_norm_statistics(classifier) == statistics_before

    classifier.set_weights(start)
    models.compile_for_classification(classifier, LEARNING_RATE)
    fit(classifier, tiny_flowers.batches("train", BATCH_SIZE, seed=None), epochs=1)
    end_to_end = [weight.numpy() for weight in classifier.trainable_weights]
    end_to_end_predictions = classifier.predict(tiny_flowers.scaled("validation"), verbose=0)

    assert not any(np.array_equal(*pair) for pair in zip(end_to_end, trained_start, strict=True))
    moved = relative_difference(flat(end_to_end), flat(trained_start))
    assert moved > 100 * SAME_TRAINING, "an epoch barely moved the weights: the comparison would say nothing"
    paths = [weight.path for weight in classifier.trainable_weights]
    differences = {
        path: relative_difference(*pair) for path, pair in zip(paths, zip(cached, end_to_end, strict=True), strict=True)
    }
    assert {path: value for path, value in differences.items() if value > SAME_TRAINING} == {}
    np.testing.assert_allclose(top_predictions, end_to_end_predictions, atol=1e-5)
    np.testing.assert_allclose(classifier_predictions, top_predictions, atol=1e-6)


def flat(weights: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([weight.ravel() for weight in weights])


def test_head_stage_cuts_after_pooling(sample_weights_dir):
    classifier = pretrained_classifier("mobilenet_v2", sample_weights_dir)
    freezing.freeze_base(classifier)

    cut = stage_cache.find_cut(classifier)

    assert (cut.cut_layer, cut.inside_base, cut.crossing_names) == (models.HEAD_LAYER_NAME, False, ("pooling",))
    assert cut.cache_bytes(10) == 10 * 4 * get_backbone("mobilenet_v2").feature_channels
    split = stage_cache.split_models(classifier, cut)
    assert [layer.name for layer in split.top.layers if layer.weights] == [models.HEAD_LAYER_NAME]


def test_over_budget_is_refused_before_the_prefix_runs(tiny_flowers, sample_weights_dir, monkeypatch):
    classifier = pretrained_classifier("mobilenet_v2", sample_weights_dir)
    thaw_from(classifier, "block_5_project")
    base = freezing.base_of(classifier)
    crossing = ("block_4_add", "block_5_depthwise_relu")
    per_image = sum(int(np.prod(base.get_layer(name).output.shape[1:])) * 4 for name in crossing)
    size = per_image * (tiny_flowers.train_count + tiny_flowers.validation_count)

    def never(*args, **kwargs):
        raise AssertionError("the prefix was built although the cache is over budget")

    monkeypatch.setattr(stage_cache, "split_models", never)
    stage = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE, budget_bytes=size - 1)

    assert not stage.cached
    assert "over the cache budget" in stage.reason
    assert (stage.cache_bytes, stage.top, stage.train_activations) == (size, None, ())


def small_classifier(below_cut: keras.layers.Layer, above_cut: keras.layers.Layer | None = None) -> keras.Model:
    """A classifier shaped like `backbone_classifier`'s, its nested base thawed from `below_cut` up.

    The base is `low_conv`, `below_cut`, `high_conv`, then `above_cut` if given; `low_conv` is
    frozen, every other layer trainable (BatchNormalization too).
    """
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    hidden = keras.layers.Conv2D(4, 3, padding="same", name="low_conv")(images)
    hidden = keras.layers.Conv2D(4, 3, name="high_conv")(below_cut(hidden))
    if above_cut is not None:
        hidden = above_cut(hidden)
    base = keras.Model(images, hidden, name=models.BASE_LAYER_NAME)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="pooling")(base(inputs))
    classifier = keras.Model(inputs, keras.layers.Dense(3, name=models.HEAD_LAYER_NAME)(pooled))
    thawed = {layer.name for layer in base.layers} - {"low_conv"}
    freezing.set_base_trainable(classifier, thawed, train_bn=True)
    return classifier


@pytest.mark.parametrize(
    ("below_cut", "problem"),
    [
        (keras.layers.Dropout(0.5, name="dropout"), "Dropout dropout below the cut draws random numbers"),
        (keras.layers.GaussianNoise(0.1, name="noise"), "GaussianNoise noise below the cut draws random numbers"),
        # No scale and no shift: a trainable BatchNormalization without trainable weights, so
        # the cut passes above it.
        (
            keras.layers.BatchNormalization(center=False, scale=False, name="norm"),
            "BatchNormalization norm below the cut is trainable",
        ),
    ],
)
def test_a_prefix_that_is_not_deterministic_is_refused(below_cut, problem, tiny_flowers, monkeypatch):
    classifier = small_classifier(below_cut)

    def never(*args, **kwargs):
        raise AssertionError("the prefix was built although it is not deterministic")

    monkeypatch.setattr(stage_cache, "split_models", never)
    stage = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE)

    assert stage.cut_layer == "high_conv"
    assert not stage.cached
    assert problem in stage.reason


@pytest.mark.parametrize(
    ("below_cut", "above_cut", "cut_layer"),
    [
        # The contrast of the test above: the same kinds of layer, in the top.
        (keras.layers.ReLU(name="relu"), keras.layers.Dropout(0.5, name="dropout"), "high_conv"),
        (keras.layers.BatchNormalization(name="norm"), None, "norm"),
    ],
)
def test_randomness_and_trainable_normalisation_in_the_top_are_cached(below_cut, above_cut, cut_layer):
    cut = stage_cache.find_cut(small_classifier(below_cut, above_cut))

    assert cut.cut_layer == cut_layer
    assert stage_cache.prefix_problems(cut) == []


def test_nothing_trainable_or_nothing_frozen_is_not_cached(tiny_flowers):
    classifier = small_classifier(keras.layers.ReLU(name="relu"))
    freezing.base_of(classifier).get_layer("low_conv").trainable = True
    stage = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE)
    assert (stage.cached, stage.cut_layer) == (False, "low_conv")
    assert "nothing frozen to cache" in stage.reason

    for layer in classifier.layers:
        layer.trainable = False
    stage = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE)
    assert (stage.cached, stage.cut_layer, stage.reason) == (False, None, "nothing in the classifier is trainable")


def test_a_graph_with_plain_operations_between_layers_is_cut(tiny_flowers):
    # ConvNeXt sums each block's residual with a plain `Add` operation, not a layer: the cut
    # must see the tensors operations make as well as those layers make.
    keras.utils.set_random_seed(0)
    classifier = models.backbone_classifier(get_backbone("ConvNeXtTiny"), IMAGE_SIZE, 5, None)
    first_thawed = "convnext_tiny_stage_3_block_1_pointwise_conv_1"
    thaw_from(classifier, first_thawed)

    stage = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE)

    assert stage.cached, stage.reason
    assert (stage.cut_layer, stage.crossing[1]) == (first_thawed, "convnext_tiny_stage_3_block_1_layernorm")
    # The block's input, the previous block's sum, skips over the cut to this block's `Add`.
    cut = stage_cache.find_cut(classifier)
    assert [type(keras_internals.producing_operation(tensor)).__name__ for tensor in cut.crossing] == [
        "Add",
        "LayerNormalization",
    ]
    assert [id(weight) for weight in stage.top.trainable_weights] == [
        id(weight) for weight in classifier.trainable_weights
    ]
    np.testing.assert_allclose(
        stage.top.predict(stage.validation_activations, verbose=0),
        classifier.predict(tiny_flowers.scaled("validation"), verbose=0),
        atol=1e-6,
    )


def test_a_prefix_pass_is_shared_only_by_the_same_frozen_weights_over_the_same_images(
    tiny_flowers, sample_weights_dir
):
    passes = stage_cache.PrefixActivations()
    stages = []
    for _ in range(2):
        classifier = pretrained_classifier("mobilenet", sample_weights_dir)
        thaw_from(classifier, "conv_pw_12")
        stages.append(stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE, earlier_passes=passes))
    first, again = stages

    assert (first.prefix_shared, again.prefix_shared) == (False, True)
    assert again.path == "cached, prefix pass shared"
    assert again.train_activations[0] is first.train_activations[0]
    # A weight below the cut that differs, or other images, is another pass.
    below = classifier.get_layer(models.BASE_LAYER_NAME).get_layer("conv_pw_11")
    below.kernel.assign(below.kernel * 1.5)
    changed = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE, earlier_passes=passes)
    assert not changed.prefix_shared
    assert not np.allclose(changed.train_activations[0], first.train_activations[0])
    other_images = dataclasses.replace(tiny_flowers)
    assert not stage_cache.cache_stage(classifier, other_images, BATCH_SIZE, earlier_passes=passes).prefix_shared


def test_every_seeds_split_is_served_by_one_pass_over_its_images(tiny_flowers, sample_weights_dir):
    passes = stage_cache.PrefixActivations()
    classifier = pretrained_classifier("mobilenet", sample_weights_dir)
    thaw_from(classifier, "conv_pw_12")
    pooled = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE, earlier_passes=passes)

    split = tiny_flowers.split_for_seed(4)
    stage = stage_cache.cache_stage(classifier, split, BATCH_SIZE, earlier_passes=passes)
    own = stage_cache.cache_stage(classifier, dataclasses.replace(split, pool=None, pool_indices=None), BATCH_SIZE)

    assert not pooled.prefix_shared and stage.prefix_shared
    for shared, computed in ((stage.train_activations, own.train_activations),
                             (stage.validation_activations, own.validation_activations)):
        np.testing.assert_allclose(shared[0], computed[0], rtol=1e-5, atol=1e-6)


def test_prefix_passes_over_the_budget_are_not_kept(tiny_flowers, sample_weights_dir):
    classifier = pretrained_classifier("mobilenet", sample_weights_dir)
    thaw_from(classifier, "conv_pw_12")
    size = stage_cache.find_cut(classifier).cache_bytes(tiny_flowers.train_count + tiny_flowers.validation_count)
    passes = stage_cache.PrefixActivations(budget_bytes=size - 1)

    stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE, earlier_passes=passes)

    assert not stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE, earlier_passes=passes).prefix_shared


def test_one_prefix_pass_gives_the_later_stages_activations_as_their_own_passes_would(
    tiny_flowers, sample_weights_dir
):
    classifier = pretrained_classifier("mobilenet_v2", sample_weights_dir)
    base = freezing.base_of(classifier)
    names = [layer.name for layer in base.layers]
    # Head only, then the top block, then down into a residual block (two tensors cross).
    stages = [set(), set(names[names.index("block_16_expand"):]), set(names[names.index("block_5_project"):])]
    flags = [layer.trainable for layer in base.layers]
    cuts = stage_cache.stage_cuts(classifier, stages)
    assert [layer.trainable for layer in base.layers] == flags
    assert [cut.cut_layer for cut in cuts] == [models.HEAD_LAYER_NAME, "block_16_expand", "block_5_project"]

    passes = stage_cache.PrefixActivations()
    for number, trainable in enumerate(stages):
        freezing.set_base_trainable(classifier, trainable)
        stage = stage_cache.cache_stage(
            classifier, tiny_flowers, BATCH_SIZE, earlier_passes=passes, later_cuts=cuts[number + 1:]
        )
        alone = stage_cache.cache_stage(classifier, tiny_flowers, BATCH_SIZE)

        assert stage.prefix_shared == (number > 0)
        assert stage.crossing == alone.crossing
        for joint, own in zip(
            stage.train_activations + stage.validation_activations,
            alone.train_activations + alone.validation_activations,
            strict=True,
        ):
            np.testing.assert_allclose(joint, own, rtol=1e-5, atol=1e-6)

"""Every keras.applications family through the lab: derived entry, graph stages, gradual unfreezing,
and experiment 3's head.

One network per family (the source module Keras defines it in), random weights, at the
smallest input Keras accepts for it.
"""

import keras
import numpy as np
import pytest

from lab.finetune import freezing
from lab.finetune.reuse import CompiledRun
from lab.finetune.stage_cache import DEFAULT_CACHE_BUDGET
from lab.inputs.data import ImageData
from lab.networks import backbones, models
from lab.runtime import keras_internals

# The smallest network of each family.
FAMILY_MEMBERS = {
    "convnext": "ConvNeXtTiny",
    "densenet": "DenseNet121",
    "efficientnet": "EfficientNetB0",
    "efficientnet_v2": "EfficientNetV2B0",
    "inception_resnet_v2": "InceptionResNetV2",
    "inception_v3": "InceptionV3",
    "mobilenet": "MobileNet",
    "mobilenet_v2": "MobileNetV2",
    "mobilenet_v3": "MobileNetV3Small",
    "nasnet": "NASNetMobile",
    "resnet": "ResNet50",
    "resnet_v2": "ResNet50V2",
    "vgg16": "VGG16",
    "vgg19": "VGG19",
    "xception": "Xception",
}
# A NASNet cell takes the outputs of the two cells below it: between cells, two tensors cross.
TWO_TENSOR_CUTS = {"nasnet"}
# Dropout inside the base draws random numbers in training: the stage cache refuses its features.
END_TO_END_HEADS = {"efficientnet", "efficientnet_v2"}
NUM_CLASSES = 3

pytestmark = pytest.mark.families


def test_every_family_has_a_member_here():
    families = {backbones.family_of(getattr(keras.applications, name)) for name in backbones.keras_application_names()}

    assert families == set(FAMILY_MEMBERS)
    assert all(
        backbones.family_of(getattr(keras.applications, name)) == family for family, name in FAMILY_MEMBERS.items()
    )


def _tensors_crossing(base: keras.Model, index: int) -> list[int]:
    """For each place between layers `index - 1` and `index` of `base` (plain operations may lie
    between them), the number of tensors made below it and used at or above it, found by
    walking every node."""
    operations = base.operations
    lower, upper = operations.index(base.layers[index - 1]), operations.index(base.layers[index])
    counts = []
    for place in range(lower + 1, upper + 1):
        above = {id(operation) for operation in operations[place:]}
        used_above = {
            id(tensor)
            for operation in operations[place:]
            for node in operation._inbound_nodes
            for tensor in node.input_tensors
            if id(keras_internals.producing_operation(tensor)) not in above
        }
        made_below = {
            id(tensor) for tensor in base.outputs if id(keras_internals.producing_operation(tensor)) not in above
        }
        counts.append(len(used_above | made_below))
    return counts


def _assert_keras_splits_there(base: keras.Model, index: int) -> None:
    # Keras's own graph walk: a Functional model from one tensor to the output holds exactly
    # the layers above the cut, and cannot be built if any of them needs another tensor.
    above = {layer.name for layer in base.layers[index:]}
    made_below = [
        output
        for operation in base.operations[: base.operations.index(base.layers[index])]
        for output in keras.tree.flatten(operation.output)
    ]
    for tensor in reversed(made_below):
        try:
            top = keras.Model(tensor, base.output)
        except ValueError:
            continue
        if {layer.name for layer in top.layers if not isinstance(layer, keras.layers.InputLayer)} == above:
            assert {layer.name for layer in keras.Model(base.input, tensor).layers} == {
                layer.name for layer in base.layers[:index]
            }
            return
    raise AssertionError(f"no single tensor connects the layers below {base.layers[index].name} to the rest")


@pytest.mark.parametrize("family", FAMILY_MEMBERS)
def test_family_unfreezes_top_down_and_trains(family):
    backbone = backbones.get_backbone(FAMILY_MEMBERS[family])
    size = backbone.minimum_image_size
    classifier = models.backbone_classifier(backbone, size, NUM_CLASSES, None)
    base = freezing.base_of(classifier)

    # Not `backbone.feature_channels`: a derived entry builds the network again to count it, which
    # tests/test_backbones.py checks once (and here would double each family's build).
    cuts = backbones.cut_points(base)
    assert cuts, "no single-tensor cut"
    assert all(min(_tensors_crossing(base, index)) == 1 for index in cuts)

    stages = backbone.stages_top_down(base)
    assert len(stages) >= 3, [name for name, _ in stages]
    starts = [base.layers.index(layers[0]) for _, layers in stages[:-1]]
    if family in TWO_TENSOR_CUTS:
        assert all(min(_tensors_crossing(base, start)) <= 2 for start in starts)
    else:
        for start in starts:
            _assert_keras_splits_there(base, start)

    schedule = freezing.gradual_schedule(backbone, base, "blocks", len(stages), epochs_per_stage=1)
    trainable_counts, lowest_thawed = [], []
    for stage in schedule:
        freezing.set_base_trainable(classifier, set(stage.trainable_layers))
        trainable_counts.append(len(classifier.trainable_weights))
        thawed = [index for index, layer in enumerate(base.layers) if layer.name in stage.trainable_layers]
        if thawed:
            # Top down: what is thawed is always every layer from some point to the top.
            assert thawed == list(range(thawed[0], len(base.layers)))
            lowest_thawed.append(thawed[0])
    assert all(lower < higher for lower, higher in zip(trainable_counts, trainable_counts[1:], strict=False))
    assert all(higher > lower for higher, lower in zip(lowest_thawed, lowest_thawed[1:], strict=False))
    # The last stage thaws the whole base, BatchNormalization aside; the head holds 2 tensors.
    assert trainable_counts[-1] == freezing.expected_trainable_tensors(base.layers) + 2

    models.compile_for_classification(classifier)
    # Eagerly: tracing the step of a large network takes tens of seconds on two CPU cores.
    classifier.run_eagerly = True
    images = np.random.default_rng(0).random((2, size, size, 3), dtype=np.float32)
    head = [classifier.get_layer(models.HEAD_LAYER_NAME)]
    before = freezing.weight_bytes(head)
    loss = classifier.train_on_batch(images, np.array([0, 2]))
    assert np.isfinite(loss).all()
    assert int(classifier.optimizer.iterations) == 1
    # The head only: a random base with BatchNormalization frozen at 0 and 1 may give features
    # so close to 0 that no gradient reaches its own layers (MobileNet, see DESIGN.md).
    assert freezing.changed_weights(before, freezing.weight_bytes(head)), "the step changed nothing"

    _trains_its_head_as_experiment_3(classifier, family, size)


def _random_images(size: int) -> ImageData:
    """Two training and two validation images of `size` px, random pixels, in NUM_CLASSES classes."""
    images = np.random.default_rng(0).integers(0, 256, (4, size, size, 3), dtype=np.uint8)
    labels = np.array([0, 2, 1, 0])
    return ImageData(
        name="random", source="mock", class_names=tuple("abc"[:NUM_CLASSES]), total_examples=4, image_size=size,
        train_images=images[:2], train_labels=labels[:2], validation_images=images[2:], validation_labels=labels[2:],
    )


def _trains_its_head_as_experiment_3(classifier: keras.Model, family: str, size: int) -> None:
    """One step of experiment 3's head path (`CompiledRun.head_span`): the head moves, the base does not."""
    data = _random_images(size)
    head, stage = CompiledRun(classifier).head_span(data, batch_size=2, budget_bytes=DEFAULT_CACHE_BUDGET)
    assert stage.cached == (family not in END_TO_END_HEADS), stage.path
    base, head_layer = freezing.base_of(classifier), classifier.get_layer(models.HEAD_LAYER_NAME)
    assert [w.path for w in head.trainable_weights] == [w.path for w in head_layer.weights]

    # Eagerly, as above: end to end, the step runs the whole base.
    head.run_eagerly = True
    base_before, head_before = freezing.weight_bytes(base.layers), freezing.weight_bytes([head_layer])
    head.fit(stage.train_batches(2, seed=0), epochs=1, verbose=0)
    assert freezing.changed_weights(base_before, freezing.weight_bytes(base.layers)) == []
    assert freezing.changed_weights(head_before, freezing.weight_bytes([head_layer])), "the head did not train"
    assert head.predict(stage.validation_batches(2), verbose=0).shape == (data.validation_count, NUM_CLASSES)

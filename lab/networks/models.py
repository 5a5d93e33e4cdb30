"""The lab's models: the small CNN, its transfer to a new task, and a classifier on a backbone."""

from __future__ import annotations

import keras

from lab.networks import training_step
from lab.networks.adam import adam
from lab.networks.backbones import Backbone, get_backbone
from lab.runtime import keras_internals

BASE_LAYER_NAME = "base"
HEAD_LAYER_NAME = "head"
AUGMENTATION_LAYER_NAME = "augmentation"


def lab_cnn(
    num_classes: int, image_size: int = 32, filters: tuple[int, int, int] = (32, 64, 128)
) -> keras.Sequential:
    """The lab's base model: 3 x (Conv2D 5x5 same relu, MaxPooling2D), Flatten, 2 Dense.

    Args:
        num_classes: width of the softmax output.
        image_size: side of the square RGB input.
        filters: the widths of the three convolutions.
    """
    convolutions = []
    for index, width in enumerate(filters, start=1):
        convolutions += [
            keras.layers.Conv2D(width, 5, padding="same", activation="relu", name=f"conv{index}"),
            keras.layers.MaxPooling2D(name=f"pool{index}"),
        ]
    return keras.Sequential(
        [
            keras.Input((image_size, image_size, 3)),
            *convolutions,
            keras.layers.Flatten(name="flatten"),
            keras.layers.Dense(128, activation="relu", name="dense"),
            keras.layers.Dense(num_classes, activation="softmax", name="classifier", dtype="float32"),
        ],
        name="lab_cnn",
    )


def lab_cnn_parameter_count(
    num_classes: int, image_size: int, filters: tuple[int, int, int]
) -> int:
    """The parameters of `lab_cnn`, computed from the architecture rather than from Keras."""
    count, channels, side = 0, 3, image_size
    for width in filters:
        count += 5 * 5 * channels * width + width
        channels, side = width, side // 2
    flattened = side * side * channels
    return count + flattened * 128 + 128 + 128 * num_classes + num_classes


def feature_layers(model: keras.Model) -> list[keras.layers.Layer]:
    """The convolution and pooling layers of `model`, in order: what transfers to a new task."""
    return [
        layer
        for layer in model.layers
        if isinstance(layer, (keras.layers.Conv2D, keras.layers.MaxPooling2D))
    ]


def flatten_layer(model: keras.Model) -> keras.layers.Flatten:
    """The model's only Flatten layer, found by type: positions differ between model kinds."""
    flattens = [layer for layer in model.layers if isinstance(layer, keras.layers.Flatten)]
    if len(flattens) != 1:
        raise ValueError(f"{model.name} has {len(flattens)} Flatten layers, expected exactly 1")
    return flattens[0]


def transfer_model(base: keras.Model, num_classes: int) -> keras.Model:
    """Keeps every convolution and pooling layer of `base` and puts a new Dense head on them.

    The returned model shares its convolution layers (and their weights) with `base`.
    """
    flattened = flatten_layer(base).output
    hidden = keras.layers.Dense(128, activation="relu", name="transfer_dense")(flattened)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", name="transfer_classifier", dtype="float32"
    )(hidden)
    return keras.Model(base.inputs, outputs, name="transfer")


@keras.saving.register_keras_serializable(package="lab")
class BackbonePreprocessing(keras.layers.Layer):
    """Turns the lab's images in [0, 1] into the input a keras.applications backbone expects.

    Inside the classifier, so that a backbone can never receive another network's scaling.
    """

    def __init__(self, backbone: str, **kwargs):
        super().__init__(**kwargs)
        self.backbone = backbone
        self._preprocess_input = get_backbone(backbone).preprocess_input

    def call(self, images):
        return self._preprocess_input(images * 255.0)

    def get_config(self) -> dict:
        return {**super().get_config(), "backbone": self.backbone}


def augmentation() -> keras.Sequential:
    """The Keras transfer-learning guide's augmentation: horizontal flips, rotations and zooms of 10%.

    Random layers transform only in training (`fit`); `predict` and `evaluate` pass images
    through unchanged. Their seeds come from Keras's global seed (`keras.utils.set_random_seed`).
    """
    return keras.Sequential(
        [
            keras.layers.RandomFlip("horizontal", name="random_flip"),
            keras.layers.RandomRotation(0.1, name="random_rotation"),
            keras.layers.RandomZoom(0.1, name="random_zoom"),
        ],
        name=AUGMENTATION_LAYER_NAME,
    )


def backbone_classifier(
    backbone: Backbone,
    image_size: int,
    num_classes: int,
    weights_path: str | None,
    augment: bool = False,
    head_seed: int | None = None,
) -> keras.Model:
    """Backbone without its top, GlobalAveragePooling2D, and a Dense softmax head.

    The model takes images in [0, 1] and applies the backbone's own preprocessing. The base is
    called plainly: in Keras 3 an outer `fit` overrides a nested model's `training=False`, so
    what keeps BatchNormalization in inference mode is its layer being frozen (see
    lab/finetune/freezing.py), not the call.

    Args:
        backbone: the registry entry.
        image_size: side of the square RGB input.
        num_classes: width of the softmax head.
        weights_path: a weights file for the base, or None for a random initialisation.
        augment: put `augmentation()` in front of the preprocessing. Features computed once
            (lab/finetune/features.py, lab/finetune/stage_cache.py) are then no longer what training sees.
        head_seed: the seed of the head's starting weights, or None to draw it from Keras's
            global seed. A seeded head does not depend on how many seeds the base drew, so
            `draw_head` can give it again without building the base.
    """
    base = backbone.build(image_size, weights_path, name=BASE_LAYER_NAME)
    inputs = keras.Input((image_size, image_size, 3), name="images")
    images = augmentation()(inputs) if augment else inputs
    scaled = BackbonePreprocessing(backbone.name, name="preprocessing")(images)
    features = base(scaled)
    pooled = keras.layers.GlobalAveragePooling2D(name="pooling")(features)
    # float32 softmax keeps the loss stable under a mixed_float16 policy (--mixed-precision).
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", kernel_initializer=head_initializer(head_seed), name=HEAD_LAYER_NAME,
        dtype="float32",
    )(pooled)
    return keras.Model(inputs, outputs, name=f"{backbone.name}_classifier")


def head_initializer(head_seed: int | None) -> keras.initializers.Initializer:
    """The head's kernel initializer: Keras's default for Dense, seeded with `head_seed` if given."""
    return keras.initializers.GlorotUniform(seed=head_seed)


def draw_head(classifier: keras.Model, head_seed: int) -> None:
    """Puts into the head of a `backbone_classifier` the starting weights it was built with for `head_seed`."""
    head = classifier.get_layer(HEAD_LAYER_NAME)
    head.kernel.assign(head_initializer(head_seed)(head.kernel.shape, head.kernel.dtype))
    head.bias.assign(head.bias_initializer(head.bias.shape, head.bias.dtype))


def compile_for_classification(
    model: keras.Model,
    learning_rate: float | keras.optimizers.schedules.LearningRateSchedule = 1e-3,
    optimizer: keras.optimizers.Optimizer | None = None,
) -> None:
    """Adam (the run's `--adam`, `lab.networks.adam.adam`) and sparse categorical cross-entropy, as the lab
    asks, tracking accuracy, with XLA as the run's `--xla` says (`lab.networks.training_step`; Keras's
    "auto" by default).

    Args:
        model: the model to compile.
        learning_rate: Adam's rate, constant or a schedule.
        optimizer: a fresh optimizer to use instead of Adam at `learning_rate` (for instance
            the discriminative rates of `lab.networks.optimizers.discriminative_optimizer`).
    """
    model.compile(
        optimizer=optimizer or adam(learning_rate),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=training_step.current().jit_compile,
    )
    build_training_state(model)


def build_training_state(model: keras.Model) -> None:
    """Creates a compiled model's optimizer, loss and metric variables now, before the first fit.

    Without a distribution strategy, Keras's TensorFlow trainer creates them inside the first
    trace of the train step, and a tf.function that creates variables while tracing is traced
    a second time: the first epoch after every compile would trace twice (ResNet50 unfrozen at
    96 px on two cores: 26 s for the first epoch, 15 s with this). Keras's own symbolic build
    creates them too, but runs the whole network symbolically to learn the predictions' shape
    (0.4 s for ResNet50, 2 s for InceptionResNetV2); a Functional model's outputs already say it.
    """
    labels = keras.KerasTensor((None,), "int32")
    inputs = model.inputs[0] if len(model.inputs) == 1 else list(model.inputs)
    predictions = model.outputs[0] if len(model.outputs) == 1 else list(model.outputs)
    with model.distribute_strategy.scope():
        # Keras exports no public way to build metric and loss state from symbolic tensors.
        keras_internals.build_loss_and_metric_state(model, inputs, labels, predictions)
        if not model.optimizer.built:
            model.optimizer.build(model.trainable_variables)

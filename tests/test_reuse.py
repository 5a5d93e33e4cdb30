"""lab/finetune/reuse.py: a compiled model trained again from fresh weights, its graph traced once."""

import json
import textwrap

import keras
import numpy as np
import pytest

from lab.finetune import stage_cache
from lab.finetune.reuse import CompiledRuns, ReusableModel
from lab.inputs.data import ImageData
from lab.networks import models, optimizers
from lab.networks.backbones import get_backbone
from lab.networks.training import fit

# Under op determinism: a model built and compiled for seed 1, against one compiled for seed 0,
# trained, then restarted with seed 1's initial weights. The control restarts only the weights.
REUSE_AGAINST_FRESH = """
    import json
    import numpy as np
    from lab.networks import models
    from lab.runtime import reproducibility, storage
    from lab.inputs.data import batched_pairs
    from lab.finetune.reuse import ReusableModel

    reproducibility.enable_determinism()
    images = np.random.default_rng(7).random((48, 32, 32, 3), dtype=np.float32)
    labels = np.arange(48) % 5

    def build(seed):
        reproducibility.seed_everything(seed)
        model = models.lab_cnn(5, 32, (4, 4, 4))
        model.get_layer("conv1").trainable = False
        return model

    def train(model):
        model.fit(batched_pairs(images, labels, 16, seed=3), epochs=2, verbose=0)
        return storage.weights_digest(model)

    fresh = build(1)
    models.compile_for_classification(fresh, 5e-4)
    fresh_digest = train(fresh)

    model = build(0)
    models.compile_for_classification(model)
    reusable = ReusableModel.of(model)
    train(model)
    traced = model.train_function
    reusable.restart(build(1).get_weights(), learning_rate=5e-4)
    reused_digest = train(model)
    traced_once = model.train_function is traced

    model.set_weights(build(1).get_weights())
    model.optimizer.learning_rate = 5e-4
    weights_only_digest = train(model)
    print(json.dumps({"fresh": fresh_digest, "reused": reused_digest, "weights only": weights_only_digest,
                      "traced once": traced_once}))
"""


def test_reused_model_trains_byte_identically_to_a_fresh_one(run_python):
    completed, _ = run_python("-c", textwrap.dedent(REUSE_AGAINST_FRESH))
    assert completed.returncode == 0, completed.stderr
    digests = json.loads(completed.stdout.strip().splitlines()[-1])

    assert digests["traced once"]
    assert digests["reused"] == digests["fresh"]
    # The control: the optimizer's moments and step count carried over change the training.
    assert digests["weights only"] != digests["fresh"]


def small_model() -> keras.Model:
    inputs = keras.Input((4,))
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    return keras.Model(inputs, keras.layers.Dense(2, activation="softmax", name="out")(hidden))


def test_changed_trainable_layers_need_a_compile():
    model = small_model()
    models.compile_for_classification(model)
    reusable = ReusableModel.of(model)
    weights = model.get_weights()
    model.get_layer("hidden").trainable = False

    with pytest.raises(ValueError, match="compile it again"):
        reusable.restart(weights)


def test_only_an_untrained_compiled_model_can_be_made_reusable():
    model = small_model()
    with pytest.raises(ValueError, match="compile"):
        ReusableModel.of(model)

    models.compile_for_classification(model)
    model.fit(np.zeros((4, 4)), np.zeros(4), epochs=1, verbose=0)
    with pytest.raises(ValueError, match="already trained"):
        ReusableModel.of(model)


def test_multi_optimizer_restarts_by_its_variables():
    model = small_model()
    hidden, out = keras.optimizers.Adam(1e-2, name="hidden"), keras.optimizers.Adam(1e-3, name="out")
    routes = optimizers.GroupRoutes(
        [hidden, out], [[weight.path for weight in model.get_layer(name).weights] for name in ("hidden", "out")]
    )
    models.compile_for_classification(model, optimizer=keras.optimizers.MultiOptimizer(routes))
    reusable = ReusableModel.of(model)
    start = [variable.numpy() for variable in model.optimizer.variables]
    model.fit(np.ones((4, 4)), np.arange(4) % 2, epochs=1, verbose=0)
    assert int(hidden.iterations.numpy()) == 1

    reusable.restart(None)

    restored = [variable.numpy() for variable in model.optimizer.variables]
    assert all(np.array_equal(*pair) for pair in zip(restored, start, strict=True))
    assert [float(optimizer.learning_rate.numpy()) for optimizer in (hidden, out)] == pytest.approx([1e-2, 1e-3])
    with pytest.raises(ValueError, match="per-group rates"):
        reusable.restart(None, learning_rate=1e-4)



def test_multi_optimizer_with_a_group_that_owns_nothing_yet_restarts():
    """A block still frozen at this stage gives its sub-optimizer no variable: it is never built."""
    model = small_model()
    model.get_layer("hidden").trainable = False
    hidden, out = keras.optimizers.Adam(1e-2, name="hidden"), keras.optimizers.Adam(1e-3, name="out")
    routes = optimizers.GroupRoutes([hidden, out], [[], [weight.path for weight in model.get_layer("out").weights]])
    models.compile_for_classification(model, optimizer=keras.optimizers.MultiOptimizer(routes))
    reusable = ReusableModel.of(model)
    start = [variable.numpy() for variable in model.optimizer.variables]
    model.fit(np.ones((4, 4)), np.arange(4) % 2, epochs=1, verbose=0)

    reusable.restart(None)

    restored = [variable.numpy() for variable in model.optimizer.variables]
    assert all(np.array_equal(*pair) for pair in zip(restored, start, strict=True))


IMAGE_SIZE = 8


def tiny_classifier(seed: int) -> keras.Model:
    """A classifier shaped like `backbone_classifier`'s: a nested base, its lower convolution frozen, under a head."""
    keras.utils.set_random_seed(seed)
    images = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    hidden = keras.layers.Conv2D(4, 3, padding="same", name="low_conv")(images)
    base = keras.Model(images, keras.layers.Conv2D(4, 3, name="high_conv")(hidden), name=models.BASE_LAYER_NAME)
    inputs = keras.Input((IMAGE_SIZE, IMAGE_SIZE, 3))
    pooled = keras.layers.GlobalAveragePooling2D(name="pooling")(base(inputs))
    head = keras.layers.Dense(3, activation="softmax", name=models.HEAD_LAYER_NAME)(pooled)
    base.get_layer("low_conv").trainable = False
    return keras.Model(inputs, head)


@pytest.fixture
def tiny_images() -> ImageData:
    rng = np.random.default_rng(5)
    images = rng.integers(0, 256, (24, IMAGE_SIZE, IMAGE_SIZE, 3), dtype=np.uint8)
    labels = rng.integers(0, 3, 24).astype(np.int64)
    return ImageData(
        name="tiny", source="mock", class_names=("a", "b", "c"), total_examples=24, image_size=IMAGE_SIZE,
        train_images=images[:16], train_labels=labels[:16],
        validation_images=images[16:], validation_labels=labels[16:],
    )


def train_span(run, data: ImageData, cached: bool, seed: int) -> tuple[list[np.ndarray], bool, object]:
    """Trains compile span 0 of `run` for two epochs, as experiment 5 does; (weights, reused, train_function)."""
    cache = (
        stage_cache.cache_stage(run.classifier, data, 8, split=run.split(0))
        if cached
        else stage_cache.CachedStage("--cached off", None)
    )
    trained, reused = run.span_model(0, cache, lambda: keras.optimizers.Adam(1e-2))
    batches = cache.train_batches(8, seed) if cached else data.batches("train", 8, seed=seed)
    fit(trained, batches, epochs=2)
    return [weight.numpy() for weight in run.classifier.weights], reused, trained.train_function


@pytest.mark.parametrize("cached", [True, False], ids=["cached", "end-to-end"])
def test_a_reused_run_trains_like_a_fresh_one_from_the_same_seed(cached, tiny_images):
    fresh_run = CompiledRuns(keep=True).start("case", lambda: tiny_classifier(1))
    fresh, reused_fresh, _ = train_span(fresh_run, tiny_images, cached, 3)

    runs = CompiledRuns(keep=True)
    first, _, traced = train_span(runs.start("case", lambda: tiny_classifier(0)), tiny_images, cached, 3)
    run = runs.start("case", lambda: tiny_classifier(1))
    again, reused, traced_again = train_span(run, tiny_images, cached, 3)

    assert (reused_fresh, run.reused, reused) == (False, True, True)
    assert traced_again is traced
    assert not all(np.array_equal(*pair) for pair in zip(first, fresh, strict=True))
    for value, expected in zip(again, fresh, strict=True):
        np.testing.assert_allclose(value, expected, rtol=1e-6, atol=1e-7)


def test_one_seed_keeps_nothing():
    runs = CompiledRuns(keep=False)
    first = runs.start("case", small_model)
    assert runs.start("case", small_model) is not first


def test_a_seeded_head_depends_on_its_seed_alone():
    def head_kernel(global_seed, head_seed):
        keras.utils.set_random_seed(global_seed)
        classifier = models.backbone_classifier(get_backbone("mobilenet"), 32, 5, None, head_seed=head_seed)
        return classifier.get_layer(models.HEAD_LAYER_NAME).kernel.numpy()

    assert np.array_equal(head_kernel(0, 1), head_kernel(5, 1))
    assert not np.array_equal(head_kernel(0, 1), head_kernel(0, 2))


def test_a_kept_run_of_a_base_from_a_file_draws_its_head_again_without_building(sample_weights_dir):
    backbone = get_backbone("mobilenet")
    weights = str(sample_weights_dir / backbone.weights_file)
    builds = []

    def build(seed):
        builds.append(seed)
        return models.backbone_classifier(backbone, 32, 5, weights, head_seed=seed)

    runs = CompiledRuns(keep=True)
    run = runs.start("case", lambda: build(0), head_seed=0)
    # As if the first run had trained every weight.
    run.classifier.set_weights([weight + 1.0 for weight in run.classifier.get_weights()])

    again = runs.start("case", lambda: build(1), head_seed=1)

    assert again is run and run.reused and builds == [0]
    fresh = build(1)
    assert all(np.array_equal(*pair) for pair in zip(run.classifier.get_weights(), fresh.get_weights(), strict=True))


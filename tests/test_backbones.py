"""lab/backbones.py: the registry against the networks Keras builds, weights lookup, and the
preprocessing layer of lab/models.py against keras.applications' own."""

import keras
import numpy as np
import pytest

from lab import backbones
from lab.errors import LabInputError
from lab.models import BackbonePreprocessing

IMAGE_SIZE = 32
MOBILENETS = ["mobilenet", "mobilenet_v2"]


@pytest.fixture(scope="module")
def built():
    """Every registry entry built once at 32 px with random weights: name -> keras.Model.

    Module-scoped: ResNet50 and VGG16 are the slow ones to build, and no test changes them.
    """
    return {name: entry.build(IMAGE_SIZE, None) for name, entry in backbones.REGISTRY.items()}


@pytest.mark.parametrize("name", backbones.REGISTRY)
def test_block_boundaries_are_layers_of_the_model(name, built):
    names = [layer.name for layer in built[name].layers]
    starts = [first for _, first in backbones.REGISTRY[name].block_starts]

    assert all(first in names for first in starts)
    # Bottom up, as the registry promises: each block starts above the previous one.
    positions = [names.index(first) for first in starts]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


@pytest.mark.parametrize("name", backbones.REGISTRY)
def test_stages_cover_every_layer_once_topmost_first(name, built):
    entry, base = backbones.REGISTRY[name], built[name]

    stages = entry.stages_top_down(base)

    assert [stage for stage, _ in stages] == [stage for stage, _ in reversed(entry.block_starts)]
    assert all(layers for _, layers in stages)
    assert base.layers[-1] in stages[0][1]
    covered = [layer for _, layers in reversed(stages) for layer in layers]
    assert len({id(layer) for layer in covered}) == len(covered), "a layer is in two stages"
    # The input layer holds nothing to train; every other layer belongs to exactly one stage.
    uncovered = [layer for layer in base.layers if all(layer is not other for other in covered)]
    assert all(isinstance(layer, keras.layers.InputLayer) for layer in uncovered), [layer.name for layer in uncovered]
    assert covered == [layer for layer in base.layers if layer not in uncovered]


def test_stages_reject_a_model_without_the_boundaries(built):
    # vgg16's boundaries looked up in a MobileNet: the registry-mismatch error, not a KeyError.
    with pytest.raises(LabInputError, match="block boundary"):
        backbones.REGISTRY["vgg16"].stages_top_down(built["mobilenet"])


@pytest.mark.parametrize("name", backbones.REGISTRY)
def test_registry_counts_match_the_built_model(name, built):
    entry, base = backbones.REGISTRY[name], built[name]

    assert len(base.layers) == entry.layer_count
    assert base.count_params() == entry.parameter_count
    assert base.output_shape[-1] == entry.feature_channels
    assert base.output_shape == (None, 1, 1, entry.feature_channels)


@pytest.mark.parametrize("name", MOBILENETS)
def test_resolve_weights_finds_the_official_file_in_weights_dir(
    name, sample_weights_dir, no_network_calls, monkeypatch, tmp_path
):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    entry = backbones.get_backbone(name)

    source = backbones.resolve_weights(entry, "imagenet", str(sample_weights_dir))

    assert source.kind == "imagenet"
    assert source.path == str(sample_weights_dir / entry.weights_file)
    assert source.path in source.origin


def test_resolve_weights_falls_back_to_keras_cache(no_network_calls, monkeypatch, tmp_path):
    entry = backbones.get_backbone("vgg16")
    cached = tmp_path / "models" / entry.weights_file
    cached.parent.mkdir()
    cached.write_bytes(b"")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))

    source = backbones.resolve_weights(entry, "imagenet", str(tmp_path / "no-such-file-here"))

    assert (source.kind, source.path) == ("imagenet", str(cached))


@pytest.mark.parametrize("name", backbones.REGISTRY)
def test_resolve_weights_none_is_random_init(name, no_network_calls):
    source = backbones.resolve_weights(backbones.get_backbone(name), "none", None)

    assert (source.kind, source.path) == ("none", None)
    assert "--weights none" in source.origin


@pytest.mark.parametrize("name", MOBILENETS)
def test_weights_file_tensors_match_the_loaded_model(name, sample_weights_dir):
    entry = backbones.get_backbone(name)
    path = str(sample_weights_dir / entry.weights_file)

    loaded = [layer.get_weights() for layer in entry.build(IMAGE_SIZE, path).layers if layer.weights]
    from_file = backbones.weights_file_tensors(path)

    assert len(from_file) == len(loaded)
    for file_tensors, model_tensors in zip(from_file, loaded, strict=True):
        assert len(file_tensors) == len(model_tensors)
        for from_disk, in_model in zip(file_tensors, model_tensors, strict=True):
            np.testing.assert_array_equal(from_disk, in_model)
    assert sum(tensor.size for layer in from_file for tensor in layer) == entry.parameter_count


def test_weights_file_tensors_differ_from_random_init(built, sample_weights_dir):
    # Without this, equality above could come from a loader that ignores the file.
    entry = backbones.get_backbone("mobilenet")
    from_file = backbones.weights_file_tensors(str(sample_weights_dir / entry.weights_file))
    random_kernel = next(layer for layer in built["mobilenet"].layers if layer.weights).get_weights()[0]
    assert not np.array_equal(from_file[0][0], random_kernel)


@pytest.fixture(scope="module")
def unit_images():
    """A few random RGB images in [0, 1], float32, as the lab's pipeline produces them."""
    return np.random.default_rng(3).random((2, 8, 8, 3), dtype=np.float32)


@pytest.mark.parametrize(
    "name, application",
    [
        ("resnet50", keras.applications.resnet50),
        ("vgg16", keras.applications.vgg16),
        ("mobilenet", keras.applications.mobilenet),
        ("mobilenet_v2", keras.applications.mobilenet_v2),
    ],
)
def test_preprocessing_layer_equals_keras_preprocess_input(name, application, unit_images):
    ours = np.asarray(BackbonePreprocessing(name)(unit_images))
    # preprocess_input may work in place on a NumPy array: give it its own copy.
    theirs = np.asarray(application.preprocess_input(unit_images.copy() * 255.0))

    np.testing.assert_allclose(ours, theirs, rtol=1e-5, atol=1e-4)


def test_preprocessing_styles_differ_as_published(unit_images):
    caffe = np.asarray(BackbonePreprocessing("resnet50")(unit_images))
    tf_style = np.asarray(BackbonePreprocessing("mobilenet")(unit_images))

    # caffe: RGB -> BGR on 0..255, minus the ImageNet channel means; tf: 0..255 -> -1..1.
    bgr = unit_images[..., ::-1] * 255.0
    np.testing.assert_allclose(caffe, bgr - np.array([103.939, 116.779, 123.68]), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(tf_style, unit_images * 2.0 - 1.0, rtol=1e-5, atol=1e-5)


def test_preprocessing_layer_survives_a_config_round_trip(unit_images):
    # A saved classifier rebuilds this layer from its config: it must keep its backbone's scaling.
    layer = BackbonePreprocessing("resnet50", name="preprocessing")

    rebuilt = BackbonePreprocessing.from_config(layer.get_config())

    assert rebuilt.backbone == "resnet50"
    np.testing.assert_array_equal(np.asarray(rebuilt(unit_images)), np.asarray(layer(unit_images)))

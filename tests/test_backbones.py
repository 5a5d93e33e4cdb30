"""lab/networks/backbones.py: the registry against the networks Keras builds, weights lookup, and the
preprocessing layer of lab/networks/models.py against keras.applications' own."""

import keras
import numpy as np
import pytest

from lab import config
from lab.errors import LabInputError
from lab.networks import backbones
from lab.networks.models import BackbonePreprocessing

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


@pytest.mark.parametrize("name", backbones.REGISTRY)
def test_hand_written_block_starts_are_derived_cut_points(name, built):
    base = built[name]
    cut_layers = {base.layers[index].name for index in backbones.cut_points(base)}

    assert {first for _, first in backbones.REGISTRY[name].block_starts} <= cut_layers


@pytest.mark.parametrize("name", backbones.REGISTRY)
def test_hand_written_figures_equal_the_derived_ones(name, built):
    entry = backbones.REGISTRY[name]
    published = entry.published

    derived = backbones.figures_of(built[name])
    weights = backbones.keras_weights_file(entry.constructor, entry.image_size["full"])

    assert (derived.layer_count, derived.parameter_count, derived.feature_channels) == (
        published.layer_count,
        published.parameter_count,
        published.feature_channels,
    )
    assert (weights.name, weights.url) == (published.weights.name, published.weights.url)
    assert backbones.input_sizes(entry.constructor) == (entry.minimum_image_size, entry.image_size["full"])


def test_report_names_the_keras_applications_call_of_each_entry():
    assert backbones.get_backbone("mobilenet_v2").keras_name == "MobileNetV2(alpha=0.35)"
    assert backbones.get_backbone("resnet50").keras_name == "ResNet50"
    assert backbones.get_backbone("ConvNeXtTiny").keras_name == "ConvNeXtTiny"


def test_keras_name_gives_an_entry_derived_from_keras():
    entry = backbones.get_backbone("EfficientNetB3")

    assert entry.published is None and entry.name == "EfficientNetB3"
    assert entry.constructor is keras.applications.EfficientNetB3
    assert entry.preprocess_input is keras.applications.efficientnet.preprocess_input
    # EfficientNetB3's default side is 300, its minimum Keras's usual 32.
    assert (entry.minimum_image_size, entry.image_size) == (32, {"smoke": 96, "full": 300})


@pytest.mark.parametrize(
    "name, minimum, default", [("InceptionV3", 75, 299), ("Xception", 71, 299), ("MobileNetV3Small", 32, 224)]
)
def test_input_sizes_are_keras_own(name, minimum, default):
    entry = backbones.get_backbone(name)

    assert (entry.minimum_image_size, entry.image_size["full"]) == (minimum, default)
    assert entry.image_size["smoke"] == max(minimum, backbones.SMOKE_IMAGE_SIZE)


def test_derived_figures_count_the_built_network():
    entry = backbones.get_backbone("MobileNetV3Small")
    base = keras.applications.MobileNetV3Small(input_shape=(32, 32, 3), include_top=False, weights=None)

    assert (entry.layer_count, entry.parameter_count, entry.feature_channels) == (
        len(base.layers),
        base.count_params(),
        base.output_shape[-1],
    )
    assert entry.layers_per_stage * backbones.DERIVED_STAGES >= entry.derived.weighted_layer_count


def test_derived_weights_file_is_the_one_keras_asks_for():
    weights = backbones.get_backbone("MobileNetV3Small").weights

    assert weights.name == "weights_mobilenet_v3_small_224_1.0_float_no_top_v2.h5"
    assert weights.url.endswith("/" + weights.name) and weights.file_hash


def test_derived_weights_in_weights_dir_come_first(no_network_calls, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "keras"))
    entry = backbones.get_backbone("MobileNetV3Small")
    local = tmp_path / entry.weights_file
    local.write_bytes(b"")

    source = backbones.resolve_weights(entry, "imagenet", str(tmp_path))

    assert (source.kind, source.path) == ("imagenet", str(local))


def test_derived_weights_offline_fail_fast_naming_the_file(monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    monkeypatch.setattr(backbones.network, "can_reach", lambda: False)
    entry = backbones.get_backbone("MobileNetV3Small")

    with pytest.raises(LabInputError, match=f"{entry.weights_file}.*--weights-dir"):
        backbones.resolve_weights(entry, "imagenet", None)


@pytest.mark.parametrize(
    "given, suggested",
    [("MobileNetv2", "MobileNetV2"), ("resnet_50", "resnet50"), ("efficientnetb0", "EfficientNetB0")],
)
def test_unknown_backbone_lists_close_matches(given, suggested):
    with pytest.raises(LabInputError) as raised:
        backbones.get_backbone(given)

    message = str(raised.value)
    assert f"did you mean {suggested}" in message
    assert "ConvNeXtTiny" in message and "mobilenet_v2" in message


def test_image_size_below_the_minimum_names_it():
    with pytest.raises(LabInputError, match="InceptionV3 takes images of at least 75x75 pixels, not 64"):
        backbones.get_backbone("InceptionV3").build(64, None)


def test_graph_stages_split_the_weights_evenly_at_cut_points(built):
    base = built["resnet50"]

    stages = backbones.graph_stages(base, 4)

    assert len(stages) == 4
    cuts = set(backbones.cut_points(base))
    assert all(base.layers.index(layers[0]) in cuts for _, layers in stages[:-1])
    assert [layer for _, layers in reversed(stages) for layer in layers] == base.layers[1:]
    weights = [sum(int(np.prod(w.shape)) for layer in layers for w in layer.trainable_weights) for _, layers in stages]
    # ResNet50's blocks are coarse (conv5 alone holds 63% of its weights): within a factor of 5.
    assert max(weights) < 5 * min(weights)
    assert stages[0][0] == f"{stages[0][1][0].name}..{base.layers[-1].name}"


def test_config_takes_keras_names_and_checks_their_minimum_size():
    options = dict(
        profile="smoke", data_source="mock", data_dir=None, seed=0, subset=None, weights="none", weights_dir=None
    )

    run = config.build_config(**options, backbone_names="EfficientNetB0,mobilenet")
    assert run.backbones == ("EfficientNetB0", "mobilenet")
    with pytest.raises(LabInputError, match="Xception takes images of at least 71x71 .* --image-size 71"):
        config.build_config(**options, backbone_names="Xception", image_size=64)

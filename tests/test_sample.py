"""The embedded sample: its files and manifest, loading it, its checks, and the build that makes it."""

from __future__ import annotations

import collections
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from lab import config, profiles
from lab.errors import LabInputError
from lab.inputs import data, sample
from lab.inputs.sample import build
from lab.networks import backbones
from lab.runtime.atomic import file_digest

# Keras's weights are 224-pixel files; the sample holds the two small MobileNets'.
EMBEDDED_BACKBONES = ("mobilenet", "mobilenet_v2")
MAX_SAMPLE_BYTES = 15 * 2**20

SMOKE_OPTIONS = {
    "profile": "smoke", "data_source": None, "data_dir": None, "seed": 0, "subset": None,
    "backbone_names": None, "weights": "imagenet", "weights_dir": None,
}


def _relative_files(root: str) -> set[str]:
    return {
        os.path.relpath(os.path.join(directory, name), root).replace(os.sep, "/")
        for folder in sample.DATA_FOLDERS
        for directory, _, names in os.walk(os.path.join(root, folder))
        for name in names
    }


def test_manifest_lists_exactly_the_sample_files_with_their_sha256():
    manifest = sample.read_manifest()

    assert _relative_files(sample.ROOT) == set(manifest)
    mismatched = [
        path for path, digest in manifest.items() if file_digest(os.path.join(sample.ROOT, path)) != digest
    ]
    assert mismatched == []


def test_sample_holds_the_photos_images_and_weights_it_promises():
    files = sample.read_manifest()
    per_folder = collections.Counter(os.path.dirname(path) for path in files)
    flowers, cifar = data.FOLDER_NAMES["tf_flowers"], data.FOLDER_NAMES["cifar10"]

    assert {name: per_folder[f"{flowers}/{name}"] for name in data.CLASS_NAMES["tf_flowers"]} == dict.fromkeys(
        data.CLASS_NAMES["tf_flowers"], 100
    )
    assert {name: per_folder[f"{cifar}/{name}"] for name in data.CLASS_NAMES["cifar10"]} == dict.fromkeys(
        data.CLASS_NAMES["cifar10"], build.CIFAR_PER_CLASS
    )
    assert {f"{flowers}/{text}" for text in build.FLOWER_TEXTS} <= set(files)
    embedded_weights = {backbones.get_backbone(name).weights_file for name in EMBEDDED_BACKBONES}
    assert {path for path in files if path.startswith("weights/")} == {f"weights/{name}" for name in embedded_weights}
    assert set(build.WEIGHTS_FILES) == embedded_weights
    photos = [os.path.join(sample.ROOT, path) for path in files if path.endswith(".jpg")]
    longest = max(max(Image.open(photo).size) for photo in photos)
    assert longest <= build.FLOWER_LONGER_SIDE
    total = sum(os.path.getsize(os.path.join(sample.ROOT, path)) for path in [*files, sample.MANIFEST])
    assert total < MAX_SAMPLE_BYTES


def test_flowers_load_with_the_smoke_profiles_counts_in_tfds_class_order():
    smoke = profiles.SMOKE

    flowers = data.load(
        "tf_flowers", "sample", smoke.cnn_image_size, smoke.flowers_train, smoke.flowers_validation
    )

    assert flowers.source == "sample"
    assert (flowers.train_count, flowers.validation_count) == (smoke.flowers_train, smoke.flowers_validation)
    assert flowers.train_images.shape[1:] == (smoke.cnn_image_size, smoke.cnn_image_size, 3)
    # Labels follow tensorflow-datasets' order (dandelion first), not the folders' alphabetical one.
    labels = np.concatenate([flowers.train_labels, flowers.validation_labels])
    assert np.bincount(labels, minlength=5).tolist() == [100] * 5
    dandelions = os.path.join(sample.ROOT, "flower_photos", "dandelion")
    first_dandelion = os.path.join(dandelions, min(os.listdir(dandelions)))
    decoded = data.resize_to_uint8(
        tf.io.decode_jpeg(tf.io.read_file(first_dandelion), channels=3), smoke.cnn_image_size
    ).numpy()
    images = np.concatenate([flowers.train_images, flowers.validation_images])
    matches = np.flatnonzero((images == decoded).all(axis=(1, 2, 3)))
    assert matches.size == 1 and labels[matches[0]] == data.CLASS_NAMES["tf_flowers"].index("dandelion")


def test_cifar10_split_gives_the_smoke_profile_its_training_and_validation_images():
    smoke = profiles.SMOKE

    cifar = data.load("cifar10", "sample", 32, None, None)

    assert cifar.total_examples == 10 * build.CIFAR_PER_CLASS
    # The folder loader's fixed 80/20 split: 2,000 training and 500 validation images.
    assert (cifar.train_count, cifar.validation_count) == (2000, 500)
    assert cifar.train_count >= smoke.cifar_train and cifar.validation_count == smoke.cifar_validation
    labels = np.concatenate([cifar.train_labels, cifar.validation_labels])
    assert np.bincount(labels, minlength=10).tolist() == [build.CIFAR_PER_CLASS] * 10


def test_smoke_profile_defaults_to_the_sample_and_full_to_tfds(tmp_path):
    smoke = config.build_config(**SMOKE_OPTIONS)
    full = config.build_config(**{**SMOKE_OPTIONS, "profile": "full"})
    folder = config.build_config(**{**SMOKE_OPTIONS, "data_dir": str(tmp_path)})

    assert (smoke.data_source, full.data_source, folder.data_source) == ("sample", "tfds", "folder")
    assert smoke.describe_data() == sample.DESCRIPTION


def test_sample_with_the_full_profile_is_refused():
    with pytest.raises(LabInputError) as raised:
        config.build_config(**{**SMOKE_OPTIONS, "profile": "full", "data_source": "sample"})
    message = str(raised.value)
    assert "--data-source sample" in message and "--profile full" in message and "--data-source tfds" in message


@pytest.mark.parametrize("name", EMBEDDED_BACKBONES)
def test_resolve_weights_finds_the_embedded_file(name, no_network_calls, monkeypatch, tmp_path):
    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    entry = backbones.get_backbone(name)

    source = backbones.resolve_weights(entry, "imagenet", None)

    assert source.kind == "imagenet"
    assert source.path == os.path.join(sample.ROOT, sample.WEIGHTS_FOLDER, entry.weights_file)
    assert "embedded sample" in source.origin


@pytest.fixture
def tiny_sample(tmp_path):
    """A sample of three small files with its manifest, in a folder of its own."""
    root = str(tmp_path / "sample")
    files = {
        "flower_photos/daisy/a.jpg": b"photo",
        "cifar10/cat/train_00003.png": b"image",
        "weights/mobilenet_2_5_224_tf_no_top.h5": b"weights",
    }
    build.write_sample(files, root)
    return root


def test_a_whole_sample_passes_its_check(tiny_sample):
    assert sample.verified_root(tiny_sample) == tiny_sample
    assert sample.embedded_weights("mobilenet_2_5_224_tf_no_top.h5", tiny_sample) == os.path.join(
        tiny_sample, "weights", "mobilenet_2_5_224_tf_no_top.h5"
    )
    assert sample.embedded_weights("resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", tiny_sample) is None


def _alter(path):
    with open(path, "ab") as stream:
        stream.write(b"!")


@pytest.mark.parametrize(
    "breakage, relative, fragment",
    [
        (os.remove, "cifar10/cat/train_00003.png", "missing"),
        (_alter, "flower_photos/daisy/a.jpg", "altered"),
        (lambda path: open(path, "wb").close(), "cifar10/cat/stray.png", "not in MANIFEST.csv"),
        (os.remove, "MANIFEST.csv", "missing"),
    ],
    ids=["missing-file", "altered-file", "unexpected-file", "missing-manifest"],
)
def test_a_broken_sample_names_the_file_and_the_rebuild(tiny_sample, monkeypatch, breakage, relative, fragment):
    path = os.path.join(tiny_sample, relative)
    breakage(path)
    monkeypatch.setattr(sample, "ROOT", tiny_sample)

    for check in (
        lambda: config.build_config(**SMOKE_OPTIONS),
        lambda: data.load("tf_flowers", "sample", 8, None, None),
    ):
        with pytest.raises(LabInputError) as raised:
            check()
        message = str(raised.value)
        assert path in message and fragment in message and sample.REBUILD_COMMAND in message


def test_altered_embedded_weights_are_an_error(tiny_sample):
    _alter(os.path.join(tiny_sample, "weights", "mobilenet_2_5_224_tf_no_top.h5"))

    with pytest.raises(LabInputError) as raised:
        sample.embedded_weights("mobilenet_2_5_224_tf_no_top.h5", tiny_sample)
    assert "altered" in str(raised.value) and sample.REBUILD_COMMAND in str(raised.value)


@pytest.fixture
def shared_layout(tmp_path):
    """A tiny source folder in the layout of ../shared/data: one photo per flower class (one
    larger than the sample keeps, one smaller), three CIFAR-10 images per class, two weights files."""
    source = tmp_path / "source"
    flowers = source / "flower_photos"
    for position, name in enumerate(data.CLASS_NAMES["tf_flowers"]):
        (flowers / name).mkdir(parents=True)
        size = (320, 200) if position % 2 else (90, 120)
        pixels = np.random.default_rng(position).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
        Image.fromarray(pixels).save(flowers / name / f"photo{position}.jpg", quality=95)
    for text in build.FLOWER_TEXTS:
        (flowers / text).write_text(f"{text} of the archive\n")
    for position, name in enumerate(data.CLASS_NAMES["cifar10"]):
        (source / "cifar10" / name).mkdir(parents=True)
        for index in (40 + position, 7 + position, 900 + position):
            Image.fromarray(np.full((32, 32, 3), index % 256, np.uint8)).save(
                source / "cifar10" / name / f"train_{index:05d}.png"
            )
    (source / "weights").mkdir()
    for name in EMBEDDED_BACKBONES:
        (source / "weights" / backbones.get_backbone(name).weights_file).write_bytes(name.encode())
    return source


def test_build_is_deterministic_and_takes_the_first_images_by_index(shared_layout, tmp_path):
    first, second = str(tmp_path / "first"), str(tmp_path / "second")
    build.build(str(shared_layout), first, cifar_per_class=2)
    stray = os.path.join(first, "cifar10", "cat", "train_00001.png")
    open(stray, "wb").close()
    build.build(str(shared_layout), first, cifar_per_class=2)
    build.build(str(shared_layout), second, cifar_per_class=2)

    assert not os.path.exists(stray)
    written = sorted(_relative_files(first)) + [sample.MANIFEST]
    for relative in written:
        with open(os.path.join(first, relative), "rb") as one, open(os.path.join(second, relative), "rb") as other:
            assert one.read() == other.read(), relative
    assert sorted(os.listdir(os.path.join(first, "cifar10", "cat"))) == ["train_00010.png", "train_00043.png"]
    cat = os.path.join("cifar10", "cat", "train_00010.png")
    with open(shared_layout / cat, "rb") as original, open(os.path.join(first, cat), "rb") as copied:
        assert original.read() == copied.read()
    photos = {name: os.path.join(first, "flower_photos", name) for name in data.CLASS_NAMES["tf_flowers"]}
    sizes = {name: Image.open(os.path.join(folder, *os.listdir(folder))).size for name, folder in photos.items()}
    assert sizes["daisy"] == (160, 100) and sizes["dandelion"] == (90, 120)
    assert sample.verified_root(first) == first

"""lab/inputs/data.py on tiny synthetic image folders and on tensorflow-datasets' mock data."""

import dataclasses
import os
import types

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from lab.errors import LabInputError
from lab.inputs import data, datasets

# Different counts per class: a label mapped by position instead of by name shows up in the
# per-label counts as well as in the colours.
FLOWER_COUNTS = {"daisy": 3, "dandelion": 2, "roses": 6, "sunflowers": 5, "tulips": 4}


def _reverse_listing(monkeypatch):
    real_listdir = os.listdir
    monkeypatch.setattr(os, "listdir", lambda path=".": sorted(real_listdir(path), reverse=True))


def test_tfds_class_order_is_the_published_one():
    # tensorflow-datasets' own order, written out: a folder sorts alphabetically instead.
    assert data.CLASS_NAMES["tf_flowers"] == ("dandelion", "daisy", "tulips", "sunflowers", "roses")
    # tf_flowers names its classes in its builder's code; CIFAR-10's names come with the
    # download, so offline its metadata only says '0'..'9' and cannot be compared here.
    assert tuple(tfds.builder("tf_flowers").info.features["label"].names) == data.CLASS_NAMES["tf_flowers"]


@pytest.mark.parametrize("listing", ["listed-sorted", "listed-reversed"])
@pytest.mark.parametrize(
    "dataset, counts, suffix",
    [
        ("tf_flowers", FLOWER_COUNTS, ".jpg"),
        ("cifar10", None, ".png"),
    ],
    ids=["flowers-jpeg", "cifar10-png"],
)
def test_folder_labels_follow_tfds_order_by_name(dataset, counts, suffix, listing, make_image_folder, monkeypatch):
    folder = make_image_folder(dataset, counts, suffix)
    if listing == "listed-reversed":
        _reverse_listing(monkeypatch)

    loaded = data.load(dataset, "folder", 16, None, None, data_dir=folder.data_dir)

    assert loaded.class_names == data.CLASS_NAMES[dataset]
    images = np.concatenate([loaded.train_images, loaded.validation_images])
    labels = np.concatenate([loaded.train_labels, loaded.validation_labels])
    assert len(labels) == len(folder.colours)
    for image, label in zip(images, labels, strict=True):
        assert loaded.class_names[label] == folder.class_of(image)
    written = [name for name, _ in folder.colours.values()]
    expected_counts = [written.count(name) for name in loaded.class_names]
    assert np.bincount(labels, minlength=loaded.num_classes).tolist() == expected_counts


@pytest.mark.parametrize("image_size", [16, 32])
def test_folder_images_are_uint8_of_the_requested_size(image_size, make_image_folder):
    folder = make_image_folder()

    loaded = data.load("tf_flowers", "folder", image_size, None, None, data_dir=folder.data_dir)

    for images in (loaded.train_images, loaded.validation_images):
        assert images.dtype == np.uint8
        assert images.shape[1:] == (image_size, image_size, 3)
    assert loaded.image_size == image_size
    assert loaded.train_count + loaded.validation_count == loaded.total_examples == len(folder.colours)
    # Sources differ in size and are not square: resizing must keep each flat colour.
    for image in loaded.train_images:
        folder.file_of(image)


def test_batches_are_float32_in_unit_range(make_image_folder):
    folder = make_image_folder("tf_flowers", FLOWER_COUNTS)
    loaded = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)

    batches = list(loaded.batches("train", batch_size=4))

    assert [len(labels) for _, labels in batches][:-1] == [4] * (len(batches) - 1)
    images = np.concatenate([images.numpy() for images, _ in batches])
    labels = np.concatenate([labels.numpy() for _, labels in batches])
    assert images.dtype == np.float32
    assert images.min() >= 0.0 and images.max() <= 1.0
    # Without a seed the stored order is kept, so the batches are the stored images / 255.
    np.testing.assert_allclose(images, loaded.train_images.astype(np.float32) / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(labels, loaded.train_labels)
    np.testing.assert_allclose(loaded.scaled("train"), images, rtol=1e-6)


def test_batches_limit_and_shuffle_keep_the_pairs(make_image_folder):
    folder = make_image_folder("tf_flowers", FLOWER_COUNTS)
    loaded = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)

    limited = list(loaded.batches("validation", batch_size=2, limit=3))
    assert sum(len(labels) for _, labels in limited) == min(3, loaded.validation_count)

    shuffled = list(loaded.batches("train", batch_size=64, seed=1))[0]
    for image, label in zip(shuffled[0].numpy(), shuffled[1].numpy(), strict=True):
        # Shuffling must move an image together with its own label.
        assert loaded.class_names[label] == folder.class_of(image * 255.0)
    assert sorted(shuffled[1].numpy().tolist()) == sorted(loaded.train_labels.tolist())


def test_split_is_deterministic_and_disjoint(make_image_folder, monkeypatch):
    folder = make_image_folder("tf_flowers", FLOWER_COUNTS)
    first = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    second = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    _reverse_listing(monkeypatch)
    reordered = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)

    for other in (second, reordered):
        np.testing.assert_array_equal(other.train_images, first.train_images)
        np.testing.assert_array_equal(other.validation_images, first.validation_images)
        np.testing.assert_array_equal(other.validation_labels, first.validation_labels)
    train_files = [folder.file_of(image) for image in first.train_images]
    validation_files = [folder.file_of(image) for image in first.validation_images]
    assert len(set(train_files)) == len(train_files)
    assert not set(train_files) & set(validation_files)
    assert set(train_files) | set(validation_files) == set(folder.colours)
    assert first.validation_count == round(len(folder.colours) * datasets.VALIDATION_SHARE)


def test_a_training_subset_keeps_the_same_validation_images(make_image_folder):
    folder = make_image_folder("tf_flowers", FLOWER_COUNTS)
    whole = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    subset = data.load("tf_flowers", "folder", 8, 3, None, data_dir=folder.data_dir)

    assert subset.train_count == 3
    np.testing.assert_array_equal(subset.train_images, whole.train_images[:3])
    np.testing.assert_array_equal(subset.validation_images, whole.validation_images)
    assert subset.total_examples == whole.total_examples


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_mock_source_returns_the_asked_counts(dataset):
    loaded = data.load(dataset, "mock", 24, 12, 5)

    assert loaded.source == "mock"
    assert (loaded.train_count, loaded.validation_count) == (12, 5)
    assert loaded.train_images.shape == (12, 24, 24, 3)
    assert loaded.validation_images.shape == (5, 24, 24, 3)
    assert loaded.train_images.dtype == np.uint8
    assert loaded.num_classes == len(data.CLASS_NAMES[dataset])
    labels = np.concatenate([loaded.train_labels, loaded.validation_labels])
    assert labels.min() >= 0 and labels.max() < loaded.num_classes


@pytest.mark.parametrize("dataset", data.DATASETS)
def test_num_classes_comes_from_metadata(dataset):
    metadata = tfds.builder(dataset).info.features["label"].num_classes

    assert data.num_classes_from_metadata(dataset) == metadata
    assert data.load(dataset, "mock", 8, 2, 1).num_classes == metadata


def test_num_classes_does_not_depend_on_the_labels_seen(make_image_folder):
    folder = make_image_folder("tf_flowers", FLOWER_COUNTS)

    loaded = data.load("tf_flowers", "folder", 8, 1, 1, data_dir=folder.data_dir)

    # One training image shows one class; the count must still be the dataset's five.
    assert len(set(loaded.train_labels.tolist())) == 1
    assert loaded.num_classes == 5


def test_metadata_disagreeing_with_the_class_list_is_an_error(monkeypatch):
    monkeypatch.setattr(data, "num_classes_from_metadata", lambda name: 6)

    with pytest.raises(LabInputError, match="6 classes"):
        data.load("tf_flowers", "mock", 8, 2, 1)


class PreparedBuilder:
    """Stands in for a tensorflow-datasets builder whose data is prepared (no network here).

    Its splits hold numbered images: image i is filled with the value i, so a loaded image
    tells which example it came from. Slices such as `train[:80%]` resolve as tfds resolves them.
    """

    def __init__(self, name: str, split_sizes: dict[str, int], num_classes: int):
        self.split_sizes = split_sizes
        self.data_dir = f"/prepared/{name}"
        self.requested: list[str] = []
        splits = {split: types.SimpleNamespace(num_examples=size) for split, size in split_sizes.items()}
        self.info = types.SimpleNamespace(
            features={"label": types.SimpleNamespace(num_classes=num_classes)},
            splits=_SlicedSplits(splits),
            version="1.0.0",
        )

    def is_prepared(self) -> bool:
        return True

    def as_dataset(self, split: str, as_supervised: bool):
        self.requested.append(split)
        first, count = _slice(split, self.split_sizes)
        values = np.arange(first, first + count)
        images = np.broadcast_to(values[:, None, None, None], (count, 12, 10, 3)).astype(np.uint8)
        return tf.data.Dataset.from_tensor_slices((images, values % 5))


def _slice(split: str, sizes: dict[str, int]) -> tuple[int, int]:
    """(first example, count) of `train`, `train[:80%]` or `train[80%:]`."""
    name, _, bounds = split.partition("[")
    size = sizes[name]
    if not bounds:
        return 0, size
    start, _, end = bounds.rstrip("]").partition(":")
    first = size * int(start.rstrip("%")) // 100 if start else 0
    last = size * int(end.rstrip("%")) // 100 if end else size
    return first, last - first


class _SlicedSplits(dict):
    def __getitem__(self, split: str):
        name = split.partition("[")[0]
        sizes = {key: value.num_examples for key, value in self.items()}
        if split == name:
            return super().__getitem__(split)
        return types.SimpleNamespace(num_examples=_slice(split, sizes)[1])


@pytest.fixture
def prepared(monkeypatch):
    """Makes `tfds.builder` return `PreparedBuilder`s: tf_flowers 50 train, CIFAR-10 40/20."""
    builders = {
        "tf_flowers": PreparedBuilder("tf_flowers", {"train": 50}, 5),
        "cifar10": PreparedBuilder("cifar10", {"train": 40, "test": 20}, 10),
    }
    monkeypatch.setattr(data.tfds, "builder", lambda name, **kwargs: builders[name])
    return builders


def test_prepared_tfds_flowers_hold_out_their_last_fifth(prepared):
    flowers = data.load("tf_flowers", "tfds", 8, train_count=30, validation_count=None)

    assert prepared["tf_flowers"].requested == ["train[:80%]", "train[80%:]"]
    assert (flowers.train_count, flowers.validation_count, flowers.total_examples) == (30, 10, 50)
    assert flowers.train_images.shape == (30, 8, 8, 3)
    assert list(flowers.train_images[:, 0, 0, 0]) == list(range(30))
    assert list(flowers.validation_images[:, 0, 0, 0]) == list(range(40, 50))


def test_prepared_tfds_cifar10_validates_on_its_test_split(prepared):
    cifar = data.load("cifar10", "tfds", 8, train_count=None, validation_count=5)

    assert prepared["cifar10"].requested == ["train", "test"]
    assert (cifar.train_count, cifar.validation_count, cifar.total_examples) == (40, 5, 60)


def test_prepared_tfds_subset_larger_than_the_split_names_the_limit(prepared):
    with pytest.raises(LabInputError, match="--subset 40 or less"):
        data.load("tf_flowers", "tfds", 8, train_count=41, validation_count=None, strict_train_count=True)


def test_the_held_out_fifth_is_stratified_by_class(make_image_folder):
    folder = make_image_folder("tf_flowers", {"daisy": 5, "dandelion": 5, "roses": 10, "sunflowers": 5, "tulips": 5})

    loaded = data.load("tf_flowers", "folder", 16, None, None, data_dir=folder.data_dir)

    by_name = dict(zip(loaded.class_names, np.bincount(loaded.validation_labels, minlength=5), strict=True))
    assert by_name == {"daisy": 1, "dandelion": 1, "roses": 2, "sunflowers": 1, "tulips": 1}


def test_a_class_with_no_validation_image_is_warned_about(make_image_folder):
    folder = make_image_folder("tf_flowers", {"daisy": 1, "dandelion": 9, "roses": 1, "sunflowers": 1, "tulips": 1})

    with pytest.warns(UserWarning, match="no validation image of "):
        data.load("tf_flowers", "folder", 16, None, None, data_dir=folder.data_dir)


def test_a_split_per_seed_redraws_the_same_images_stratified_and_repeatably(make_image_folder):
    folder = make_image_folder("tf_flowers", {"daisy": 5, "dandelion": 5, "roses": 10, "sunflowers": 5, "tulips": 5})
    loaded = data.load("tf_flowers", "folder", 16, None, None, data_dir=folder.data_dir)

    first, again, other = loaded.split_for_seed(1), loaded.split_for_seed(1), loaded.split_for_seed(2)

    def colours(images):
        return sorted(tuple(image[0, 0]) for image in images)

    everything = colours(np.concatenate([loaded.train_images, loaded.validation_images]))
    for split in (first, other):
        assert (split.train_count, split.validation_count) == (loaded.train_count, loaded.validation_count)
        assert colours(np.concatenate([split.train_images, split.validation_images])) == everything
        assert np.bincount(split.validation_labels).tolist() == np.bincount(loaded.validation_labels).tolist()
        for image, label in zip(split.validation_images, split.validation_labels, strict=True):
            assert split.class_names[label] == folder.class_of(image)
    assert colours(first.validation_images) == colours(again.validation_images)
    assert colours(first.validation_images) != colours(other.validation_images)
    assert (first.split_seed, first.pool) == (1, loaded)


def test_a_publishers_validation_split_is_kept_for_every_seed():
    loaded = data.load("cifar10", "mock", 8, 16, 8)
    fixed = dataclasses.replace(loaded, validation_fixed=True)

    assert fixed.split_for_seed(3) is fixed
    assert loaded.split_for_seed(3).split_seed == 3


def test_a_split_of_one_image_per_class_breaks_its_ties_by_the_seed_s_order():
    """Five classes of one image, two held out: each shuffle holds out other classes (the
    largest-remainder tie went to the first classes for every seed)."""
    labels = np.arange(5)
    held_out = {
        tuple(np.flatnonzero(
            data.stratified_holdout(labels, np.random.default_rng(seed).permutation(5), 2, ties_by_order=True)
        ))
        for seed in range(10)
    }
    assert len(held_out) > 1 and all(len(classes) == 2 for classes in held_out)
    # A fixed order still gives one answer: the classes it takes first.
    order = np.array([3, 1, 0, 2, 4])
    assert tuple(np.flatnonzero(data.stratified_holdout(labels, order, 2, ties_by_order=True))) == (1, 3)

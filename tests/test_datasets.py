"""--dataset: experiments 3-5 on a folder with any class names, or on any tensorflow-datasets
image classification dataset (its metadata offline, its mock data)."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pytest

from lab import config
from lab.errors import LabInputError
from lab.inputs import data, datasets

# Deliberately not alphabetical, and neither tf_flowers' five classes nor CIFAR-10's ten.
LEAF_COUNTS = {"c": 3, "a": 4, "b": 3}


def _run(**changes) -> config.RunConfig:
    options = dict(
        profile="smoke", data_source="mock", data_dir=None, seed=0, subset=None,
        backbone_names=None, weights="none", weights_dir=None,
    )
    return config.build_config(**{**options, **changes})


@pytest.fixture
def leaves(make_image_folder):
    """A folder of 10 tiny images in three classes named c, a and b."""
    return make_image_folder("leaves", LEAF_COUNTS, classes=tuple(LEAF_COUNTS))


def test_a_folder_with_other_classes_loads_them_sorted_with_the_hashed_split(leaves):
    spec = config.build_config(
        "smoke", None, None, 0, None, None, "none", None, dataset=str(leaves.root)
    ).dataset
    assert (spec.name, spec.source, spec.folder) == ("leaves", "folder", str(leaves.root))
    assert spec.class_names == ("a", "b", "c") and spec.num_classes == 3
    assert spec.split_sizes == (("train", 8), ("validation", 2))
    assert "3 classes (sorted by name: a, b, c)" in spec.describe()
    assert "images per split: train 8, validation 2" in spec.describe()

    loaded = data.load_dataset(spec, 12, None, None)

    assert (loaded.num_classes, loaded.class_names) == (3, ("a", "b", "c"))
    assert (loaded.train_count, loaded.validation_count, loaded.total_examples) == (8, 2, 10)
    written_first = sorted(leaves.colours, key=lambda path: hashlib.sha1(
        os.path.relpath(path, leaves.root).encode()).hexdigest())
    # A fifth held out per class, each class's first images in the hashed order.
    classes = np.array([spec.class_names.index(leaves.colours[path][0]) for path in written_first])
    held_out = data.stratified_holdout(classes, np.arange(classes.size), 2)
    assert sorted(classes[held_out].tolist()) == [0, 1], "a (4 of 10) and then b (3, before c in class order)"
    validation = [path for path, out in zip(written_first, held_out, strict=True) if out]
    train = [path for path, out in zip(written_first, held_out, strict=True) if not out]
    for images, labels, expected in (
        (loaded.validation_images, loaded.validation_labels, validation),
        (loaded.train_images, loaded.train_labels, train),
    ):
        assert [leaves.file_of(image) for image in images] == expected
        assert [loaded.class_names[label] for label in labels] == [leaves.colours[path][0] for path in expected]


def test_a_folder_with_one_class_is_refused(make_image_folder):
    folder = make_image_folder("single", {"only": 3}, classes=("only",))
    with pytest.raises(LabInputError, match=r"has 1 class folder \(only\): a classifier needs at least two"):
        _run(dataset=str(folder.root))


def test_a_folder_with_an_empty_class_names_it(make_image_folder):
    folder = make_image_folder("leaves", {"a": 2, "b": 0}, classes=("a", "b"))
    with pytest.raises(LabInputError, match=f"class folder {folder.root / 'b'} has no images"):
        _run(dataset=str(folder.root))


def test_a_folder_file_that_does_not_decode_names_the_file(leaves):
    broken = leaves.root / "b" / "broken.jpg"
    broken.write_bytes(b"not an image")
    spec = _run(dataset=str(leaves.root)).dataset
    with pytest.raises(LabInputError, match=f"cannot decode image {broken}"):
        data.load_dataset(spec, 12, None, None)


def test_a_path_that_is_not_a_folder_says_so(tmp_path):
    with pytest.raises(LabInputError, match="is not a folder: give a folder of <class>/\\* images"):
        _run(dataset=str(tmp_path / "missing"))


def test_an_unknown_tfds_name_lists_near_names():
    with pytest.raises(LabInputError) as raised:
        _run(dataset="beanz")
    message = str(raised.value)
    assert "tensorflow-datasets has no dataset of that name" in message
    assert "did you mean" in message and "beans" in message


@pytest.mark.parametrize(
    ("name", "lacking"), [("imdb_reviews", "no image feature"), ("celeb_a", "no class-label feature")]
)
def test_a_tfds_dataset_without_an_image_or_a_label_is_refused(name, lacking):
    with pytest.raises(LabInputError, match=f"{name} is not an image classification dataset: it has {lacking}"):
        _run(dataset=name)


def test_beans_on_mock_data_loads_with_its_three_classes():
    spec = _run(dataset="beans").dataset
    assert (spec.name, spec.source) == ("beans", "mock")
    assert spec.class_names == ("angular_leaf_spot", "bean_rust", "healthy")

    loaded = data.load_dataset(spec, 16, 6, 3)

    assert loaded.num_classes == 3 and loaded.name == "beans"
    assert loaded.train_images.shape == (6, 16, 16, 3) and loaded.validation_images.shape == (3, 16, 16, 3)
    assert set(np.concatenate([loaded.train_labels, loaded.validation_labels])) <= {0, 1, 2}


def test_grayscale_datasets_load_as_three_channels():
    loaded = data.load_dataset(_run(dataset="mnist").dataset, 8, 2, 1)
    assert loaded.train_images.shape == (2, 8, 8, 3) and loaded.num_classes == 10


def test_another_tfds_name_without_a_source_reads_tensorflow_datasets_but_not_the_sample():
    assert _run(data_source=None, dataset="beans").dataset.source == "tfds"
    with pytest.raises(LabInputError, match="--data-source sample holds only tf_flowers and cifar10"):
        _run(data_source="sample", dataset="beans")


@pytest.mark.parametrize("source", ["sample", "mock"])
def test_the_default_dataset_is_the_labs_tf_flowers(source):
    run = _run(data_source=source)
    assert run.dataset == data.lab_dataset("tf_flowers", source)
    assert run.dataset.class_names == data.CLASS_NAMES["tf_flowers"]


def test_tfds_splits_prefer_validation_then_test_else_hold_out_a_fifth():
    assert datasets.tfds_splits({"train": 10, "validation": 3, "test": 2}) == ("train", "validation")
    assert datasets.tfds_splits({"train": 10, "test": 2}) == ("train", "test")
    assert datasets.split_sizes({"train": 50}) == [("train[:80%]", 40), ("train[80%:]", 10)]
    with pytest.raises(LabInputError, match="has no train split"):
        datasets.tfds_splits({"test": 5})


def test_a_relative_data_dir_gives_the_dataset_an_absolute_folder(make_image_folder, monkeypatch):
    # A relative folder reached the report as typed (`../shared/data/flower_photos`), beside
    # the shortened absolute paths of the same tree.
    folder = make_image_folder()
    monkeypatch.chdir(folder.data_dir)

    run = _run(data_source="folder", data_dir=".")

    assert run.data_dir == folder.data_dir and run.dataset.folder == str(folder.root)


def test_hidden_folders_and_files_are_neither_classes_nor_images(leaves):
    (leaves.root / ".ipynb_checkpoints").mkdir()
    (leaves.root / ".ipynb_checkpoints" / "a_0.jpg").write_bytes((leaves.root / "a" / "a_0.jpg").read_bytes())
    (leaves.root / "a" / "._a_0.jpg").write_bytes(b"\0\5\26\7\0\2\0\0Mac OS X")

    spec = _run(dataset=str(leaves.root)).dataset

    assert spec.class_names == ("a", "b", "c")
    assert spec.split_sizes == (("train", 8), ("validation", 2))

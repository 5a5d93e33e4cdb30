"""Which dataset experiments 3-5 ask their questions of: a tensorflow-datasets name or a folder.

`--dataset` is resolved here before any image is read, into a `DatasetSpec`: the class names
in label order, where the images are, and the splits when they are known. Reading the images
is `lab.inputs.data`'s job.
"""

from __future__ import annotations

import dataclasses
import difflib
import os

import tensorflow_datasets as tfds

from lab.errors import LabInputError

# Where a source has only a training split, this share of it is held out for validation.
VALIDATION_SHARE = 0.2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# tensorflow-datasets' names for the split a model is tuned on, in order of preference.
VALIDATION_SPLITS = ("validation", "test")
NEAR_NAMES = 5


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """A dataset of labelled images, resolved before any image is read.

    Attributes:
        name: the tensorflow-datasets name, or the folder's own name.
        source: `sample`, `tfds`, `folder` or `mock`.
        class_names: in label order: tensorflow-datasets' order, or sorted by name for a folder
            that is not one of the lab's datasets.
        folder: the folder holding `<class>/*` images (the folder and sample sources), else None.
        image_feature: the tensorflow-datasets feature holding the image.
        label_feature: the tensorflow-datasets feature holding the class label.
        supervised: those two are the dataset's supervised keys (read with `as_supervised=True`).
        split_sizes: (split, images) of the dataset as it will be split, where known before
            loading (a folder; a prepared tensorflow-datasets copy); empty otherwise.
        classes_sorted: the class names are a folder's own, sorted by name (label 0 first).
    """

    name: str
    source: str
    class_names: tuple[str, ...]
    folder: str | None = None
    image_feature: str = "image"
    label_feature: str = "label"
    supervised: bool = True
    split_sizes: tuple[tuple[str, int], ...] = ()
    classes_sorted: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def describe(self) -> str:
        """One line for the report: name, source, classes and images per split."""
        where = {
            "sample": "the embedded sample",
            "tfds": "tensorflow-datasets",
            "folder": f"folder {self.folder}",
            "mock": "tensorflow-datasets mock data, random images",
        }[self.source]
        shown = ", ".join(self.class_names[:20]) + (", ..." if self.num_classes > 20 else "")
        order = "sorted by name" if self.classes_sorted else "in label order"
        text = f"{self.name} ({where}): {self.num_classes} classes ({order}: {shown})"
        if self.split_sizes:
            text += "; images per split: " + ", ".join(f"{split} {count:,}" for split, count in self.split_sizes)
        elif self.source == "mock":
            text += "; train and validation images held out from mock data of its train split"
        else:
            text += (
                "; splits: its own train and validation (or test) splits, else the last fifth of train held out "
                "(sizes known once prepared)"
            )
        return text


def folder_dataset(path: str) -> DatasetSpec:
    """A folder of `<class>/*` images with any class names, classes sorted by name.

    Only lists files: decoding, and its errors, come when the images are loaded.

    Raises:
        LabInputError: not a folder, fewer than two class folders, or a class with no images.
    """
    root = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(root):
        raise LabInputError(
            f"--dataset {path} is not a folder: give a folder of <class>/* images or a tensorflow-datasets name"
        )
    classes = sorted(entry for entry in list_folder(root) if os.path.isdir(os.path.join(root, entry)))
    if len(classes) < 2:
        raise LabInputError(
            f"--dataset {path} has {len(classes)} class folder{'s' if len(classes) != 1 else ''} "
            f"({', '.join(classes) or 'none'}): a classifier needs at least two, as <class>/* images"
        )
    for name in classes:
        if not image_files(os.path.join(root, name)):
            raise LabInputError(
                f"class folder {os.path.join(root, name)} has no images ({', '.join(IMAGE_SUFFIXES)}): "
                "add its images or remove the folder"
            )
    return DatasetSpec(
        name=os.path.basename(root),
        source="folder",
        class_names=tuple(classes),
        folder=root,
        split_sizes=folder_split_sizes(root, classes),
        classes_sorted=True,
    )


def folder_split_sizes(root: str, class_names) -> tuple[tuple[str, int], ...]:
    """(split, images) of a folder's fixed hashed split; class folders that are missing count none."""
    total = sum(
        len(image_files(os.path.join(root, name))) for name in class_names if os.path.isdir(os.path.join(root, name))
    )
    held_out = held_out_count(total)
    return (("train", total - held_out), ("validation", held_out))


def prepared_split_sizes(builder) -> tuple[tuple[str, int], ...]:
    """(split, images) of a tensorflow-datasets dataset as the lab splits it, if it is prepared."""
    if not builder.is_prepared():
        return ()
    return tuple(split_sizes({split: info.num_examples for split, info in builder.info.splits.items()}))


def tfds_dataset(name: str, source: str) -> DatasetSpec:
    """A tensorflow-datasets dataset of images and class labels, from its metadata (no download).

    Args:
        name: its name, as `tfds.builder` takes it (`beans`, `cifar10_corrupted/brightness_1`).
        source: `tfds` or `mock`.

    Raises:
        LabInputError: an unknown name (the message lists near names), or a dataset without an
            image or a class-label feature.
    """
    try:
        builder = tfds.builder(name)
    except tfds.core.registered.DatasetNotFoundError:
        near = difflib.get_close_matches(name.lower(), tfds.list_builders(), n=NEAR_NAMES, cutoff=0.6)
        hint = f"did you mean {', '.join(near)}?" if near else "tfds.list_builders() lists the names it knows"
        raise LabInputError(
            f"--dataset {name}: tensorflow-datasets has no dataset of that name, and no folder has that path: {hint}"
        ) from None
    except (ValueError, AssertionError) as error:
        raise LabInputError(f"--dataset {name}: {str(error).splitlines()[0]}") from None
    image_feature, label_feature = image_and_label(name, builder.info)
    return DatasetSpec(
        name=name,
        source=source,
        class_names=tuple(builder.info.features[label_feature].names),
        image_feature=image_feature,
        label_feature=label_feature,
        supervised=(image_feature, label_feature) == builder.info.supervised_keys,
        split_sizes=prepared_split_sizes(builder) if source == "tfds" else (),
    )


def image_and_label(name: str, info: tfds.core.DatasetInfo) -> tuple[str, str]:
    """The image feature and the class-label feature of a dataset: its supervised keys where
    they are an image and a label, else its only top-level image and label features.

    Raises:
        LabInputError: naming what the dataset lacks and the features it has.
    """
    features = info.features
    keys = info.supervised_keys
    if (
        isinstance(keys, tuple) and len(keys) == 2 and all(isinstance(key, str) for key in keys)
        and isinstance(features[keys[0]], tfds.features.Image)
        and isinstance(features[keys[1]], tfds.features.ClassLabel)
    ):
        return tuple(keys)
    found = {}
    for kind, what in ((tfds.features.Image, "image"), (tfds.features.ClassLabel, "class-label")):
        matching = [key for key, feature in features.items() if isinstance(feature, kind)]
        if len(matching) != 1:
            listed = ", ".join(f"{key} ({type(feature).__name__})" for key, feature in features.items())
            count = "no" if not matching else f"{len(matching)} ({', '.join(matching)}), not one"
            raise LabInputError(
                f"--dataset {name} is not an image classification dataset: it has {count} {what} feature "
                f"(its features: {listed}); give one whose examples are an image and a class label, "
                "such as beans, oxford_flowers102 or cats_vs_dogs, or a folder of <class>/* images"
            )
        found[what] = matching[0]
    return found["image"], found["class-label"]


def split_sizes(available: dict[str, int]) -> list[tuple[str, int]]:
    """How a tensorflow-datasets dataset is split, with the images in each: its own train and
    validation (or test) splits where it has them, else the last fifth of train held out."""
    train, validation = tfds_splits(available)
    if validation.startswith("train["):
        held_out = held_out_count(available["train"])
        return [(train, available["train"] - held_out), (validation, held_out)]
    return [(train, available[train]), (validation, available[validation])]


def tfds_splits(available) -> tuple[str, str]:
    """The training and validation split expressions for a dataset with splits `available`.

    Raises:
        LabInputError: the dataset has no train split.
    """
    if "train" not in available:
        raise LabInputError(
            f"the dataset has no train split (its splits: {', '.join(available)}): "
            "give one with a train split, or a folder of <class>/* images"
        )
    for name in VALIDATION_SPLITS:
        if name in available:
            return "train", name
    kept = 100 - int(round(VALIDATION_SHARE * 100))
    return f"train[:{kept}%]", f"train[{kept}%:]"


def held_out_count(total: int) -> int:
    """Images of a folder (or a train-only dataset) held out for validation."""
    return int(round(total * VALIDATION_SHARE))


def image_files(folder: str) -> list[str]:
    """The names of the image files in `folder`."""
    return [name for name in list_folder(folder) if name.lower().endswith(IMAGE_SUFFIXES)]


def list_folder(folder: str) -> list[str]:
    """The entries of `folder` but hidden ones; an unreadable folder is bad input whose message names the fix.

    A name starting with a dot is a tool's (`.ipynb_checkpoints`, `.DS_Store`, macOS's `._x.jpg`),
    never a class or an image.
    """
    try:
        return [name for name in os.listdir(folder) if not name.startswith(".")]
    except PermissionError:
        raise LabInputError(
            f"cannot read folder {folder}: permission denied: fix its permissions "
            "(the user running pytest needs read and execute permission on it)"
        ) from None

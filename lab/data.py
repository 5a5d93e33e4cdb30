"""Datasets for the lab: tf_flowers and CIFAR-10 from the embedded sample, tensorflow-datasets,
a folder, or mock data.

Every source ends in the same `ImageData`: images resized once and kept as uint8, labels in
tensorflow-datasets' class order, and a tf.data pipeline that scales to float32 in [0, 1]
(the lab's cast-and-divide-by-255) batch by batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lab import network, sample
from lab.errors import LabInputError

logger = logging.getLogger(__name__)

DATASETS = ("tf_flowers", "cifar10")
SOURCES = ("sample", "tfds", "folder", "mock")

# Class names in tensorflow-datasets' label order; a folder is mapped onto these by name.
CLASS_NAMES = {
    "tf_flowers": ("dandelion", "daisy", "tulips", "sunflowers", "roses"),
    "cifar10": (
        "airplane", "automobile", "bird", "cat", "deer",
        "dog", "frog", "horse", "ship", "truck",
    ),
}
# The folder each dataset has under --data-dir, as the public archives name them.
FOLDER_NAMES = {"tf_flowers": "flower_photos", "cifar10": "cifar10"}
# Where a source has only a training split, this share of it is held out for validation.
VALIDATION_SHARE = 0.2
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".gif", ".bmp")


@dataclasses.dataclass
class ImageData:
    """A dataset resized for one experiment: uint8 images and labels, train and validation.

    Attributes:
        name: the tensorflow-datasets name.
        source: `sample`, `tfds`, `folder` or `mock`.
        num_classes: from the dataset's metadata.
        total_examples: examples the source holds, before any subset was taken.
        image_size: side of the square images.
    """

    name: str
    source: str
    num_classes: int
    total_examples: int
    image_size: int
    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray

    @property
    def class_names(self) -> tuple[str, ...]:
        """Class names in tensorflow-datasets' label order."""
        return CLASS_NAMES[self.name]

    @property
    def train_count(self) -> int:
        return len(self.train_labels)

    @property
    def validation_count(self) -> int:
        return len(self.validation_labels)

    def batches(
        self, split: str, batch_size: int, seed: int | None = None, limit: int | None = None
    ) -> tf.data.Dataset:
        """A batched, prefetched pipeline of (float32 images in [0, 1], int labels).

        Args:
            split: `train` or `validation`.
            batch_size: images per batch.
            seed: shuffles every epoch with this seed; None keeps the stored order.
            limit: uses only the first `limit` images.
        """
        images, labels = self.split(split)
        return batched_pairs(images[:limit], labels[:limit], batch_size, seed, transform=scale_to_unit)

    def scaled(self, split: str, limit: int | None = None) -> np.ndarray:
        """The images of `split` as float32 in [0, 1], for predictions on small sets."""
        images, _ = self.split(split)
        return images[:limit].astype("float32") / 255.0

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 images and the labels of `split` (`train` or `validation`)."""
        if split == "train":
            return self.train_images, self.train_labels
        if split == "validation":
            return self.validation_images, self.validation_labels
        raise ValueError(f"unknown split {split!r}: use 'train' or 'validation'")


def batched_pairs(
    inputs: np.ndarray, labels: np.ndarray, batch_size: int, seed: int | None, transform=None
) -> tf.data.Dataset:
    """Batches of (inputs, labels), shuffled every epoch with `seed` unless it is None.

    `transform` maps each batch (after batching, so the stored arrays are never copied whole).
    """
    dataset = tf.data.Dataset.from_tensor_slices((inputs, labels))
    if seed is not None:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.batch(batch_size)
    if transform is not None:
        dataset = dataset.map(transform, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset.prefetch(tf.data.AUTOTUNE)


def scale_to_unit(images: tf.Tensor, labels: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """The lab's preprocessing after resizing: cast to float32 and divide by 255."""
    return tf.cast(images, tf.float32) / 255.0, labels


def resize_to_uint8(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Resizes one decoded image to a square and stores it back as uint8."""
    resized = tf.image.resize(image, (image_size, image_size))
    return tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)


def num_classes_from_metadata(name: str) -> int:
    """The number of classes tensorflow-datasets' metadata gives; needs no download."""
    return tfds.builder(name).info.features["label"].num_classes


def load(
    name: str,
    source: str,
    image_size: int,
    train_count: int | None,
    validation_count: int | None,
    data_dir: str | None = None,
    strict_train_count: bool = False,
) -> ImageData:
    """Loads `name` from `source`, resized to `image_size`, with the asked number of images.

    Args:
        name: `tf_flowers` or `cifar10`.
        source: `sample`, `tfds`, `folder` or `mock`.
        image_size: side of the square images.
        train_count: training images (None: all). Capped at what the source holds, unless
            `strict_train_count`, in which case asking for more is an error.
        validation_count: validation images (None: all held out), capped likewise.
        data_dir: the folder holding `flower_photos/` and `cifar10/` for the folder source.
        strict_train_count: the count came from the user (--subset), not from a profile.

    Raises:
        LabInputError: a bad name, source or count, missing or corrupt data, or tfds data
            that is neither prepared nor downloadable.
    """
    if name not in DATASETS:
        raise LabInputError(f"unknown dataset {name!r}: the lab uses {', '.join(DATASETS)}")
    if source not in SOURCES:
        raise LabInputError(
            f"unknown data source {source!r}: use --data-source with one of {', '.join(SOURCES)}"
        )
    if train_count is not None and train_count <= 0:
        raise LabInputError(f"--subset must be a positive number of images, got {train_count}")
    num_classes = num_classes_from_metadata(name)
    if num_classes != len(CLASS_NAMES[name]):
        raise LabInputError(f"{name}: tensorflow-datasets reports {num_classes} classes")
    loader = {"sample": _load_sample, "tfds": _load_tfds, "folder": _load_folder, "mock": _load_mock}[source]
    return loader(
        name, image_size, train_count, validation_count, data_dir, strict_train_count, num_classes
    )


def _take(available: int, wanted: int | None, what: str = "", strict: bool = False) -> int:
    """How many of `available` items to use: `wanted` (all when None), capped at `available`.

    With `strict` (a count the user asked for), asking for more than `available` is an error
    that names the `what` there are.
    """
    if wanted is None:
        return available
    if wanted > available and strict:
        raise LabInputError(
            f"--subset {wanted} is larger than the {available} {what}: "
            f"pass --subset {available} or less"
        )
    return min(wanted, available)


def _folder_files(name: str, data_dir: str | None) -> list[tuple[str, int]]:
    """Every image file of the dataset's folder with its label, in a fixed hashed order."""
    if not data_dir:
        raise LabInputError("the folder source needs --data-dir PATH (or use --data-source mock)")
    root = os.path.join(data_dir, FOLDER_NAMES[name])
    if not os.path.isdir(root):
        raise LabInputError(
            f"{root} does not exist: --data-dir must hold {FOLDER_NAMES[name]}/<class>/* "
            "(the layout of ../shared/data), or use --data-source tfds or mock"
        )
    present = sorted(entry for entry in _list_folder(root) if os.path.isdir(os.path.join(root, entry)))
    expected = CLASS_NAMES[name]
    missing = [cls for cls in expected if cls not in present]
    unknown = [cls for cls in present if cls not in expected]
    if missing or unknown:
        raise LabInputError(
            f"{root}: class folders must be exactly {', '.join(expected)}; "
            f"missing {missing or 'none'}, unexpected {unknown or 'none'}: "
            "fix the folder or --data-dir, or use --data-source mock"
        )
    files = []
    for label, cls in enumerate(expected):
        folder = os.path.join(root, cls)
        images = [f for f in _list_folder(folder) if f.lower().endswith(IMAGE_SUFFIXES)]
        if not images:
            raise LabInputError(
                f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}): "
                "add its images or fix --data-dir"
            )
        for image in images:
            _check_utf8_name(os.path.join(folder, image))
        files += [(os.path.join(folder, f), label) for f in images]
    # A hash of the path, not the seed, fixes the order: the validation images stay the same
    # whichever seed a run uses, so runs with different seeds compare on the same images.
    return sorted(files, key=lambda item: hashlib.sha1(os.path.relpath(item[0], root).encode()).hexdigest())


def _list_folder(folder: str) -> list[str]:
    """The entries of `folder`; an unreadable folder is bad input whose message names the fix."""
    try:
        return os.listdir(folder)
    except PermissionError:
        raise LabInputError(
            f"cannot read folder {folder}: permission denied: fix its permissions "
            "(the user running pytest needs read and execute permission on it)"
        ) from None


def _check_utf8_name(path: str) -> None:
    """TensorFlow reads only UTF-8 paths; Python hands other bytes on as lone surrogates."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise LabInputError(
            f"image file name {path!r} is not valid UTF-8, and TensorFlow reads only UTF-8 paths: "
            "rename the file (or move it out of --data-dir)"
        ) from None


def _decode_files(paths: list[str], image_size: int) -> np.ndarray:
    """Decodes and resizes every file once, in parallel; names the first file that fails."""

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return resize_to_uint8(image, image_size)

    dataset = (
        tf.data.Dataset.from_tensor_slices(paths)
        .map(decode, num_parallel_calls=tf.data.AUTOTUNE)
        .batch(256)
    )
    try:
        return np.concatenate([batch.numpy() for batch in dataset]) if paths else np.zeros(
            (0, image_size, image_size, 3), np.uint8
        )
    except tf.errors.OpError:
        for path in paths:
            try:
                decode(path)
            except tf.errors.PermissionDeniedError:
                raise LabInputError(
                    f"cannot read image {path}: permission denied: fix its permissions "
                    "(the user running pytest needs read permission on it)"
                ) from None
            except tf.errors.OpError as error:
                raise LabInputError(
                    f"cannot decode image {path} ({error.message.splitlines()[0]}): "
                    "delete or replace the file"
                ) from None
        raise


def _load_folder(name, image_size, train_count, validation_count, data_dir, strict, num_classes):
    files = _folder_files(name, data_dir)
    held_out = int(round(len(files) * VALIDATION_SHARE))
    validation_files, train_files = files[:held_out], files[held_out:]
    train_files = train_files[: _take(len(train_files), train_count, f"training images in {data_dir}", strict)]
    validation_files = validation_files[: _take(len(validation_files), validation_count)]
    return ImageData(
        name=name,
        source="folder",
        num_classes=num_classes,
        total_examples=len(files),
        image_size=image_size,
        train_images=_decode_files([path for path, _ in train_files], image_size),
        train_labels=np.array([label for _, label in train_files], np.int64),
        validation_images=_decode_files([path for path, _ in validation_files], image_size),
        validation_labels=np.array([label for _, label in validation_files], np.int64),
    )


def _load_sample(name, image_size, train_count, validation_count, data_dir, strict, num_classes):
    """The embedded sample is a folder in the layout of ../shared/data, checked before use."""
    loaded = _load_folder(name, image_size, train_count, validation_count, sample.verified_root(), strict, num_classes)
    return dataclasses.replace(loaded, source="sample")


def _to_arrays(dataset: tf.data.Dataset, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    resized = dataset.map(
        lambda image, label: (resize_to_uint8(image, image_size), label),
        num_parallel_calls=tf.data.AUTOTUNE,
    ).batch(256)
    images, labels = [], []
    for image_batch, label_batch in resized:
        images.append(image_batch.numpy())
        labels.append(label_batch.numpy())
    if not images:
        return np.zeros((0, image_size, image_size, 3), np.uint8), np.zeros((0,), np.int64)
    return np.concatenate(images), np.concatenate(labels).astype(np.int64)


def _tfds_splits(name: str) -> tuple[str, str]:
    """tf_flowers has only a train split: its last fifth is the validation set."""
    if name == "tf_flowers":
        held_out = int(round(VALIDATION_SHARE * 100))
        return f"train[:{100 - held_out}%]", f"train[{100 - held_out}%:]"
    return "train", "test"


def _load_tfds(name, image_size, train_count, validation_count, data_dir, strict, num_classes):
    builder = tfds.builder(name)
    if not builder.is_prepared():
        if not network.can_reach():
            way_out = (
                f"--data-dir {data_dir} is ignored with --data-source tfds: pass --data-source folder to read it"
                if data_dir
                else f"pass --data-dir PATH (a folder with {FOLDER_NAMES[name]}/<class>/*)"
            )
            raise LabInputError(
                f"tensorflow-datasets has no prepared copy of {name} in {builder.data_dir} and "
                f"{network.DOWNLOAD_HOST} cannot be reached: {way_out}, or use --data-source mock"
            )
        logger.info("tensorflow-datasets: downloading and preparing %s into %s", name, builder.data_dir)
        builder.download_and_prepare()
    train_split, validation_split = _tfds_splits(name)
    splits = builder.info.splits
    train_available = splits[train_split].num_examples
    train_take = _take(train_available, train_count, f"training images of {name}", strict)
    validation_take = _take(splits[validation_split].num_examples, validation_count)
    train = builder.as_dataset(split=train_split, as_supervised=True).take(train_take)
    validation = builder.as_dataset(split=validation_split, as_supervised=True).take(validation_take)
    train_images, train_labels = _to_arrays(train, image_size)
    validation_images, validation_labels = _to_arrays(validation, image_size)
    return ImageData(
        name=name,
        source="tfds",
        num_classes=num_classes,
        total_examples=sum(split.num_examples for split in splits.values()),
        image_size=image_size,
        train_images=train_images,
        train_labels=train_labels,
        validation_images=validation_images,
        validation_labels=validation_labels,
    )


# Mock data has no size of its own: without a subset it stands in for a small dataset.
MOCK_DEFAULT_TRAIN = 256
MOCK_DEFAULT_VALIDATION = 64


def _load_mock(name, image_size, train_count, validation_count, data_dir, strict, num_classes):
    train_take = MOCK_DEFAULT_TRAIN if train_count is None else train_count
    validation_take = MOCK_DEFAULT_VALIDATION if validation_count is None else validation_count
    with tfds.testing.mock_data(num_examples=train_take + validation_take):
        dataset = tfds.load(name, split="train", as_supervised=True)
    images, labels = _to_arrays(dataset, image_size)
    return ImageData(
        name=name,
        source="mock",
        num_classes=num_classes,
        total_examples=train_take + validation_take,
        image_size=image_size,
        train_images=images[:train_take],
        train_labels=labels[:train_take],
        validation_images=images[train_take:],
        validation_labels=labels[train_take:],
    )

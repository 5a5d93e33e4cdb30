"""Datasets for the lab: tf_flowers and CIFAR-10 from the embedded sample, tensorflow-datasets,
a folder, or mock data; for experiments 3-5, any `lab.inputs.datasets.DatasetSpec`.

Every source ends in the same `ImageData`: images resized once and kept as uint8, labels in
tensorflow-datasets' class order, and a tf.data pipeline that scales to float32 in [0, 1]
(the lab's cast-and-divide-by-255) batch by batch.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import threading
import warnings
import weakref

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from lab.errors import DataWarning, LabInputError
from lab.inputs import image_cache, network, sample
from lab.inputs.datasets import (
    IMAGE_SUFFIXES,
    DatasetSpec,
    folder_split_sizes,
    held_out_count,
    image_files,
    list_folder,
    prepared_split_sizes,
    tfds_splits,
)
from lab.measurements import ValidationSet

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
# Split seeds draw from their own stream, apart from the training generators `seed` seeds.
_SPLIT_STREAM = 0x5B1
# Images hashed at a time by `ImageData.validation_digest`.
DIGEST_CHUNK = 256
# A message about the data folder names both ways of giving it: loading does not know which one did.
DATA_DIR_NAMES = "--data-dir (or LAB_DATA_DIR)"


@dataclasses.dataclass
class ImageData:
    """A dataset resized for one experiment: uint8 images and labels, train and validation.

    Attributes:
        name: the tensorflow-datasets name, or the folder's own name.
        source: `sample`, `tfds`, `folder` or `mock`.
        class_names: in label order (`DatasetSpec.class_names`).
        total_examples: examples the source holds, before any subset was taken.
        image_size: side of the square images.
        validation_fixed: the validation images are a split the publisher fixed (a
            tensorflow-datasets test or validation split), not a share held out of train.
        split_seed: the seed this split was drawn with (`split_for_seed`); None for the
            source's own split.
        pool: the data this split was drawn from, whose train-then-validation images its
            `pool_indices` (train, validation) index; caches keyed by image use the pool. None
            for the source's own split.
    """

    name: str
    source: str
    class_names: tuple[str, ...]
    total_examples: int
    image_size: int
    train_images: np.ndarray
    train_labels: np.ndarray
    validation_images: np.ndarray
    validation_labels: np.ndarray
    validation_fixed: bool = False
    split_seed: int | None = None
    pool: ImageData | None = None
    pool_indices: tuple[np.ndarray, np.ndarray] | None = None
    _validation_digest: str | None = dataclasses.field(default=None, init=False, repr=False, compare=False)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def train_count(self) -> int:
        return len(self.train_labels)

    @property
    def validation_count(self) -> int:
        return len(self.validation_labels)

    def validation_set(self) -> ValidationSet:
        """Its validation images as the report names them, with their labels: what a record's
        predictions are checked against and paired by."""
        name = f"{self.name} ({self.source}), {self.image_size}px, {self.validation_count} images"
        if self.split_seed is not None:
            name += f", split of seed {self.split_seed}"
        return ValidationSet(
            name, self.num_classes, [int(label) for label in self.validation_labels], self.validation_digest()
        )

    def validation_digest(self) -> str:
        """SHA-256 of the validation images' pixels and labels, in order: equal digests, the same
        images (what `--resume` and a baseline check before they pair records)."""
        if self._validation_digest is None:
            digest = hashlib.sha256()
            images, labels = self.split("validation")
            # In chunks: a full profile's validation images need not all be in memory at once.
            for start in range(0, len(labels), DIGEST_CHUNK):
                chunk = np.arange(start, min(start + DIGEST_CHUNK, len(labels)))
                digest.update(np.ascontiguousarray(image_cache.take(images, chunk)).tobytes())
            digest.update(np.asarray(labels, dtype=np.int64).tobytes())
            self._validation_digest = digest.hexdigest()
        return self._validation_digest

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
        return batched_pairs(images, labels[:limit], batch_size, seed, to_unit=True)

    def scaled(self, split: str, limit: int | None = None) -> np.ndarray:
        """The images of `split` as float32 in [0, 1], for predictions on small sets."""
        images, labels = self.split(split)
        return image_cache.take(images, np.arange(len(labels[:limit]))).astype("float32") / 255.0

    def split_for_seed(self, seed: int) -> ImageData:
        """The same images split anew, stratified by class, by `seed`, with this split's counts.

        A publisher's fixed validation split (`validation_fixed`) is kept: the data is returned
        as it is, and every seed is scored on the same images.
        """
        if self.validation_fixed:
            return self
        labels = np.concatenate([self.train_labels, self.validation_labels])
        order = np.random.default_rng([seed, _SPLIT_STREAM]).permutation(labels.size)
        held_out = stratified_holdout(labels, order, self.validation_count, ties_by_order=True)
        validation_indices = order[held_out[order]]
        train_indices = order[~held_out[order]]
        return dataclasses.replace(
            self,
            train_images=self._pool_images(train_indices),
            train_labels=labels[train_indices],
            validation_images=self._pool_images(validation_indices),
            validation_labels=labels[validation_indices],
            split_seed=seed,
            pool=self,
            pool_indices=(train_indices, validation_indices),
        )

    def _pool_images(self, indices: np.ndarray) -> np.ndarray:
        """Rows of the train-then-validation images, gathered in the order of `indices`."""
        in_train = indices < self.train_count
        images = np.empty((indices.size, *self.train_images.shape[1:]), dtype=self.train_images.dtype)
        images[in_train] = image_cache.take(self.train_images, indices[in_train])
        images[~in_train] = image_cache.take(self.validation_images, indices[~in_train] - self.train_count)
        return images

    def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The uint8 images and the labels of `split` (`train` or `validation`)."""
        if split == "train":
            return self.train_images, self.train_labels
        if split == "validation":
            return self.validation_images, self.validation_labels
        raise ValueError(f"unknown split {split!r}: use 'train' or 'validation'")


def stratified_holdout(labels: np.ndarray, order: np.ndarray, count: int, ties_by_order: bool = False) -> np.ndarray:
    """Which images to hold out: `count` of them, each class in proportion to its size.

    Each class's share is rounded by largest remainder, so the shares add up to `count`; a
    class holds out its first images in `order`.

    Args:
        labels: every image's class.
        order: the images' positions in the order they are taken (a hash or a seeded shuffle).
        count: how many to hold out.
        ties_by_order: equal remainders go to the classes that come first in `order` (a seeded
            shuffle's split then breaks them its own way, where the first class in class order,
            which a split of one image per class would leave without training images, always
            took them); otherwise to the classes first in class order.

    Returns:
        A boolean mask over the images.
    """
    classes, sizes = np.unique(labels, return_counts=True)
    quotas = count * sizes / labels.size
    shares = np.floor(quotas).astype(int)
    remainder = count - shares.sum()
    if ties_by_order:
        ordered = labels[order]
        tie_break = np.array([np.flatnonzero(ordered == cls)[0] for cls in classes])
    else:
        tie_break = np.arange(classes.size)
    # np.lexsort sorts by its last key first: the largest remainder, then the tie break.
    shares[np.lexsort((tie_break, -(quotas - shares)))[:remainder]] += 1
    held_out = np.zeros(labels.size, dtype=bool)
    for cls, share in zip(classes, shares, strict=True):
        in_class = order[labels[order] == cls]
        held_out[in_class[:share]] = True
    return held_out


def batched_pairs(
    inputs: np.ndarray | tuple[np.ndarray, ...],
    labels: np.ndarray,
    batch_size: int,
    seed: int | None,
    to_unit: bool = False,
) -> tf.data.Dataset:
    """Batches of (inputs, labels), shuffled every epoch with `seed` unless it is None.

    The pipeline shuffles and batches indices; each batch then gathers its rows with
    `image_cache.take`, so neither the graph nor a shuffle buffer holds a copy of the arrays,
    and a cached split's images are read from disk. The order is the one a shuffle of the
    rows themselves with the same seed gives.

    Args:
        inputs: an array, or a tuple of arrays, with at least `len(labels)` rows; the first
            `len(labels)` are used.
        labels: one per batch row.
        batch_size: rows per batch.
        seed: shuffles every epoch with this seed; None keeps the stored order.
        to_unit: the inputs are uint8 images, delivered as float32 in [0, 1] exactly as
            `scale_to_unit` gives them, scaled as they are gathered.
    """
    arrays = inputs if isinstance(inputs, tuple) else (inputs,)
    labels = np.asarray(labels)
    dtypes = [tf.float32 if to_unit else tf.as_dtype(array.dtype) for array in arrays]
    buffers = _ReusedBuffers()

    def gather(indices: np.ndarray) -> list[np.ndarray]:
        rows = [image_cache.take(array, indices) for array in arrays]
        if to_unit:
            rows = [_unit_scaled(images, buffers.empty(images.shape, np.float32)) for images in rows]
        return [*rows, image_cache.take(labels, indices)]

    def load(indices: tf.Tensor):
        # Stateless: the same indices give the same rows, which op determinism requires.
        gathered = tf.numpy_function(gather, [indices], [*dtypes, tf.as_dtype(labels.dtype)], stateful=False)
        for tensor, column in zip(gathered, (*arrays, labels), strict=True):
            tensor.set_shape((None, *column.shape[1:]))
        return (tuple(gathered[:-1]) if isinstance(inputs, tuple) else gathered[0]), gathered[-1]

    dataset = tf.data.Dataset.range(len(labels))
    if seed is not None:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    # Batches are gathered in parallel but delivered in the shuffle's order, whatever options a caller sets.
    dataset = dataset.batch(batch_size).map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return dataset.prefetch(tf.data.AUTOTUNE)


def _unit_scaled(images: np.ndarray, out: np.ndarray) -> np.ndarray:
    """`scale_to_unit`'s images in numpy, bit for bit, written into `out`."""
    # A true division, as tf.data computes it: a multiplication by 1/255 rounds about half the values apart.
    return np.divide(images, np.float32(255), out=out)


class _ReusedBuffers:
    """Aligned arrays to hand TensorFlow, each one's memory used again once no array made from it is left.

    Fresh memory faults on its first write a page at a time; at 96 px that cost more than the
    scaling itself.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # (memory, a weak reference to the base of the array last made over it)
        self._buffers: list[tuple[np.ndarray, weakref.ref]] = []

    def empty(self, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """An uninitialised array of `shape` and `dtype` in memory that no live array uses."""
        dtype = np.dtype(dtype)
        with self._lock:
            free = [
                position
                for position, (memory, handed) in enumerate(self._buffers)
                if handed() is None and memory.shape == shape and memory.dtype == dtype
            ]
            memory = self._buffers.pop(free[0])[0] if free else image_cache.aligned_empty(shape, dtype)
            # An array over a memoryview is the base of every view made from it, however deep, so
            # its weak reference dies only with the last of them (numpy collapses chains of views).
            base = np.frombuffer(memoryview(memory).cast("B"), dtype)
            self._buffers.append((memory, weakref.ref(base)))
        return base.reshape(shape)


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


def lab_dataset(name: str, source: str, data_dir: str | None = None) -> DatasetSpec:
    """One of the lab's own datasets (`DATASETS`) from `source`, in tensorflow-datasets' label order.

    A folder (or the sample) holds it under `FOLDER_NAMES[name]`, its classes matched by name.

    Raises:
        LabInputError: a bad name or source, or metadata that disagrees with `CLASS_NAMES`.
    """
    if name not in DATASETS:
        raise LabInputError(f"unknown dataset {name!r}: the lab uses {', '.join(DATASETS)}")
    if source not in SOURCES:
        raise LabInputError(
            f"unknown data source {source!r}: use --data-source with one of {', '.join(SOURCES)}"
        )
    num_classes = num_classes_from_metadata(name)
    if num_classes != len(CLASS_NAMES[name]):
        raise LabInputError(f"{name}: tensorflow-datasets reports {num_classes} classes")
    root = sample.verified_root() if source == "sample" else data_dir
    folder = os.path.join(root, FOLDER_NAMES[name]) if root and source in ("sample", "folder") else None
    if folder:
        sizes = folder_split_sizes(folder, CLASS_NAMES[name]) if os.path.isdir(folder) else ()
    else:
        sizes = prepared_split_sizes(tfds.builder(name)) if source == "tfds" else ()
    return DatasetSpec(name=name, source=source, class_names=CLASS_NAMES[name], folder=folder, split_sizes=sizes)


def load(
    name: str,
    source: str,
    image_size: int,
    train_count: int | None,
    validation_count: int | None,
    data_dir: str | None = None,
    strict_train_count: bool = False,
) -> ImageData:
    """Loads the lab's dataset `name` from `source`, resized to `image_size`, with the asked number of images.

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
    if source == "folder" and not data_dir:
        raise LabInputError("the folder source needs --data-dir PATH (or use --data-source mock)")
    return load_dataset(
        lab_dataset(name, source, data_dir), image_size, train_count, validation_count, strict_train_count, data_dir
    )


def load_dataset(
    dataset: DatasetSpec,
    image_size: int,
    train_count: int | None,
    validation_count: int | None,
    strict_train_count: bool = False,
    data_dir: str | None = None,
) -> ImageData:
    """Loads `dataset`, resized to `image_size`, with the asked number of images.

    Args:
        dataset: what to load and from where (`lab_dataset`, or `lab.inputs.datasets` for --dataset).
        image_size: side of the square images.
        train_count: training images (None: all), capped as in `load`.
        validation_count: validation images (None: all held out), capped likewise.
        strict_train_count: the count came from the user (--subset), not from a profile.
        data_dir: the run's --data-dir, which the tfds source does not read: its error names it.

    Raises:
        LabInputError: a bad count, missing or corrupt data, or tfds data that is neither
            prepared nor downloadable.
    """
    if train_count is not None and train_count <= 0:
        raise LabInputError(f"--subset must be a positive number of images, got {train_count}")
    loader = {"sample": _load_sample, "tfds": _load_tfds, "folder": _load_folder, "mock": _load_mock}[dataset.source]
    return loader(dataset, image_size, train_count, validation_count, strict_train_count, data_dir)


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


def _folder_files(dataset: DatasetSpec) -> list[tuple[str, int]]:
    """Every image file of the dataset's folder with its label, in a fixed hashed order."""
    root = dataset.folder
    if not os.path.isdir(root):
        layout = FOLDER_NAMES.get(dataset.name, os.path.basename(root))
        raise LabInputError(
            f"{root} does not exist: {DATA_DIR_NAMES} must hold {layout}/<class>/* "
            "(the layout of ../shared/data), or use --data-source tfds or mock"
        )
    present = sorted(entry for entry in list_folder(root) if os.path.isdir(os.path.join(root, entry)))
    expected = dataset.class_names
    missing = [cls for cls in expected if cls not in present]
    unknown = [cls for cls in present if cls not in expected]
    if missing or unknown:
        raise LabInputError(
            f"{root}: class folders must be exactly {', '.join(expected)}; "
            f"missing {missing or 'none'}, unexpected {unknown or 'none'}: "
            f"fix the folder or {DATA_DIR_NAMES}, or use --data-source mock"
        )
    files = []
    for label, cls in enumerate(expected):
        folder = os.path.join(root, cls)
        images = image_files(folder)
        if not images:
            raise LabInputError(
                f"class folder {folder} has no images ({', '.join(IMAGE_SUFFIXES)}): "
                f"add its images or fix {DATA_DIR_NAMES}"
            )
        for image in images:
            _check_utf8_name(os.path.join(folder, image))
        files += [(os.path.join(folder, f), label) for f in images]
    # A hash of the path, not the seed, fixes the order: the validation images stay the same
    # whichever seed a run uses, so runs with different seeds compare on the same images.
    return sorted(files, key=lambda item: hashlib.sha1(os.path.relpath(item[0], root).encode()).hexdigest())


def _check_utf8_name(path: str) -> None:
    """TensorFlow reads only UTF-8 paths; Python hands other bytes on as lone surrogates."""
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise LabInputError(
            f"image file name {path!r} is not valid UTF-8, and TensorFlow reads only UTF-8 paths: "
            "rename the file (or move it out of the data folder)"
        ) from None


# Images decoded and resized per step while a cache entry is written: small, so that the
# decoding pipeline's buffers stay a few megabytes whatever tf.data's autotuning picks.
DECODE_BATCH = 64


def _decode_files(files: list[tuple[str, int]], image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The (path, label) files decoded and resized, once per machine; names the first file that fails.

    Returns the images, cached on disk (`lab.inputs.image_cache`), and the labels.
    """

    def decode(path):
        image = tf.io.decode_image(tf.io.read_file(path), channels=3, expand_animations=False)
        return resize_to_uint8(image, image_size)

    paths = [path for path, _ in files]
    labels = np.array([label for _, label in files], np.int64)

    def decoded_batches():
        if not files:
            return
        dataset = tf.data.Dataset.from_tensor_slices((paths, labels)).map(
            lambda path, label: (decode(path), label), num_parallel_calls=tf.data.AUTOTUNE
        )
        for image_batch, label_batch in dataset.batch(DECODE_BATCH):
            yield image_batch.numpy(), label_batch.numpy()

    # The labels are in the key: the same files can be labelled in another class order.
    fingerprint = [
        [*file, int(label)] for file, label in zip(image_cache.file_fingerprint(paths), labels, strict=True)
    ]
    try:
        return image_cache.load_or_build({"source": "files", "files": fingerprint}, image_size, decoded_batches)
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
                    f"cannot decode image {path} ({_op_reason(error)}): "
                    "delete or replace the file"
                ) from None
        raise


# TensorFlow wraps an op's own words in where it ran: `{{function_node __wrapped__DecodeImage_device_
# /job:...}} Unknown image file format. [Op:DecodeImage] name: `.
_OP_WRAPPING = re.compile(r"^\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\](?: name: \S*)?\s*$")


def _op_reason(error: tf.errors.OpError) -> str:
    """What a failed TensorFlow op says went wrong, without the wrapping that says where it ran."""
    return _OP_WRAPPING.sub("", error.message.splitlines()[0])


def _stratified_files(
    files: list[tuple[str, int]], dataset: DatasetSpec, count: int | None = None
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(held out, the rest) of `files` in their order: `count` (a fifth by default) held out per class.

    A class left with no validation image is warned about: its accuracy cannot be measured.
    """
    labels = np.array([label for _, label in files])
    count = held_out_count(len(files)) if count is None else count
    held_out = stratified_holdout(labels, np.arange(len(files)), count)
    unseen = sorted(set(labels.tolist()) - set(labels[held_out].tolist()))
    if unseen and count:
        names = ", ".join(dataset.class_names[label] for label in unseen)
        warnings.warn(
            f"{dataset.folder}: no validation image of {names}: add images of it", DataWarning, stacklevel=3
        )
    return ([file for file, out in zip(files, held_out, strict=True) if out],
            [file for file, out in zip(files, held_out, strict=True) if not out])


def _load_folder(dataset, image_size, train_count, validation_count, strict, data_dir=None):
    files = _folder_files(dataset)
    validation_files, train_files = _stratified_files(files, dataset)
    train_files = train_files[: _take(len(train_files), train_count, f"training images in {dataset.folder}", strict)]
    validation_files = _stratified_files(validation_files, dataset, _take(len(validation_files), validation_count))[0]
    train_images, train_labels = _decode_files(train_files, image_size)
    validation_images, validation_labels = _decode_files(validation_files, image_size)
    return ImageData(
        name=dataset.name,
        source=dataset.source,
        class_names=dataset.class_names,
        total_examples=len(files),
        image_size=image_size,
        train_images=train_images,
        train_labels=train_labels,
        validation_images=validation_images,
        validation_labels=validation_labels,
    )


# The embedded sample is a folder in the layout of ../shared/data, checked when its spec is made.
_load_sample = _load_folder


def _as_supervised(builder, split: str, spec: DatasetSpec) -> tf.data.Dataset:
    """(RGB image, label) pairs of a split, read by the spec's image and label features."""
    if spec.supervised:
        pairs = builder.as_dataset(split=split, as_supervised=True)
    else:
        pairs = builder.as_dataset(split=split).map(
            lambda example: (example[spec.image_feature], example[spec.label_feature])
        )
    return pairs.map(_three_channels, num_parallel_calls=tf.data.AUTOTUNE)


def _three_channels(image: tf.Tensor, label: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
    """Grayscale and RGBA images as the three channels every backbone takes."""
    if image.shape[-1] == 1:
        image = tf.image.grayscale_to_rgb(image)
    return image[..., :3], label


def _to_arrays(pairs: tf.data.Dataset, image_size: int, description: dict) -> tuple[np.ndarray, np.ndarray]:
    """(image, label) pairs resized, once per machine for what `description` names.

    Returns the images, cached on disk (`lab.inputs.image_cache`), and the labels.
    """

    def resized_batches():
        resized = pairs.map(
            lambda image, label: (resize_to_uint8(image, image_size), label),
            num_parallel_calls=tf.data.AUTOTUNE,
        )
        for image_batch, label_batch in resized.batch(DECODE_BATCH):
            yield image_batch.numpy(), label_batch.numpy()

    return image_cache.load_or_build(description, image_size, resized_batches)


def _tfds_description(spec: DatasetSpec, split: str, take: int, **details) -> dict:
    """What a tensorflow-datasets split's images depend on, for their cache key."""
    features = {"image_feature": spec.image_feature, "label_feature": spec.label_feature}
    return {"source": spec.source, "dataset": spec.name, **features, "split": split, "take": take, **details}


def _load_tfds(dataset, image_size, train_count, validation_count, strict, data_dir):
    name = dataset.name
    builder = tfds.builder(name)
    if not builder.is_prepared():
        if not network.can_reach():
            way_out = (
                f"--data-dir {data_dir} is ignored with --data-source tfds: pass --data-source folder to read it"
                if data_dir
                else f"pass --data-dir PATH (a folder with {FOLDER_NAMES[name]}/<class>/*)"
                if name in FOLDER_NAMES
                else "give --dataset a folder of <class>/* images"
            )
            raise LabInputError(
                f"tensorflow-datasets has no prepared copy of {name} in {builder.data_dir} and "
                f"{network.DOWNLOAD_HOST} cannot be reached: {way_out}, or use --data-source mock"
            )
        logger.info("tensorflow-datasets: downloading and preparing %s into %s", name, builder.data_dir)
        builder.download_and_prepare()
    splits = builder.info.splits
    train_split, validation_split = tfds_splits(splits)
    train_available = splits[train_split].num_examples
    train_take = _take(train_available, train_count, f"training images of {name}", strict)
    validation_take = _take(splits[validation_split].num_examples, validation_count)
    train = _as_supervised(builder, train_split, dataset).take(train_take)
    validation = _as_supervised(builder, validation_split, dataset).take(validation_take)
    prepared = {"version": str(builder.info.version), "data_dir": builder.data_dir}
    train_images, train_labels = _to_arrays(
        train, image_size, _tfds_description(dataset, train_split, train_take, **prepared)
    )
    validation_images, validation_labels = _to_arrays(
        validation, image_size, _tfds_description(dataset, validation_split, validation_take, **prepared)
    )
    return ImageData(
        name=name,
        source="tfds",
        class_names=dataset.class_names,
        total_examples=sum(split.num_examples for split in splits.values()),
        image_size=image_size,
        train_images=train_images,
        train_labels=train_labels,
        validation_images=validation_images,
        validation_labels=validation_labels,
        validation_fixed=validation_split in splits,
    )


# Mock data has no size of its own: without a subset it stands in for a small dataset.
MOCK_DEFAULT_TRAIN = 256
MOCK_DEFAULT_VALIDATION = 64


def _load_mock(dataset, image_size, train_count, validation_count, strict, data_dir):
    train_take = MOCK_DEFAULT_TRAIN if train_count is None else train_count
    validation_take = MOCK_DEFAULT_VALIDATION if validation_count is None else validation_count
    examples = train_take + validation_take
    with tfds.testing.mock_data(num_examples=examples):
        pairs = _as_supervised(tfds.builder(dataset.name), "train", dataset)
        train_images, train_labels = _to_arrays(
            pairs.take(train_take), image_size, _tfds_description(dataset, "train", train_take, examples=examples)
        )
        validation_images, validation_labels = _to_arrays(
            pairs.skip(train_take),
            image_size,
            _tfds_description(dataset, f"train[{train_take}:]", validation_take, examples=examples),
        )
    return ImageData(
        name=dataset.name,
        source="mock",
        class_names=dataset.class_names,
        total_examples=train_take + validation_take,
        image_size=image_size,
        train_images=train_images,
        train_labels=train_labels,
        validation_images=validation_images,
        validation_labels=validation_labels,
    )

"""Builds the embedded sample from a data folder in the layout of `../shared/data`.

The same source gives the same bytes: photos are re-encoded with fixed settings and no
metadata, every other file is copied unchanged, and the manifest is sorted by path.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import re

from PIL import Image

from lab.errors import LabInputError
from lab.inputs import data
from lab.inputs.sample import DATA_FOLDERS, MANIFEST, MANIFEST_COLUMNS, ROOT, WEIGHTS_FOLDER
from lab.runtime import atomic

FLOWER_LONGER_SIDE = 160
JPEG_QUALITY = 90
CIFAR_PER_CLASS = 250
# The flowers archive's credits and licence, kept beside the photos (CC-BY 2.0).
FLOWER_TEXTS = ("ATTRIBUTIONS.txt", "LICENSE.txt")
# Keras's file names of the ImageNet weights of the two backbones the smoke profile runs on
# (`Backbone.weights_file` of mobilenet and mobilenet_v2: tests/test_sample.py checks they agree).
WEIGHTS_FILES = (
    "mobilenet_2_5_224_tf_no_top.h5",
    "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5",
)
_CIFAR_FILE = re.compile(r"train_(\d+)\.png")


def downscaled_jpeg(path: str, longer_side: int = FLOWER_LONGER_SIDE, quality: int = JPEG_QUALITY) -> bytes:
    """The photo at `path` as JPEG bytes, shrunk so that its longer side is at most `longer_side`.

    Metadata (EXIF, ICC profiles) is dropped: TensorFlow's decoder ignores it, so the pixels
    the lab sees are unchanged by the drop.
    """
    with Image.open(path) as image:
        image = image.convert("RGB")
        scale = longer_side / max(image.size)
        if scale < 1:
            size = (max(1, round(image.width * scale)), max(1, round(image.height * scale)))
            image = image.resize(size, Image.Resampling.LANCZOS)
        encoded = io.BytesIO()
        image.save(encoded, "JPEG", quality=quality)
    return encoded.getvalue()


def _read(path: str) -> bytes:
    try:
        with open(path, "rb") as stream:
            return stream.read()
    except FileNotFoundError:
        raise LabInputError(f"{path} is missing: --from must be a folder in the layout of ../shared/data") from None


def _class_folder(source: str, dataset: str, name: str) -> str:
    folder = os.path.join(source, data.FOLDER_NAMES[dataset], name)
    if not os.path.isdir(folder):
        raise LabInputError(f"{folder} is missing: --from must be a folder in the layout of ../shared/data")
    return folder


def sample_files(source: str, cifar_per_class: int = CIFAR_PER_CLASS) -> dict[str, bytes]:
    """Every file of the sample (manifest aside): relative path -> bytes.

    Args:
        source: a folder in the layout of `../shared/data`.
        cifar_per_class: CIFAR-10 images per class, the first by training-set index.

    Raises:
        LabInputError: `source` lacks a file or folder, or a class has too few CIFAR-10 images.
    """
    flowers = data.FOLDER_NAMES["tf_flowers"]
    files = {f"{flowers}/{name}": _read(os.path.join(source, flowers, name)) for name in FLOWER_TEXTS}
    for name in data.CLASS_NAMES["tf_flowers"]:
        folder = _class_folder(source, "tf_flowers", name)
        for photo in sorted(os.listdir(folder)):
            if photo.lower().endswith(data.IMAGE_SUFFIXES):
                files[f"{flowers}/{name}/{photo}"] = downscaled_jpeg(os.path.join(folder, photo))
    cifar = data.FOLDER_NAMES["cifar10"]
    for name in data.CLASS_NAMES["cifar10"]:
        folder = _class_folder(source, "cifar10", name)
        indexed = sorted(
            (int(match.group(1)), file_name)
            for file_name in os.listdir(folder)
            if (match := _CIFAR_FILE.fullmatch(file_name))
        )
        if len(indexed) < cifar_per_class:
            raise LabInputError(
                f"{folder} has {len(indexed)} train_NNNNN.png images; the sample takes {cifar_per_class}"
            )
        for _, file_name in indexed[:cifar_per_class]:
            files[f"{cifar}/{name}/{file_name}"] = _read(os.path.join(folder, file_name))
    for file_name in WEIGHTS_FILES:
        files[f"{WEIGHTS_FOLDER}/{file_name}"] = _read(os.path.join(source, "weights", file_name))
    return files


def manifest_text(files: dict[str, bytes]) -> str:
    """The manifest of `files`: path, sha256 and size of each, sorted by path."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(MANIFEST_COLUMNS)
    for path in sorted(files):
        writer.writerow((path, hashlib.sha256(files[path]).hexdigest(), len(files[path])))
    return text.getvalue()


def write_sample(files: dict[str, bytes], root: str = ROOT) -> None:
    """Writes `files` under `root`, removes data files not among them, then the manifest.

    The manifest goes last, so a build cut short leaves files that fail the sample's check.
    """
    for relative, payload in files.items():
        atomic.atomic_write_bytes(os.path.join(root, relative), payload)
    for folder in DATA_FOLDERS:
        for directory, _, names in os.walk(os.path.join(root, folder), topdown=False):
            for name in names:
                path = os.path.join(directory, name)
                if os.path.relpath(path, root).replace(os.sep, "/") not in files:
                    os.remove(path)
            if not os.listdir(directory):
                os.rmdir(directory)
    atomic.atomic_write_text(os.path.join(root, MANIFEST), manifest_text(files))


def build(source: str, root: str = ROOT, cifar_per_class: int = CIFAR_PER_CLASS) -> dict[str, bytes]:
    """Builds the sample from `source` into `root`; returns what it wrote (manifest aside)."""
    files = sample_files(source, cifar_per_class)
    write_sample(files, root)
    return files

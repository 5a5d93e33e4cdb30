"""Decoded images cached on disk: each split decoded and resized once, then read a batch at a time.

An entry is a folder named by a hash of everything that determines its images (the source
and its files' sizes and modification times, or the tensorflow-datasets version and split,
the image size, this module's format): a changed folder or option is a new entry. It holds
`images.u8`, the uint8 images row after row, and `labels.npy`. One process builds an entry
under a file lock, in a temporary folder renamed into place, so xdist workers share it.

Memory stays flat in the dataset's size because batches are read with `pread` into fresh
arrays: pages read that way stay in the kernel's page cache. Pages of a memory-mapped file
count towards the process's resident set once touched (measured: one pass over a 600 MB map
raised ru_maxrss by 600 MB; the same pass with pread by 5 MB), so the map that `load_or_build`
returns is for the few rows a caller indexes, and `take` reads around it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping

import filelock
import numpy as np

from lab.errors import LabInputError

# Part of every key: raise it when the stored layout or the decoding and resizing change.
FORMAT_VERSION = 1
CACHE_DIR_VARIABLE = "LAB_CACHE_DIR"
IMAGES_FILE = "images.u8"
LABELS_FILE = "labels.npy"
DESCRIPTION_FILE = "description.json"


def default_directory() -> str:
    """`$LAB_CACHE_DIR`, else `transfer-lab` in the user's cache folder (`$XDG_CACHE_HOME` or ~/.cache)."""
    chosen = os.environ.get(CACHE_DIR_VARIABLE)
    if chosen:
        return chosen
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "transfer-lab")


def file_fingerprint(paths: Iterable[str]) -> list[tuple[str, int, int]]:
    """(absolute path, size, modification time in ns) of every file, in order: the key of a folder's split."""
    fingerprint = []
    for path in paths:
        status = os.stat(path)
        fingerprint.append((os.path.abspath(path), status.st_size, status.st_mtime_ns))
    return fingerprint


def load_or_build(
    description: Mapping,
    image_size: int,
    build: Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]],
    directory: str | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The cached images and labels that `description` names, built once from `build()` if missing.

    Args:
        description: JSON-serialisable; everything the images depend on besides `image_size`.
        image_size: side of the square uint8 RGB images.
        build: yields batches of (uint8 images of shape (n, image_size, image_size, 3), labels).
        directory: the cache folder; None: `default_directory()`.

    Returns:
        The images, memory-mapped read-only (read batches with `take`), and the int64 labels.

    Raises:
        LabInputError: the cache folder, or an entry in it, is not this user's to write or read.
    """
    root = os.path.join(directory or default_directory(), "images")
    full_description = {"format": FORMAT_VERSION, "image_size": image_size, **description}
    key = hashlib.sha256(json.dumps(full_description, sort_keys=True).encode()).hexdigest()[:32]
    entry = os.path.join(root, key)
    try:
        os.makedirs(root, exist_ok=True)
        # The lock file is the first thing written in `root`: once it is made, the folder is writable.
        lock = filelock.FileLock(entry + ".lock")
        lock.acquire()
    except PermissionError as error:
        raise LabInputError(
            f"cannot write the image cache in {root}: permission denied on {error.filename}: set "
            f"{CACHE_DIR_VARIABLE} to a folder this user can write, or fix the folder's permissions"
        ) from None
    try:
        if not os.path.isdir(entry):
            _build(entry, full_description, image_size, build())
    finally:
        lock.release()
    try:
        return _open(entry, image_size)
    except PermissionError as error:
        raise LabInputError(
            f"cannot read image cache entry {entry}: permission denied on {error.filename}: set "
            f"{CACHE_DIR_VARIABLE} to a folder of this user's own, or delete that entry"
        ) from None


def take(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`images[indices]` as a new array; a cached split's rows are read from its file, not its map.

    Any other array (in memory, or a map of part of a file) is indexed as usual.
    """
    indices = np.asarray(indices, np.int64)
    if not _maps_a_whole_file(images):
        return images[indices]
    if indices.size and (indices.min() < 0 or indices.max() >= len(images)):
        raise IndexError(f"indices outside 0..{len(images) - 1}")
    rows = np.empty((len(indices), *images.shape[1:]), images.dtype)
    row_bytes = rows[0].nbytes if len(rows) else 0
    with open(images.filename, "rb", buffering=0) as stream:
        for position, index in enumerate(indices):
            read = os.preadv(stream.fileno(), [rows[position]], images.offset + int(index) * row_bytes)
            if read != row_bytes:
                raise OSError(f"{images.filename} ended early: delete it and its folder to rebuild the cache")
    return rows


def _maps_a_whole_file(images: np.ndarray) -> bool:
    """True for a contiguous map of exactly a file's data, such as `load_or_build` returns.

    Only such a map starts at its `offset` in the file (a slice keeps its parent's offset).
    """
    return (
        isinstance(images, np.memmap)
        and images.filename is not None
        and images.flags.c_contiguous
        and images.offset + images.nbytes == os.path.getsize(images.filename)
    )


def _build(
    entry: str, description: Mapping, image_size: int, batches: Iterable[tuple[np.ndarray, np.ndarray]]
) -> None:
    """Writes the entry into a temporary folder beside it, then renames that into place."""
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(entry)}.", suffix=".partial", dir=os.path.dirname(entry))
    try:
        labels = []
        with open(os.path.join(partial, IMAGES_FILE), "wb") as stream:
            for images, batch_labels in batches:
                if images.shape[1:] != (image_size, image_size, 3) or images.dtype != np.uint8:
                    raise ValueError(
                        f"expected uint8 images of {image_size}x{image_size}x3, got {images.dtype} {images.shape}"
                    )
                stream.write(np.ascontiguousarray(images).data)
                labels.append(np.asarray(batch_labels, np.int64))
        np.save(os.path.join(partial, LABELS_FILE), np.concatenate(labels) if labels else np.zeros((0,), np.int64))
        with open(os.path.join(partial, DESCRIPTION_FILE), "w", encoding="utf-8") as stream:
            json.dump(description, stream, indent=1)
        os.rename(partial, entry)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _open(entry: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    labels = np.load(os.path.join(entry, LABELS_FILE))
    path = os.path.join(entry, IMAGES_FILE)
    shape = (len(labels), image_size, image_size, 3)
    if os.path.getsize(path) != int(np.prod(shape)):
        raise LabInputError(
            f"image cache entry {entry} holds {os.path.getsize(path)} bytes where {shape} needs "
            f"{int(np.prod(shape))}: delete that folder and it is rebuilt"
        )
    if not len(labels):
        # An empty file cannot be mapped.
        return np.zeros(shape, np.uint8), labels
    return np.memmap(path, np.uint8, "r", shape=shape), labels

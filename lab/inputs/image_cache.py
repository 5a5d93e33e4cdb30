"""Decoded images cached on disk: each split decoded and resized once, then read a batch at a time.

An entry is a folder named by a hash of everything that determines its images (the source
and its files' identities, or the tensorflow-datasets version and split, the image size, this
module's format): a changed folder or option is a new entry. A file's identity is what git's
index keys a file on, its size, modification and change times in ns, inode and device, because
a rewrite that keeps the size and modification time (`cp -p`, `rsync -a`, `tar x`) still moves
the change time, and stat costs a tenth of a second per 20,000 files where hashing their bytes
costs one to several seconds. An entry holds `images.u8`, the uint8 images row after row,
`labels.npy`, and the SHA-256 of both, checked once per process before the entry is read. One
process builds an entry under a file lock, in a temporary folder renamed into place, so xdist
workers share it.

The cache is bounded (`set_size_limit`, `--image-cache-limit`): after every load, the least
recently used entries are deleted until the rest fit, with the temporary folders of builds that
were killed. A process holds a shared `flock` on `<entry>.use` for as long as it may read an
entry, and deletion takes that lock and the build lock without waiting, so an entry that any
process is building or reading is never deleted under it; the entry just loaded is kept even
where it alone is over the limit. `python -m lab.inputs.image_cache` lists or clears the cache.

Memory stays flat in the dataset's size because batches are read with `pread` into fresh
arrays: pages read that way stay in the kernel's page cache. Pages of a memory-mapped file
count towards the process's resident set once touched (measured: one pass over a 600 MB map
raised ru_maxrss by 600 MB; the same pass with pread by 5 MB), so the map that `load_or_build`
returns is for the few rows a caller indexes, and `take` reads around it.
"""

from __future__ import annotations

import argparse
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping

import filelock
import numpy as np

from lab.errors import LabInputError
from lab.runtime.atomic import file_digest

# Part of every key: raise it when the stored layout or the decoding and resizing change.
FORMAT_VERSION = 2
CACHE_DIR_VARIABLE = "LAB_CACHE_DIR"
IMAGES_FILE = "images.u8"
LABELS_FILE = "labels.npy"
CHECKSUMS_FILE = "checksums.json"
DESCRIPTION_FILE = "description.json"
# The bound of the cache's size when none is set: a full tf_flowers at 224 px takes 0.55 GiB.
DEFAULT_SIZE_LIMIT = 10 * 2**30
# An entry's folder: the first 32 hex digits of its key's SHA-256.
_ENTRY_NAME = re.compile(r"[0-9a-f]{32}")
# The temporary folders `_build` and `_delete` make: `.<entry>.<random>.partial`.
_PARTIAL_NAME = re.compile(r"\.([0-9a-f]{32})\..+\.partial")
# `tf.numpy_function` hands TensorFlow an array's memory without a copy only where it starts on
# Eigen's widest alignment; numpy's 16-byte-aligned arrays were copied, which cost more than
# reading the rows (a 224 px batch: 14 ms of copying).
_ALIGNMENT = 64

# The identities of each entry's files (its checksums file's too) when this process last found
# them matching their checksums: an entry is hashed again only when one of them has changed since.
_checked: dict[str, list[tuple[int, ...]]] = {}
# Entry -> the descriptor of its `.use` file, shared-locked while this process may read the entry.
_held: dict[str, int] = {}
_size_limit = DEFAULT_SIZE_LIMIT


def set_size_limit(limit_bytes: int) -> None:
    """Bounds the cache of this process's later loads to `limit_bytes` (`--image-cache-limit`)."""
    global _size_limit
    _size_limit = limit_bytes


def default_directory() -> str:
    """`$LAB_CACHE_DIR`, else `transfer-lab` in the user's cache folder (`$XDG_CACHE_HOME` or ~/.cache)."""
    chosen = os.environ.get(CACHE_DIR_VARIABLE)
    if chosen:
        # Set in quotes, `~` reaches here unexpanded, and would make a `~` folder where the session runs.
        return os.path.expanduser(chosen)
    cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(cache_home, "transfer-lab")


def _root(directory: str | None) -> str:
    """The folder of the entries of the cache in `directory` (None: `default_directory()`)."""
    return os.path.join(directory or default_directory(), "images")


def file_fingerprint(paths: Iterable[str]) -> list[tuple[str | int, ...]]:
    """(absolute path, *its identity) of every file, in order: the key of a folder's split."""
    return [(os.path.abspath(path), *_identity(path)) for path in paths]


def _identity(path: str) -> tuple[int, ...]:
    """What changes whenever a file's content may have: size, modification and change times in ns, inode, device."""
    status = os.stat(path)
    return status.st_size, status.st_mtime_ns, status.st_ctime_ns, status.st_ino, status.st_dev


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
        LabInputError: the cache folder is not a folder this user can write, or an entry in it
            is not this user's to read or is damaged.
    """
    root = _root(directory)
    full_description = {"format": FORMAT_VERSION, "image_size": image_size, **description}
    key = hashlib.sha256(json.dumps(full_description, sort_keys=True).encode()).hexdigest()[:32]
    entry = os.path.join(root, key)
    lock = _locked(root, entry)
    try:
        if not os.path.isdir(entry):
            _build(entry, full_description, image_size, build())
        # Held before the build lock is let go: no sweep can find the entry unheld in between.
        _hold(entry)
    finally:
        lock.release()
    evict(_size_limit, directory)
    try:
        return _open(entry, image_size)
    except PermissionError as error:
        raise LabInputError(
            f"cannot read image cache entry {entry}: permission denied on {error.filename}: set "
            f"{CACHE_DIR_VARIABLE} to a folder of this user's own, or delete that entry"
        ) from None


def _locked(root: str, entry: str) -> filelock.FileLock:
    """The build lock of `entry`, acquired, in `root` made if need be."""
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
    except (FileExistsError, NotADirectoryError):
        raise LabInputError(
            f"cannot make the image cache folder {root}: {_first_existing(root)} is a file, not a folder: "
            f"set {CACHE_DIR_VARIABLE} to a folder (or a path where one can be made), or move that file"
        ) from None
    return lock


def _first_existing(path: str) -> str:
    """`path`, or the nearest of its parents that exists."""
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _hold(entry: str) -> None:
    """Marks `entry` in use by this process (its `.use` file shared-locked) and used now."""
    if entry not in _held:
        descriptor = _use_file(entry)
        fcntl.flock(descriptor, fcntl.LOCK_SH)
        _held[entry] = descriptor
    try:
        os.utime(entry)
    except PermissionError:
        # Another user's entry: it is read all the same, and ages as of its last use by its owner.
        pass


def _use_file(entry: str) -> int:
    """A descriptor of `entry`'s `.use` file, made if need be: readers share-lock it, deletion locks it alone."""
    return os.open(entry + ".use", os.O_RDONLY | os.O_CREAT, 0o644)


@dataclasses.dataclass(frozen=True)
class Entry:
    """One entry of the cache as `entries` finds it.

    Attributes:
        path: its folder.
        size_bytes: the bytes of its files.
        last_used: when a load last used it (its folder's modification time, seconds since the epoch).
        description: what its images are (`load_or_build`'s description); None where unreadable.
    """

    path: str
    size_bytes: int
    last_used: float
    description: dict | None


def entries(directory: str | None = None) -> list[Entry]:
    """The cache's entries, least recently used first."""
    root = _root(directory)
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = os.path.join(root, name)
        if not (_ENTRY_NAME.fullmatch(name) and os.path.isdir(path)):
            continue
        try:
            size = sum(item.stat().st_size for item in os.scandir(path) if item.is_file())
            last_used = os.stat(path).st_mtime
        except FileNotFoundError:
            # Deleted by another process's sweep since the listing.
            continue
        found.append(Entry(path, size, last_used, _description(path)))
    return sorted(found, key=lambda entry: entry.last_used)


def _description(entry: str) -> dict | None:
    try:
        with open(os.path.join(entry, DESCRIPTION_FILE), encoding="utf-8") as stream:
            described = json.load(stream)
    except (OSError, ValueError):
        return None
    return described if isinstance(described, dict) else None


def evict(limit_bytes: int, directory: str | None = None) -> list[Entry]:
    """Deletes the least recently used entries until the rest take at most `limit_bytes`, and
    the temporary folders of killed builds; entries a process is building or reading stay.

    Returns:
        The entries deleted.
    """
    root = _root(directory)
    if not os.path.isdir(root):
        return []
    deleted = []
    # One sweep at a time: two would count the same entries and delete more than needed.
    with filelock.FileLock(os.path.join(root, "sweep.lock")):
        for name in os.listdir(root):
            partial = _PARTIAL_NAME.fullmatch(name)
            if partial:
                _delete(os.path.join(root, partial.group(1)), os.path.join(root, name))
        found = entries(directory)
        total = sum(entry.size_bytes for entry in found)
        for entry in found:
            if total <= limit_bytes:
                break
            if _delete(entry.path, entry.path):
                total -= entry.size_bytes
                deleted.append(entry)
    return deleted


def _delete(entry: str, folder: str) -> bool:
    """Deletes `folder` (`entry`'s own, or one of its builds' temporary folders) unless a
    process holds `entry`'s build or use lock; True if deleted."""
    build_lock = filelock.FileLock(entry + ".lock", timeout=0)
    try:
        build_lock.acquire()
    except filelock.Timeout:
        return False
    try:
        if folder == entry:
            descriptor = _use_file(entry)
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(descriptor)
                return False
            try:
                # Renamed first: a sweep killed halfway leaves a temporary folder, never a half entry.
                doomed = f"{os.path.dirname(entry)}/.{os.path.basename(entry)}.{time.time_ns()}.partial"
                os.rename(entry, doomed)
            finally:
                os.close(descriptor)
            folder = doomed
        shutil.rmtree(folder, ignore_errors=True)
        return True
    except (FileNotFoundError, PermissionError):
        return False
    finally:
        build_lock.release()


def take(images: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """`images[indices]` as a new array aligned for TensorFlow; a cached split's rows are read from its file.

    A run of consecutive indices (all of a batch in stored order) is read in one call. Any
    other array (in memory, or a map of part of a file) is gathered in one `np.take`.

    Raises:
        IndexError: an index outside the rows of `images`.
    """
    indices = np.asarray(indices, np.int64)
    if indices.size and (indices.min() < 0 or indices.max() >= len(images)):
        raise IndexError(f"indices outside 0..{len(images) - 1}")
    rows = aligned_empty((len(indices), *images.shape[1:]), images.dtype)
    if _maps_a_whole_file(images):
        _read_rows(images, indices, rows)
    else:
        # The bounds are checked: "clip" writes into `out` directly, where "raise" goes through a copy.
        np.take(images, indices, axis=0, out=rows, mode="clip")
    return rows


def aligned_empty(shape: tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """An uninitialised C-contiguous array whose data starts on a multiple of `_ALIGNMENT` bytes."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + _ALIGNMENT, np.uint8)
    start = -raw.ctypes.data % _ALIGNMENT
    return raw[start : start + size].view(dtype).reshape(shape)


def _read_rows(images: np.memmap, indices: np.ndarray, rows: np.ndarray) -> None:
    """Reads the rows of a cached split's file that `indices` names into `rows`, one run of them per read."""
    row_bytes = images.strides[0]
    with open(images.filename, "rb", buffering=0) as stream:
        for position, first, count in _runs(indices):
            _read_into(stream.fileno(), rows[position : position + count], images.offset + first * row_bytes, images)


def _runs(indices: np.ndarray) -> Iterable[tuple[int, int, int]]:
    """(position, first index, length) of each run of consecutive indices, in order."""
    # -2 is no index's predecessor, so the first index always starts a run.
    starts = np.flatnonzero(np.diff(indices, prepend=-2) != 1)
    lengths = np.diff(starts, append=len(indices))
    return zip(starts.tolist(), indices[starts].tolist(), lengths.tolist(), strict=True)


def _read_into(descriptor: int, rows: np.ndarray, offset: int, images: np.memmap) -> None:
    """Fills `rows` from the file of `images` at `offset`, in as many reads as it takes (one stops at 2 GiB)."""
    buffer = memoryview(rows).cast("B")
    done = 0
    while done < len(buffer):
        read = os.preadv(descriptor, [buffer[done:]], offset + done)
        if not read:
            raise _damaged(os.path.dirname(images.filename), f"{IMAGES_FILE} ended early")
        done += read


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
    """Writes the entry and its checksums into a temporary folder beside it, then renames that into place."""
    partial = tempfile.mkdtemp(prefix=f".{os.path.basename(entry)}.", suffix=".partial", dir=os.path.dirname(entry))
    try:
        labels = []
        images_digest = hashlib.sha256()
        with open(os.path.join(partial, IMAGES_FILE), "wb") as stream:
            for images, batch_labels in batches:
                if images.shape[1:] != (image_size, image_size, 3) or images.dtype != np.uint8:
                    raise ValueError(
                        f"expected uint8 images of {image_size}x{image_size}x3, got {images.dtype} {images.shape}"
                    )
                if len(images) != len(batch_labels):
                    raise ValueError(f"a batch of {len(images)} images came with {len(batch_labels)} labels")
                rows = np.ascontiguousarray(images).data
                stream.write(rows)
                images_digest.update(rows)
                labels.append(np.asarray(batch_labels, np.int64))
        np.save(os.path.join(partial, LABELS_FILE), np.concatenate(labels) if labels else np.zeros((0,), np.int64))
        checksums = {
            IMAGES_FILE: images_digest.hexdigest(), LABELS_FILE: file_digest(os.path.join(partial, LABELS_FILE))
        }
        with open(os.path.join(partial, CHECKSUMS_FILE), "w", encoding="utf-8") as stream:
            json.dump(checksums, stream, indent=1)
        with open(os.path.join(partial, DESCRIPTION_FILE), "w", encoding="utf-8") as stream:
            json.dump(description, stream, indent=1)
        os.rename(partial, entry)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _open(entry: str, image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """The entry's images, mapped read-only, and labels, once its files are found to be as built."""
    _check(entry)
    labels = np.load(os.path.join(entry, LABELS_FILE))
    path = os.path.join(entry, IMAGES_FILE)
    shape = (len(labels), image_size, image_size, 3)
    size, needed = os.path.getsize(path), int(np.prod(shape))
    if size != needed:
        raise _damaged(entry, f"{IMAGES_FILE} holds {size} bytes where {shape} needs {needed}")
    if not len(labels):
        # An empty file cannot be mapped.
        return np.zeros(shape, np.uint8), labels
    return np.memmap(path, np.uint8, "r", shape=shape), labels


def _check(entry: str) -> None:
    """Raises unless the entry's files match the checksums written with them; hashes them once per change."""
    try:
        identities = [_identity(os.path.join(entry, name)) for name in (IMAGES_FILE, LABELS_FILE, CHECKSUMS_FILE)]
    except FileNotFoundError as error:
        raise _damaged(entry, f"{os.path.basename(error.filename)} is missing") from None
    if _checked.get(entry) == identities:
        return
    try:
        found = {name: file_digest(os.path.join(entry, name)) for name in (IMAGES_FILE, LABELS_FILE)}
    except IsADirectoryError as error:
        raise _damaged(entry, f"{os.path.basename(error.filename)} is a folder") from None
    if _stored_checksums(entry) != found:
        raise _damaged(entry, f"its files do not match the checksums in its {CHECKSUMS_FILE}")
    _checked[entry] = identities


def _stored_checksums(entry: str) -> object:
    """What the entry's checksums file holds; None where it is not JSON, or not a file."""
    try:
        with open(os.path.join(entry, CHECKSUMS_FILE), encoding="utf-8") as stream:
            return json.load(stream)
    except (ValueError, IsADirectoryError):
        return None


def _damaged(entry: str, problem: str) -> LabInputError:
    """The error for an entry that is not as it was built: names the folder to delete."""
    return LabInputError(f"image cache entry {entry} is damaged ({problem}): delete that folder and it is rebuilt")


def main(argv: list[str] | None = None) -> None:
    """`python -m lab.inputs.image_cache {list,clear}`: what the image cache holds, or empty it."""
    parser = argparse.ArgumentParser(prog="python -m lab.inputs.image_cache", description=main.__doc__)
    parser.add_argument("command", choices=("list", "clear"),
                        help="list: every entry, least recently used first; clear: delete every entry not in use")
    parser.add_argument("--dir", default=None, metavar="PATH",
                        help=f"the cache folder (default: ${CACHE_DIR_VARIABLE}, else ~/.cache/transfer-lab)")
    arguments = parser.parse_args(argv)
    directory = arguments.dir or default_directory()
    if arguments.command == "list":
        found = entries(directory)
        for entry in found:
            used = time.strftime("%Y-%m-%d %H:%M", time.localtime(entry.last_used))
            print(f"{entry.path}  {entry.size_bytes / 2**20:9.1f} MiB  used {used}  {json.dumps(entry.description)}")
        print(f"{len(found)} entries, {sum(entry.size_bytes for entry in found) / 2**20:.1f} MiB, in {directory}")
        return
    deleted = evict(0, directory)
    kept = entries(directory)
    print(f"deleted {len(deleted)} entries ({sum(entry.size_bytes for entry in deleted) / 2**20:.1f} MiB) from "
          f"{directory}" + (f"; {len(kept)} in use by a running process stay" if kept else ""))


if __name__ == "__main__":
    main()

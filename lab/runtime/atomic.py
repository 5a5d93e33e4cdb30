"""Files written whole or not at all (a temporary file beside the target, then a rename), and
the digest that checks a file's bytes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable


def temporary_beside(path: str, suffix: str) -> str:
    """An empty file in the folder of `path` (created if need be), for a later rename."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    handle, temporary = tempfile.mkstemp(
        prefix=f".{os.path.basename(path)}.", suffix=f".partial{suffix}", dir=directory
    )
    os.close(handle)
    # mkstemp makes the file private; the final file gets the usual umask-based mode.
    os.chmod(temporary, usual_mode(0o666))
    return temporary


def usual_mode(mode: int) -> int:
    """`mode` less the process's umask: what open() (0o666) or mkdir() (0o777) would give.

    tempfile's files and folders are private (0600, 0700) whatever the umask, which a rename
    into place would keep.
    """
    umask = os.umask(0)
    os.umask(umask)
    return mode & ~umask


def atomic_write(path: str, write: Callable[[str], object], suffix: str = "") -> None:
    """Makes `path` by `write(temporary)` on a temporary file beside it, then a rename over it:
    readers see the old file or the whole new one. The temporary file goes on any failure.

    Args:
        path: the file to make.
        write: writes the whole file at the path it is given.
        suffix: the temporary file's ending, for a writer that goes by it (`.keras`).
    """
    temporary = temporary_beside(path, suffix)
    try:
        write(temporary)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.remove(temporary)
        raise


def atomic_write_bytes(path: str, payload: bytes) -> None:
    """Writes `payload` to a temporary file beside `path`, synced to disk, then renames it over `path`."""

    def write(temporary: str) -> None:
        with open(temporary, "wb") as stream:
            stream.write(payload)
            stream.flush()
            os.fsync(stream.fileno())

    atomic_write(path, write)


def atomic_write_text(path: str, text: str) -> None:
    """`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_digest(path: str) -> str:
    """The hex SHA-256 of a file's bytes, read a chunk at a time."""
    with open(path, "rb") as stream:
        return hashlib.file_digest(stream, "sha256").hexdigest()

"""lab/runtime/atomic.py: files made whole or not at all, and their digest."""

import hashlib
import os

import pytest

from lab.runtime import atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary_file(tmp_path):
    path = tmp_path / "model.keras"
    path.write_bytes(b"old")

    def half_written(temporary):
        assert temporary.endswith(".keras") and os.path.dirname(temporary) == str(tmp_path)
        with open(temporary, "wb") as stream:
            stream.write(b"ne")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic.atomic_write(str(path), half_written, ".keras")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.keras"]

    atomic.atomic_write_bytes(str(path), b"new")
    assert path.read_bytes() == b"new"
    assert os.listdir(tmp_path) == ["model.keras"]


def test_file_digest_is_the_sha256_of_the_bytes(tmp_path):
    path = tmp_path / "big.bin"
    payload = os.urandom(3 * 2**20 + 5)
    path.write_bytes(payload)
    assert atomic.file_digest(str(path)) == hashlib.sha256(payload).hexdigest()

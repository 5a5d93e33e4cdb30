"""The decoded-image cache: what keys an entry; what a damaged entry, a file for a folder, a killed build give."""

from __future__ import annotations

import os
import pathlib
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from PIL import Image

from lab.errors import LabInputError
from lab.inputs import data, image_cache

IMAGE_SIZE = 4
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load(directory, value: int = 7, count: int = 5):
    """The entry of `count` images of `value` in `directory`'s cache, built if missing."""
    batches = [(np.full((count, IMAGE_SIZE, IMAGE_SIZE, 3), value, np.uint8), np.arange(count))]
    return image_cache.load_or_build({"test": "entry", "count": count}, IMAGE_SIZE, lambda: batches, str(directory))


def _entry_of(images: np.ndarray) -> pathlib.Path:
    return pathlib.Path(images.filename).parent


def _rewrite_keeping_size_and_times(path: pathlib.Path, payload: bytes) -> None:
    """Overwrites a file as `cp -p` or `rsync -a` do: other bytes, the same size and modification time."""
    before = path.stat()
    assert len(payload) == before.st_size
    path.write_bytes(payload)
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))


def test_a_file_rewritten_with_its_size_and_modification_time_is_decoded_again(make_image_folder, tmp_path,
                                                                                monkeypatch):
    monkeypatch.setenv(image_cache.CACHE_DIR_VARIABLE, str(tmp_path / "cache"))
    folder = make_image_folder(suffix=".bmp")
    first = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)
    changed = pathlib.Path(folder.file_of(first.train_images[0]))
    # A BMP's size depends on its dimensions only: another colour takes exactly as many bytes.
    replacement = tmp_path / "replacement.bmp"
    Image.new("RGB", Image.open(changed).size, (250, 250, 250)).save(replacement)

    _rewrite_keeping_size_and_times(changed, replacement.read_bytes())
    again = data.load("tf_flowers", "folder", 8, None, None, data_dir=folder.data_dir)

    assert again.train_images[0].min() == 250


def test_an_entry_is_hashed_once_per_process_while_its_files_are_unchanged(tmp_path, monkeypatch):
    hashed = []
    digest = image_cache.file_digest
    monkeypatch.setattr(image_cache, "file_digest", lambda path: hashed.append(path) or digest(path))
    images, _ = _load(tmp_path)
    hashed.clear()

    for _ in range(3):
        _load(tmp_path)
    assert hashed == []

    # Rewritten in place, with its size and times kept: its change time still moves, by a
    # clock tick at least on kernels without fine-grained timestamps.
    time.sleep(0.02)
    _rewrite_keeping_size_and_times(pathlib.Path(images.filename), bytes(images.nbytes))
    with pytest.raises(LabInputError, match="do not match the checksums"):
        _load(tmp_path)
    assert len(hashed) == 2


def _overwritten_images(entry: pathlib.Path) -> None:
    path = entry / image_cache.IMAGES_FILE
    _rewrite_keeping_size_and_times(path, bytes(path.stat().st_size))


def _garbage_labels(entry: pathlib.Path) -> None:
    (entry / image_cache.LABELS_FILE).write_bytes(b"not an array")


def _empty_labels(entry: pathlib.Path) -> None:
    (entry / image_cache.LABELS_FILE).write_bytes(b"")


def _other_labels(entry: pathlib.Path) -> None:
    np.save(entry / image_cache.LABELS_FILE, np.arange(2))


def _missing_images(entry: pathlib.Path) -> None:
    (entry / image_cache.IMAGES_FILE).unlink()


def _truncated_images(entry: pathlib.Path) -> None:
    os.truncate(entry / image_cache.IMAGES_FILE, 10)


def _missing_checksums(entry: pathlib.Path) -> None:
    (entry / image_cache.CHECKSUMS_FILE).unlink()


@pytest.mark.parametrize(
    "damage",
    [_overwritten_images, _garbage_labels, _empty_labels, _other_labels, _missing_images, _truncated_images,
     _missing_checksums],
)
def test_a_damaged_entry_names_the_folder_to_delete(damage, tmp_path, monkeypatch):
    entry = _entry_of(_load(tmp_path)[0])
    damage(entry)
    # As the next process finds it: this one need not see a change within a clock tick of its check.
    monkeypatch.setattr(image_cache, "_checked", {})

    with pytest.raises(LabInputError) as raised:
        _load(tmp_path)

    assert re.fullmatch(rf"image cache entry {re.escape(str(entry))} is damaged \(.+\): delete that folder and it is "
                        r"rebuilt", str(raised.value))
    for path in entry.iterdir():
        path.unlink()
    entry.rmdir()
    images, labels = _load(tmp_path, value=9)
    assert images.min() == 9 and labels.tolist() == list(range(5))


@pytest.mark.parametrize("file_at", [".", "images"])
def test_a_cache_folder_that_is_a_file_names_the_variable(file_at, tmp_path, monkeypatch):
    cache_dir = tmp_path / "cache"
    cache_dir.mkdir()
    in_the_way = (cache_dir / file_at).resolve()
    if in_the_way == cache_dir:
        cache_dir.rmdir()
    in_the_way.write_text("a file\n")
    monkeypatch.setenv(image_cache.CACHE_DIR_VARIABLE, str(cache_dir))

    with pytest.raises(LabInputError) as raised:
        image_cache.load_or_build({"test": "file"}, IMAGE_SIZE, list)
    message = str(raised.value)

    assert f"{in_the_way} is a file, not a folder" in message
    assert f"set {image_cache.CACHE_DIR_VARIABLE} to a folder" in message


KILLED_BUILD = """
    import os, signal, sys
    import numpy as np
    from lab.inputs import image_cache

    def batches():
        yield np.zeros((2, 4, 4, 3), np.uint8), np.arange(2)
        os.kill(os.getpid(), signal.SIGKILL)

    image_cache.load_or_build({"test": "killed"}, 4, batches, sys.argv[1])
"""


def test_the_next_load_deletes_what_a_killed_build_left(run_python, tmp_path):
    completed, _ = run_python("-c", textwrap.dedent(KILLED_BUILD), str(tmp_path))
    assert completed.returncode == -9, completed.stderr[-3000:]
    assert _partials(tmp_path)

    # Another entry's load: the killed build's entry may never be loaded again.
    images, labels = _load(tmp_path, value=1, count=3)

    assert images.min() == 1 and labels.tolist() == [0, 1, 2]
    assert _partials(tmp_path) == []


def _partials(directory: pathlib.Path) -> list[str]:
    return [path.name for path in (directory / "images").iterdir() if path.name.endswith(".partial")]


# Builds entries of 1, 2 and 3 images (last used in that order, a minute apart) and exits, so
# that no process holds them.
AGED_ENTRIES = """
    import os, sys, time
    import numpy as np
    from lab.inputs import image_cache

    for count in (1, 2, 3):
        batches = [(np.full((count, 4, 4, 3), count, np.uint8), np.arange(count))]
        images, _ = image_cache.load_or_build({"test": "entry", "count": count}, 4, lambda: batches, sys.argv[1])
        used = time.time() - 60 * (4 - count)
        os.utime(os.path.dirname(images.filename), (used, used))
"""


def _aged_entries(run_python, directory: pathlib.Path) -> dict[int, image_cache.Entry]:
    """Image count -> entry, of three entries no process holds, least recently used first."""
    completed, _ = run_python("-c", textwrap.dedent(AGED_ENTRIES), str(directory))
    assert completed.returncode == 0, completed.stderr[-3000:]
    found = image_cache.entries(str(directory))
    return {entry.description["count"]: entry for entry in found}


def test_the_least_recently_used_entries_go_first_past_the_limit(run_python, tmp_path):
    aged = _aged_entries(run_python, tmp_path)
    assert list(aged) == [1, 2, 3]

    deleted = image_cache.evict(aged[2].size_bytes + aged[3].size_bytes, str(tmp_path))

    assert [entry.description["count"] for entry in deleted] == [1]
    assert [entry.description["count"] for entry in image_cache.entries(str(tmp_path))] == [2, 3]


def test_a_load_evicts_others_and_keeps_its_entry_even_over_the_limit(run_python, tmp_path, monkeypatch):
    _aged_entries(run_python, tmp_path)
    monkeypatch.setattr(image_cache, "_size_limit", 1)

    images, _ = _load(tmp_path, value=4, count=4)

    assert images.min() == 4
    assert [entry.description["count"] for entry in image_cache.entries(str(tmp_path))] == [4]


def test_a_load_makes_an_entry_the_most_recently_used(run_python, tmp_path):
    aged = _aged_entries(run_python, tmp_path)

    _load(tmp_path, value=1, count=1)

    assert [entry.description["count"] for entry in image_cache.entries(str(tmp_path))] == [2, 3, 1]
    assert aged[1].path == image_cache.entries(str(tmp_path))[-1].path


HOLDER = """
    import sys
    import numpy as np
    from lab.inputs import image_cache

    image_cache.load_or_build({"test": "held"}, 4, lambda: [(np.zeros((2, 4, 4, 3), np.uint8), np.arange(2))],
                              sys.argv[1])
    print("holding", flush=True)
    sys.stdin.read()
"""


def test_an_entry_another_process_reads_is_never_evicted(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(HOLDER), str(tmp_path)], cwd=REPO_ROOT,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    try:
        assert holder.stdout.readline() == "holding\n"

        assert image_cache.evict(0, str(tmp_path)) == []
        assert len(image_cache.entries(str(tmp_path))) == 1
    finally:
        holder.communicate("", timeout=60)

    assert len(image_cache.evict(0, str(tmp_path))) == 1
    assert image_cache.entries(str(tmp_path)) == []


def test_clear_deletes_every_entry_and_says_what_it_freed(run_python, tmp_path):
    aged = _aged_entries(run_python, tmp_path)

    listed, _ = run_python("-m", "lab.inputs.image_cache", "list", "--dir", str(tmp_path))
    cleared, _ = run_python("-m", "lab.inputs.image_cache", "clear", "--dir", str(tmp_path))

    assert listed.returncode == 0 and all(entry.path in listed.stdout for entry in aged.values())
    assert "3 entries" in listed.stdout
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout.startswith(f"deleted 3 entries ({sum(e.size_bytes for e in aged.values()) / 2**20:.1f} MiB)")
    assert image_cache.entries(str(tmp_path)) == []


def test_a_batch_whose_labels_do_not_match_its_images_is_refused(tmp_path):
    batches = [(np.zeros((3, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8), np.arange(2))]

    with pytest.raises(ValueError, match="3 images came with 2 labels"):
        image_cache.load_or_build({"test": "mismatch"}, IMAGE_SIZE, lambda: batches, str(tmp_path))

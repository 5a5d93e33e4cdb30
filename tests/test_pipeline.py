"""The streamed input pipeline: how `image_cache.take` reads rows, and its throughput against arrays in the graph."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow as tf

from lab.errors import LabInputError
from lab.inputs import data, image_cache

# An epoch of 2,000 images at 224 px is 300 MB, built once in memory and once on disk.
RUN_SLOW = os.environ.get("LAB_SLOW") == "1"
EPOCH_IMAGES = 2000
BATCH_SIZE = 32


def _cached_split(directory, count: int, image_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A cache entry of random images: (the map `load_or_build` returns, the same images in memory, labels)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, image_size, image_size, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, count)
    cached, _ = image_cache.load_or_build(
        {"test": "pipeline", "count": count}, image_size, lambda: [(images, labels)], str(directory)
    )
    return cached, images, labels


def _from_tensor_slices(images: np.ndarray, labels: np.ndarray, seed: int | None) -> tf.data.Dataset:
    """Bare Keras's pipeline: the arrays copied into the graph, shuffled whole, scaled a batch at a time."""
    dataset = tf.data.Dataset.from_tensor_slices((images, labels))
    if seed is not None:
        dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
    return dataset.batch(BATCH_SIZE).map(data.scale_to_unit, num_parallel_calls=tf.data.AUTOTUNE).prefetch(
        tf.data.AUTOTUNE
    )


@pytest.fixture
def counted_reads(monkeypatch):
    """The byte counts of every `os.preadv` that `image_cache` makes, each capped at `counted_reads.cap` bytes."""

    class Reads(list):
        cap: int | None = None

    reads = Reads()
    real_preadv = os.preadv

    def preadv(descriptor, buffers, offset):
        (buffer,) = buffers
        wanted = memoryview(buffer)[: reads.cap] if reads.cap is not None else buffer
        read = real_preadv(descriptor, [wanted], offset)
        reads.append(read)
        return read

    monkeypatch.setattr(image_cache.os, "preadv", preadv)
    return reads


def test_take_reads_each_run_of_consecutive_rows_in_one_call(tmp_path, counted_reads):
    cached, images, _ = _cached_split(tmp_path, 12, 4)
    row_bytes = images[0].nbytes

    in_order = image_cache.take(cached, np.arange(2, 10))
    assert counted_reads == [8 * row_bytes]
    counted_reads.clear()
    shuffled = image_cache.take(cached, np.array([3, 4, 5, 9, 1, 2, 2]))

    np.testing.assert_array_equal(in_order, images[2:10])
    np.testing.assert_array_equal(shuffled, images[[3, 4, 5, 9, 1, 2, 2]])
    assert counted_reads == [3 * row_bytes, row_bytes, 2 * row_bytes, row_bytes]


def test_take_reads_on_after_a_short_read_and_names_a_file_that_ends(tmp_path, counted_reads):
    cached, images, _ = _cached_split(tmp_path, 6, 4)
    # The kernel returns at most 2 GiB per read; a cap of 10 bytes stands in for that.
    counted_reads.cap = 10

    np.testing.assert_array_equal(image_cache.take(cached, np.arange(6)), images)
    assert len(counted_reads) == -(-images.nbytes // 10)
    counted_reads.cap = 0
    with pytest.raises(LabInputError, match="ended early"):
        image_cache.take(cached, np.array([1]))


@pytest.mark.parametrize("where", ["cached", "in_memory", "float32"])
def test_take_gives_rows_tensorflow_can_take_without_a_copy(where, tmp_path):
    cached, images, _ = _cached_split(tmp_path, 9, 5)
    array = {"cached": cached, "in_memory": images, "float32": images.astype(np.float32)}[where]

    rows = image_cache.take(array, np.array([8, 0, 3]))

    assert rows.ctypes.data % 64 == 0 and rows.flags.c_contiguous and not isinstance(rows, np.memmap)
    np.testing.assert_array_equal(rows, array[[8, 0, 3]])
    with pytest.raises(IndexError):
        image_cache.take(array, np.array([-1]))


def test_scaled_batches_are_scale_to_unit_bit_for_bit():
    every_value = np.arange(256, dtype=np.uint8).reshape(4, 4, 4, 4)[..., :3].copy()
    labels = np.arange(4)

    (streamed,) = [images for images, _ in data.batched_pairs(every_value, labels, BATCH_SIZE, None, to_unit=True)]
    (expected,) = [images for images, _ in _from_tensor_slices(every_value, labels, None)]

    assert streamed.dtype == tf.float32
    np.testing.assert_array_equal(streamed.numpy(), expected.numpy())


def test_batches_keep_the_shuffles_order_when_options_allow_any(tmp_path):
    cached, images, labels = _cached_split(tmp_path, 200, 4)
    options = tf.data.Options()
    options.deterministic = False

    streamed = data.batched_pairs(cached, labels, BATCH_SIZE, seed=5, to_unit=True).with_options(options)

    for (batch, batch_labels), (expected, expected_labels) in zip(
        streamed, _from_tensor_slices(images, labels, 5), strict=True
    ):
        np.testing.assert_array_equal(batch.numpy(), expected.numpy())
        np.testing.assert_array_equal(batch_labels.numpy(), expected_labels.numpy())


@pytest.fixture(scope="module")
def epoch_splits(tmp_path_factory):
    """`_cached_split` of `EPOCH_IMAGES` images at each size asked for, built once."""
    splits = {}

    def split(image_size: int):
        if image_size not in splits:
            splits[image_size] = _cached_split(tmp_path_factory.mktemp(f"epoch{image_size}"), EPOCH_IMAGES, image_size)
        return splits[image_size]

    return split


@pytest.mark.slow
@pytest.mark.skipif(not RUN_SLOW, reason="2,000 images at 96 and 224 px, seven epochs each way: set LAB_SLOW=1")
@pytest.mark.parametrize("pipeline", ["streamed", "from_tensor_slices"])
@pytest.mark.parametrize("image_size", [96, 224])
def test_images_per_second(image_size, pipeline, epoch_splits, benchmark):
    """A shuffled epoch streamed from the cache against bare Keras's pipeline (recorded, not asserted)."""
    cached, images, labels = epoch_splits(image_size)
    if pipeline == "streamed":
        batches = data.batched_pairs(cached, labels, BATCH_SIZE, seed=0, to_unit=True)
    else:
        batches = _from_tensor_slices(images, labels, seed=0)

    def epoch() -> int:
        return sum(int(batch_labels.shape[0]) for _, batch_labels in batches)

    assert benchmark.pedantic(epoch, rounds=7, warmup_rounds=1) == EPOCH_IMAGES
    benchmark.extra_info["images_per_second"] = round(EPOCH_IMAGES / benchmark.stats.stats.median)


def test_buffers_are_reused_only_once_no_view_of_them_is_left():
    buffers = data._ReusedBuffers()
    first = buffers.empty((2, 3), np.float32)
    addresses = {first.ctypes.data}
    kept = first[1:][:, ::2]
    del first

    second = buffers.empty((2, 3), np.float32)
    assert second.ctypes.data not in addresses
    addresses.add(second.ctypes.data)
    del kept, second
    again = [buffers.empty((2, 3), np.float32) for _ in range(2)]

    assert {array.ctypes.data for array in again} == addresses
    assert all(address % 64 == 0 for address in addresses)

"""lab/finetune/features.py (cached features) and lab/runtime/storage.py (atomic files, saved-once models).

The report's tests are in test_report.py."""

import json
import os

import numpy as np
import pytest

from lab.finetune import features
from lab.inputs.data import CLASS_NAMES, ImageData
from lab.networks import models
from lab.networks.backbones import get_backbone
from lab.networks.training import fit
from lab.runtime import atomic, storage


@pytest.fixture
def tiny_flowers():
    """Sixteen random 32 px 'flowers' in five classes, as an ImageData (train 12, validation 4)."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 16).astype(np.int64)
    return ImageData(
        name="tf_flowers", source="mock", class_names=CLASS_NAMES["tf_flowers"],
        total_examples=16, image_size=32, train_images=images[:12], train_labels=labels[:12],
        validation_images=images[12:], validation_labels=labels[12:],
    )


def test_head_on_cached_features_predicts_like_the_classifier(tiny_flowers, sample_weights_dir):
    # Real MobileNet weights: a random MobileNet's pooled features are near-constant, which
    # would let a wrong feature path pass unnoticed.
    backbone = get_backbone("mobilenet")
    classifier = models.backbone_classifier(backbone, 32, 5, str(sample_weights_dir / backbone.weights_file))
    (cached,) = features.extract_features(classifier, tiny_flowers.batches("train", 4))
    assert cached.shape == (tiny_flowers.train_count, backbone.feature_channels)

    head = features.standalone_head(classifier)
    fit(head, features.features_dataset(cached, tiny_flowers.train_labels, 4, seed=0), epochs=3)
    images = tiny_flowers.scaled("train")
    head_predictions = head.predict(cached, verbose=0)
    assert not np.allclose(classifier.predict(images, verbose=0), head_predictions, atol=1e-4), "the head did not train"

    features.put_head_back(classifier, head)

    # Same weights, other batch sizes: only float round-off may differ.
    np.testing.assert_allclose(classifier.predict(images, verbose=0), head_predictions, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("failing_call", ["replace", "fsync"])
def test_atomic_write_text_leaves_old_content_when_the_write_fails(failing_call, tmp_path, monkeypatch):
    path = tmp_path / "report.md"
    path.write_text("old report")

    def fail(*args, **kwargs):
        raise OSError(f"{failing_call} failed")

    monkeypatch.setattr(os, failing_call, fail)
    with pytest.raises(OSError, match=f"{failing_call} failed"):
        atomic.atomic_write_text(str(path), "new report")
    monkeypatch.undo()

    assert path.read_text() == "old report"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"], "a partial file was left behind"


def test_atomic_write_text_replaces_the_content(tmp_path):
    path = tmp_path / "sub" / "report.md"
    atomic.atomic_write_text(str(path), "first")
    atomic.atomic_write_text(str(path), "second é")

    assert path.read_text(encoding="utf-8") == "second é"
    assert [p.name for p in path.parent.iterdir()] == ["report.md"]


def test_ensure_saved_creates_once(tmp_path):
    path = str(tmp_path / "model.keras")
    calls = []

    def create(target):
        calls.append(target)
        with open(target, "w", encoding="utf-8") as stream:
            stream.write("model")
        return {"path": target, "history": {"loss": [2.0, 1.0]}}

    first = storage.ensure_saved(path, create)
    second = storage.ensure_saved(path, create)

    assert calls == [path]
    assert first == {"path": path, "history": {"loss": [2.0, 1.0]}, "created_here": True}
    assert second == {**first, "created_here": False}
    with open(path + ".json", encoding="utf-8") as stream:
        assert json.load(stream) == {"path": path, "history": {"loss": [2.0, 1.0]}}


def test_ensure_saved_creates_again_after_a_failed_create(tmp_path):
    path = str(tmp_path / "model.keras")

    def broken(target):
        raise RuntimeError("training crashed")

    with pytest.raises(RuntimeError):
        storage.ensure_saved(path, broken)
    assert not os.path.exists(path + ".json")

    def working(target):
        open(target, "w").close()
        return {"ok": True}

    assert storage.ensure_saved(path, working)["created_here"] is True

"""lab/features.py (cached features), lab/storage.py (atomic files, saved-once models) and
lab/report.py (markdown, plots, the command line)."""

import copy
import json
import os

import numpy as np
import pytest

from lab import atomic, features, models, report, storage
from lab.backbones import get_backbone
from lab.data import ImageData
from lab.training import fit


@pytest.fixture
def tiny_flowers():
    """Sixteen random 32 px 'flowers' in five classes, as an ImageData (train 12, validation 4)."""
    rng = np.random.default_rng(7)
    images = rng.integers(0, 256, (16, 32, 32, 3), dtype=np.uint8)
    labels = rng.integers(0, 5, 16).astype(np.int64)
    return ImageData(
        name="tf_flowers", source="mock", num_classes=5,
        total_examples=16, image_size=32, train_images=images[:12], train_labels=labels[:12],
        validation_images=images[12:], validation_labels=labels[12:],
    )


def test_head_on_cached_features_predicts_like_the_classifier(tiny_flowers, shared_weights_dir):
    # Real MobileNet weights: a random MobileNet's pooled features are near-constant, which
    # would let a wrong feature path pass unnoticed.
    backbone = get_backbone("mobilenet")
    classifier = models.backbone_classifier(backbone, 32, 5, str(shared_weights_dir / backbone.weights_file))
    cached = features.extract_features(classifier, tiny_flowers.batches("train", 4))
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


def _results(data_source="folder", complete=True, accuracy=0.5, unfrozen=2.0):
    """A small hand-made results dict in the shape conftest.py saves."""
    return {
        "run": {
            "profile": "smoke", "device_slug": "cpu", "seed": 0, "data_source": data_source,
            "data_source_description": data_source, "weights_description": "--weights none",
            "complete": complete, "incomplete_reason": None if complete else "interrupted; 3 tests did not run",
            "finished": "2026-01-01T00:00:00+00:00", "wall_seconds": 12.0,
            "device": {"cpu": "test cpu", "cpu_cores": 2, "gpus": [], "gpu_count": 0},
        },
        "records": [
            {
                "experiment": "1", "table": "The lab CNN on tf_flowers", "label": "filters 32-64-128",
                "row": {"filters": "32-64-128", "epochs": 2, "validation accuracy": accuracy},
                "curves": {"train_accuracy": [0.3, 0.6], "validation_accuracy": [0.25, accuracy]},
                "stage_curve": None,
            },
            {
                "experiment": "5", "table": "Strategies on one budget", "label": "mobilenet_v2 gradual-blocks",
                "row": {"backbone": "mobilenet_v2", "strategy": "gradual-blocks", "final validation accuracy": 0.4},
                "curves": None, "stage_curve": {"stages": ["0", "1", "2"], "accuracy": [0.2, 0.3, 0.4]},
            },
        ],
        "benchmarks": [
            {"name": f"test_epoch_time[mobilenet-{mode}]", "stats": {"median": median},
             "extra_info": {"backbone": "mobilenet", "mode": mode, "image_size": 96, "images_per_epoch": 128}}
            for mode, median in (("unfrozen", unfrozen), ("frozen", 0.5), ("frozen-cached", 0.02))
        ],
        "outcomes": [
            {"test": "experiments/test_1_base_model.py::test_base_model[lab]", "outcome": "passed"},
            {"test": "experiments/test_5_gradual_unfreeze.py::x", "outcome": "failed", "reason": "AssertionError: boom"},
        ],
    }


def test_render_writes_sections_tables_and_plots(tmp_path):
    figures = tmp_path / "figures"

    markdown = report.render(_results(), str(figures), "figures")

    assert markdown.startswith("# Transfer-learning lab report: smoke profile on cpu")
    for heading in (
        "## Experiment 1: the lab CNN on tf_flowers",
        "### The lab CNN on tf_flowers",
        "## Experiment 4: freezing the backbone",
        "## Experiment 5: gradual unfreezing",
        "### Strategies on one budget",
        "## Tests",
    ):
        assert f"\n{heading}\n" in markdown
    # Experiments with no record get no section.
    assert "## Experiment 2" not in markdown and "## Experiment 3" not in markdown
    assert "| filters   | epochs   | validation accuracy   |" in markdown
    assert "| 32-64-128 | 2        | 0.500                 |" in markdown
    tests_section = markdown.split("\n## Tests\n", 1)[1]
    assert "1 passed" in tests_section and "1 failed" in tests_section
    assert "AssertionError: boom" in tests_section
    assert "test_base_model[lab]" not in tests_section, "passed tests are counted, not listed"
    for png in ("experiment1-learning-curves.png", "epoch-seconds.png", "experiment5-accuracy-by-stage.png"):
        assert f"(figures/{png})" in markdown
        assert (figures / png).read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert "Mock data" not in markdown and "Incomplete run" not in markdown


def test_render_says_mock_data(tmp_path):
    markdown = report.render(_results(data_source="mock"), str(tmp_path), "f")
    assert "> **Mock data**" in markdown
    assert "means nothing" in markdown


def test_render_says_incomplete_run(tmp_path):
    markdown = report.render(_results(complete=False), str(tmp_path), "f")
    assert "> **Incomplete run**: interrupted; 3 tests did not run." in markdown


def test_render_without_benchmarks_gives_the_reason(tmp_path):
    results = _results()
    results["benchmarks"] = []
    results["records"].append({**results["records"][0], "experiment": "4", "table": "Frozen", "curves": None})
    results["run"]["benchmarks_note"] = "pytest-benchmark disables itself under pytest-xdist (-n)"

    markdown = report.render(results, str(tmp_path), "f")

    assert "No epoch times: pytest-benchmark disables itself under pytest-xdist (-n)." in markdown
    assert not (tmp_path / "epoch-seconds.png").exists()


def test_benchmark_rows_speedups_are_unfrozen_over_mode():
    benchmarks = _results(unfrozen=3.0)["benchmarks"]
    medians = {bench["extra_info"]["mode"]: bench["stats"]["median"] for bench in benchmarks}

    (row,) = report.benchmark_rows(benchmarks)

    assert row["backbone"] == "mobilenet" and row["input"] == "96px" and row["images/epoch"] == 128
    for mode in ("unfrozen", "frozen", "frozen-cached"):
        assert row[f"{mode} s/epoch"] == medians[mode]
    for mode in ("frozen", "frozen-cached"):
        assert row[f"{mode} speedup"] == f"{medians['unfrozen'] / medians[mode]:.1f}x"


def test_benchmark_rows_without_unfrozen_give_no_speedup():
    benchmarks = [b for b in _results()["benchmarks"] if b["extra_info"]["mode"] != "unfrozen"]

    (row,) = report.benchmark_rows(benchmarks)

    assert row["unfrozen s/epoch"] is None
    assert row["frozen speedup"] is None and row["frozen-cached speedup"] is None


def test_compare_command_prints_both_values_and_the_difference(tmp_path, run_python):
    first, second = _results(accuracy=0.5, unfrozen=2.0), _results(accuracy=0.75, unfrozen=3.0)
    second["records"][1]["row"]["final validation accuracy"] = 0.3
    paths = []
    for name, results in (("a.json", first), ("b.json", second)):
        (tmp_path / name).write_text(json.dumps(results))
        paths.append(str(tmp_path / name))

    completed, _ = run_python("-m", "lab.report", "--compare", *paths)

    assert completed.returncode == 0, completed.stderr
    rows = {}
    for line in completed.stdout.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith("Experiment"):
            rows[cells[3]] = cells[4:]
    # Numbers, not strings: tabulate re-formats numeric-looking cells (see the report's notes).
    figures = {figure: [float(value) for value in values[:3]] for figure, values in rows.items()}
    assert figures["validation accuracy"] == [0.5, 0.75, 0.75 - 0.5]
    assert rows["validation accuracy"][3] == f"{0.75 / 0.5:.2f}x"
    assert figures["final validation accuracy"] == [0.4, 0.3, pytest.approx(0.3 - 0.4)]
    assert figures["unfrozen s/epoch"] == [2.0, 3.0, 1.0]
    # Figures equal in both runs are listed too, with a zero difference.
    assert figures["frozen s/epoch"] == [0.5, 0.5, 0.0]
    # Settings such as epochs and images per epoch are not measurements.
    assert "epochs" not in rows and "images/epoch" not in rows
    assert "1 in only one" not in completed.stdout


def test_report_command_regenerates_a_report(tmp_path, run_python):
    results = _results()
    run_dir = tmp_path / "reports" / "smoke-cpu-run"
    run_dir.mkdir(parents=True)
    (run_dir / "results.json").write_text(json.dumps(results))

    completed, _ = run_python("-m", "lab.report", str(run_dir / "results.json"))

    assert completed.returncode == 0, completed.stderr
    regenerated = tmp_path / "reports" / "smoke-cpu-run-regenerated.md"
    assert completed.stdout.strip().splitlines()[-1] == str(regenerated)
    expected = report.render(copy.deepcopy(results), str(tmp_path / "in-process"), "smoke-cpu-run-regenerated")
    assert regenerated.read_text(encoding="utf-8") == expected
    figures = tmp_path / "reports" / "smoke-cpu-run-regenerated"
    assert (figures / "epoch-seconds.png").is_file()
    assert json.loads((figures / "results.json").read_text()) == results


def test_report_command_names_an_unreadable_results_file(tmp_path, run_python):
    missing = tmp_path / "nowhere" / "results.json"

    completed, _ = run_python("-m", "lab.report", str(missing))

    assert completed.returncode != 0
    assert str(missing) in completed.stderr

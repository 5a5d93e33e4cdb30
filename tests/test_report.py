"""The report: lab/report/render.py (markdown), lab/report/plots.py (figures), lab/report/compare.py (two runs side
by side) and lab/report/writing.py (the report on disk, pytest's summary lines, `python -m lab.report`).

Every input is a small hand-made `Results`; only three tests start a Python process, to run the
command line as a user does.
"""

import errno
import json
import os
import pathlib
import stat
import subprocess
import sys

import pytest

from lab.report import compare, render, writing
from lab.report.results import (
    BenchmarkResult,
    Curves,
    Outcome,
    Record,
    Results,
    RunHeader,
    StageCurve,
)
from lab.runtime import atomic, environment

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run(**fields) -> RunHeader:
    values = {
        "profile": "smoke", "seed": 0, "data_source": "folder", "data_source_description": "folder data",
        "weights_description": "--weights none", "device_slug": "cpu", "finished": "2026-01-01T00:00:00+00:00",
        "wall_seconds": 12.0, "device": {"cpu": "test cpu", "cpu_cores": 2, "gpus": [], "gpu_count": 0},
    }
    return RunHeader(**{**values, **fields})


def _results(accuracy=0.5, unfrozen=2.0, **run_fields) -> Results:
    """A small hand-made run: experiments 1 and 5, mobilenet epoch times, two outcomes."""
    return Results(
        run=_run(**run_fields),
        records=[
            Record(
                experiment=1, table="The lab CNN on tf_flowers", keys=("filters",), label="filters 32-64-128",
                row={"filters": "32-64-128", "epochs": 2, "validation accuracy": accuracy},
                curves=Curves(train_accuracy=[0.3, 0.6], validation_accuracy=[0.25, accuracy]),
                test="experiments/test_1_base_model.py::test_base_model[lab]", seed=0,
            ),
            Record(
                experiment=5, table="Strategies on one budget", keys=("backbone", "strategy"),
                label="mobilenet_v2 gradual-blocks",
                row={"backbone": "mobilenet_v2", "strategy": "gradual-blocks", "final validation accuracy": 0.4},
                stage_curve=StageCurve(stages=["0", "1", "2"], accuracy=[0.2, 0.3, 0.4]), seed=0,
            ),
        ],
        benchmarks=[
            BenchmarkResult(test=f"test_epoch_time[mobilenet-{mode}]", backbone="mobilenet", mode=mode,
                            image_size=96, images_per_epoch=128, median=median)
            for mode, median in (("unfrozen", unfrozen), ("frozen", 0.5), ("frozen-cached", 0.02))
        ],
        outcomes=[
            Outcome("experiments/test_1_base_model.py::test_base_model[lab]", "passed"),
            Outcome("experiments/test_5_gradual_unfreeze.py::x", "failed", "AssertionError: boom"),
        ],
    )


def _backbone_record(backbone, accuracy, image_size, train_images, weights="imagenet") -> Record:
    return Record(
        experiment=3, table="A head on pretrained features", keys=("backbone", "weights"), label=backbone,
        row={"backbone": backbone, "weights": weights, "input": f"{image_size}px", "train images": train_images,
             "validation accuracy": accuracy},
    )


def _write_results(tmp_path, name, results: Results) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(results.to_json()))
    return str(path)


def _tree(root) -> set[str]:
    return {os.path.relpath(os.path.join(folder, name), root)
            for folder, folders, files in os.walk(root) for name in folders + files}


def test_render_writes_sections_tables_and_figures():
    rendered = render.render(_results(), "figures")
    markdown = rendered.markdown

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
    pngs = {"experiment1-learning-curves.png", "epoch-seconds.png", "experiment5-accuracy-by-stage.png"}
    assert set(rendered.figures) == pngs
    for png in pngs:
        assert f"(figures/{png})" in markdown
        assert rendered.figures[png].startswith(PNG_SIGNATURE)
    assert "Mock data" not in markdown and "Incomplete" not in markdown and "Warning" not in markdown


def test_render_banners_say_mock_data_incomplete_run_and_warnings():
    results = _results(
        data_source="mock", complete=False, incomplete_reason="interrupted; 3 tests did not run",
        warnings=["--mixed-precision without a GPU: about 3x slower"],
    )

    markdown = render.render(results, "f").markdown

    header = markdown.split("|", 1)[0]
    assert "> **Incomplete: interrupted; 3 tests did not run.**" in header
    assert "> **Mock data**" in header and "means nothing" in header
    assert "> **Warning**: --mixed-precision without a GPU: about 3x slower" in header


def test_render_without_benchmarks_gives_the_reason():
    results = _results(benchmarks_note="pytest-benchmark disables itself under pytest-xdist (-n)")
    results.benchmarks = []
    results.records.append(_backbone_record("mobilenet", 0.6, 96, 400))
    results.records[-1].experiment = 4

    rendered = render.render(results, "f")

    assert "No epoch times: pytest-benchmark disables itself under pytest-xdist (-n)." in rendered.markdown
    assert "epoch-seconds.png" not in rendered.figures


def test_render_cuts_absolute_paths_to_their_last_two_components():
    results = _results(
        data_source_description="folder /home/alice/projects/data",
        weights_description="--weights imagenet, --weights-dir /home/alice/lab/weights",
        complete=False, incomplete_reason="cannot read '/home/alice/projects/data/x.jpg'",
        warnings=["wrote /home/alice/tb/logs"],
    )
    results.records.append(_backbone_record("mobilenet", 0.6, 96, 400, weights="file /home/alice/weights/m.h5"))

    markdown = render.render(results, "f").markdown

    assert "/home" not in markdown and "alice" not in markdown
    for kept in (
        "folder \u2026/projects/data",
        "--weights-dir \u2026/lab/weights",
        "'\u2026/data/x.jpg'",
        "wrote \u2026/tb/logs",
        "file \u2026/weights/m.h5",
    ):
        assert kept in markdown
    # Not absolute paths: shapes, units, fractions.
    assert render.public_text("3x3x2048, 0.5 s/epoch, 1/2") == "3x3x2048, 0.5 s/epoch, 1/2"


def test_one_data_tree_reads_as_one_tree_in_one_path_style():
    # Was `shared/data`, `data/weights` (as if inside the project) and `../shared/data/flower_photos`.
    root = "/srv/checkout"
    header = [
        "folder /srv/shared/data",
        "--weights imagenet, --weights-dir /srv/shared/data/weights",
        "flower_photos (folder /srv/shared/data/flower_photos): 5 classes",
    ]

    shown = [environment.display_paths_in(text, root) for text in header]

    assert shown == [
        "folder ../shared/data",
        "--weights imagenet, --weights-dir ../shared/data/weights",
        "flower_photos (folder ../shared/data/flower_photos): 5 classes",
    ]
    # The render's pass, which knows no root, leaves what the session shortened as it is.
    assert [render.public_text(text) for text in shown] == shown
    assert render.public_text(environment.display_paths_in("in /tmp/run/a.jpg.", root)) == "in \u2026/run/a.jpg."


def test_benchmark_rows_speedups_are_unfrozen_over_mode():
    benchmarks = _results(unfrozen=3.0).benchmarks
    medians = {bench.mode: bench.median for bench in benchmarks}

    (row,) = render.benchmark_rows(benchmarks)

    assert row["backbone"] == "mobilenet" and row["input"] == "96px" and row["images/epoch"] == 128
    for mode in ("unfrozen", "frozen", "frozen-cached"):
        assert row[f"{mode} s/epoch"] == medians[mode]
    for mode in ("frozen", "frozen-cached"):
        assert row[f"{mode} speedup"] == f"{medians['unfrozen'] / medians[mode]:.1f}x"


def test_benchmark_rows_without_unfrozen_give_no_speedup():
    benchmarks = [bench for bench in _results().benchmarks if bench.mode != "unfrozen"]

    (row,) = render.benchmark_rows(benchmarks)

    assert row["unfrozen s/epoch"] is None
    assert row["frozen speedup"] is None and row["frozen-cached speedup"] is None


def test_summary_lines_give_results_and_best_accuracy_per_experiment():
    results = _results(accuracy=0.625)

    assert writing.summary_lines(results) == [
        "Experiment 1: 1 results; best validation accuracy 0.625 (filters 32-64-128)",
        "Experiment 5: 1 results; best validation accuracy 0.400 (mobilenet_v2 gradual-blocks)",
    ]


def test_write_report_writes_markdown_figures_and_results_json(tmp_path):
    results = _results()
    report_dir = tmp_path / "new" / "reports"

    path = writing.write_report(results, str(report_dir), "smoke-cpu-run", "latest-smoke.md")

    assert path == str(report_dir / "smoke-cpu-run.md")
    markdown = (report_dir / "smoke-cpu-run.md").read_text(encoding="utf-8")
    assert markdown == render.render(results, "smoke-cpu-run").markdown
    assert (report_dir / "latest-smoke.md").read_text(encoding="utf-8") == markdown
    saved = json.loads((report_dir / "smoke-cpu-run" / "results.json").read_text())
    assert Results.from_json(saved) == results
    assert _tree(report_dir) == {
        "smoke-cpu-run.md", "latest-smoke.md", "smoke-cpu-run", "smoke-cpu-run/results.json",
        "smoke-cpu-run/experiment1-learning-curves.png", "smoke-cpu-run/epoch-seconds.png",
        "smoke-cpu-run/experiment5-accuracy-by-stage.png",
    }


@pytest.mark.parametrize(
    "failing_file", ["experiment1-learning-curves.png", "results.json", "smoke-cpu-run.md", "latest-smoke.md"]
)
def test_write_report_on_a_full_disk_leaves_nothing_half_written(failing_file, tmp_path, monkeypatch):
    results = _results()
    results.records = results.records[:1]  # one figure is enough, and quicker
    results.benchmarks = []
    (tmp_path / "latest-smoke.md").write_text("previous report")
    write_bytes = atomic.atomic_write_bytes

    def full_disk(path, payload):
        if os.path.basename(path) == failing_file:
            raise OSError(errno.ENOSPC, "No space left on device", path)
        write_bytes(path, payload)

    monkeypatch.setattr(atomic, "atomic_write_bytes", full_disk)
    report_dir = tmp_path / "reports"
    with pytest.raises(OSError, match="No space left on device") as raised:
        writing.write_report(results, str(report_dir), "smoke-cpu-run", str(tmp_path / "latest-smoke.md"))

    assert str(report_dir / "smoke-cpu-run.md") in str(raised.value)
    # The reports folder this call created is gone too; the previous latest report is intact.
    assert _tree(tmp_path) == {"latest-smoke.md"}
    assert (tmp_path / "latest-smoke.md").read_text() == "previous report"


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_write_report_gives_its_folder_the_modes_mkdir_and_open_would(umask, tmp_path):
    # The folder was mkdtemp's 0700 beside a 0644 markdown: others read the report, not its plots.
    previous = os.umask(umask)
    try:
        writing.write_report(_results(), str(tmp_path), "run", None)
    finally:
        os.umask(previous)

    def mode(name: str) -> int:
        return stat.S_IMODE(os.stat(tmp_path / name).st_mode)

    assert mode("run") == 0o777 & ~umask
    assert mode("run.md") == mode("run/results.json") == mode("run/epoch-seconds.png") == 0o666 & ~umask


def test_write_report_never_replaces_an_existing_report(tmp_path):
    (tmp_path / "smoke-cpu-run.md").write_text("first run")

    with pytest.raises(FileExistsError, match="smoke-cpu-run"):
        writing.write_report(_results(), str(tmp_path), "smoke-cpu-run", "latest-smoke.md")

    assert _tree(tmp_path) == {"smoke-cpu-run.md"}
    assert (tmp_path / "smoke-cpu-run.md").read_text() == "first run"


def test_compare_pairs_rows_by_key_columns_and_lists_rows_of_one_run():
    smoke = _results()
    smoke.records = [_backbone_record("mobilenet", 0.7, 96, 400), _backbone_record("resnet50", 0.4, 96, 400)]
    full = _results(profile="full", device_slug="gpu", unfrozen=0.5)
    full.records = [_backbone_record("mobilenet", 0.9, 224, 2936), _backbone_record("vgg16", 0.8, 224, 2936)]
    for bench in full.benchmarks:
        bench.image_size, bench.images_per_epoch = 224, 2936

    text = compare.compare(smoke, full)

    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 8 and cells[0].startswith("Experiment"):
            rows[(cells[2], cells[3])] = cells[4:]
    # Same backbone and weights, other input size and images: one pair.
    assert rows[("mobilenet, imagenet", "validation accuracy")] == ["0.7", "0.9", "+0.2", "1.29x"]
    assert rows[("resnet50, imagenet", "validation accuracy")] == ["0.4", "-", "-", "-"]
    assert rows[("vgg16, imagenet", "validation accuracy")] == ["-", "0.8", "-", "-"]
    # Epoch times pair by backbone, each mode a figure.
    assert rows[("mobilenet", "unfrozen s/epoch")] == ["2", "0.5", "-1.5", "0.25x"]
    assert rows[("mobilenet", "frozen s/epoch")][:2] == ["0.5", "0.5"]
    assert ("mobilenet, imagenet", "train images") not in rows, "settings are not figures"
    assert "1 only in A, 1 only in B." in text
    settings = text.split("Paired rows measured under different settings (A / B):", 1)[1]
    assert "mobilenet, imagenet: input 96px / 224px; train images 400 / 2,936" in settings
    assert "Experiment 4, Seconds per epoch, mobilenet: input 96px / 224px; images/epoch 128 / 2,936" in settings


def test_compare_averages_a_row_repeated_over_seeds():
    first, second = _results(), _results()
    first.records = [_backbone_record("mobilenet", 0.6, 96, 400), _backbone_record("mobilenet", 0.8, 96, 400)]
    first.records[1].seed = 1
    second.records = [_backbone_record("mobilenet", 0.75, 96, 400)]

    text = compare.compare(first, second)

    assert "| mobilenet, imagenet (mean of 2 / 1) | validation accuracy | 0.7 | 0.75 |" in " ".join(text.split())


def test_compare_header_shows_both_runs_options_and_warns_where_they_differ():
    first = _results(options={"--subset": "32", "--backbones": "mobilenet"})
    second = _results(profile="full", seed=3, data_source="mock", data_source_description="mock (random pixels)",
                      options={"--backbones": "mobilenet", "--mixed-precision": ""})
    for record in second.records:
        record.seed = 3

    text = compare.compare(first, second)

    header = text.split("\n> ", 1)[0]
    for setting, value_a, value_b in (("profile", "smoke", "full"), ("seeds", "0", "3"), ("--subset", "32", "-"),
                                      ("--backbones", "mobilenet", "mobilenet"), ("--mixed-precision", "-", "on"),
                                      ("data source", "folder data", "mock (random pixels)")):
        assert any(line.replace(" ", "").startswith(f"|{setting}|{value_a}|{value_b}|".replace(" ", ""))
                   for line in header.splitlines()), setting
    (warning,) = [line for line in text.splitlines() if line.startswith("> **Warning**")]
    for difference in ("profile (smoke / full)", "seeds (0 / 3)", "--subset (32 / -)", "--mixed-precision (- / on)",
                       "data source (folder / mock)"):
        assert difference in warning
    assert "--backbones" not in warning
    assert "> B: **Mock data**" in text

    assert "Warning" not in compare.compare(first, _results(options=dict(first.run.options)))


def test_compare_command_prints_no_absolute_path(tmp_path, run_python):
    private = "/home/alice/secret-project/data"
    first = _results(data_source_description=f"folder {private}", accuracy=0.5)
    second = _results(weights_description=f"--weights-dir {private}/weights", accuracy=0.75,
                      options={"--tensorboard": f"{private}/tb"})
    paths = [_write_results(tmp_path, "a.json", first), _write_results(tmp_path, "b.json", second)]

    completed, _ = run_python("-m", "lab.report", "--compare", *paths)

    assert completed.returncode == 0, completed.stderr
    assert "| validation accuracy | 0.5 | 0.75 | +0.25 | 1.50x |" in " ".join(completed.stdout.split())
    assert "/home" not in completed.stdout and "alice" not in completed.stdout
    assert "secret-project/data" in completed.stdout


def test_report_command_regenerates_a_report_without_tensorflow(tmp_path, run_python):
    results = _results()
    run_dir = tmp_path / "reports" / "smoke-cpu-run"
    run_dir.mkdir(parents=True)
    _write_results(run_dir, "results.json", results)

    # -X importtime lists every module the command imports on stderr.
    completed, _ = run_python("-X", "importtime", "-m", "lab.report", str(run_dir / "results.json"))

    assert completed.returncode == 0, completed.stderr
    assert "tensorflow" not in completed.stderr and "keras" not in completed.stderr
    regenerated = tmp_path / "reports" / "smoke-cpu-run-regenerated.md"
    assert completed.stdout.strip().splitlines()[-1] == str(regenerated)
    assert regenerated.read_text(encoding="utf-8") == render.render(results, "smoke-cpu-run-regenerated").markdown
    figures = tmp_path / "reports" / "smoke-cpu-run-regenerated"
    assert (figures / "epoch-seconds.png").read_bytes().startswith(PNG_SIGNATURE)
    assert Results.from_json(json.loads((figures / "results.json").read_text())) == results


def test_report_command_runs_from_any_folder_as_the_readme_says(tmp_path):
    # `python -m` finds `lab` only on sys.path, which holds the working folder, not the checkout.
    readme = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    assert "PYTHONPATH=PATH/TO/CHECKOUT python -m lab.report" in readme
    run_dir = tmp_path / "reports" / "run"
    run_dir.mkdir(parents=True)
    _write_results(run_dir, "results.json", _results())

    completed = subprocess.run(
        [sys.executable, "-m", "lab.report", os.path.join("reports", "run", "results.json")],
        cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)}, capture_output=True, text=True, timeout=120,
    )

    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip().splitlines()[-1] == str(tmp_path / "reports" / "run-regenerated.md")


@pytest.mark.parametrize(
    "content, message",
    [
        ("{}", "it has no 'run' object"),
        ("[]", "it has no 'run' object"),
        ('{"run": {}}', "missing 5 required positional arguments"),
        ("", "is empty"),
        ("{not json", "is not JSON"),
    ],
    ids=["empty-object", "list", "empty-run", "empty-file", "not-json"],
)
def test_report_command_rejects_a_results_file_it_cannot_use(content, message, tmp_path, capsys):
    results_file = tmp_path / "run" / "results.json"
    results_file.parent.mkdir()
    results_file.write_text(content)
    before = _tree(tmp_path)

    status = writing.main([str(results_file)])

    (line,) = capsys.readouterr().err.splitlines()
    assert status == 2
    assert line.startswith("python -m lab.report: error: ") and str(results_file) in line and message in line
    assert _tree(tmp_path) == before, "an orphan folder or file was left behind"


def test_report_command_names_a_missing_results_file(tmp_path, capsys):
    missing = tmp_path / "nowhere" / "results.json"

    assert writing.main([str(missing)]) == 2
    (line,) = capsys.readouterr().err.splitlines()
    assert f"cannot read results file {missing} (No such file or directory)" in line
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize(
    "benchmark_json, message",
    [
        ("missing.json", "cannot read --benchmark-json file"),
        ("", "the --benchmark-json file path is empty"),
        ("empty.json", "is empty"),
        ("no-epoch-times.json", "holds no epoch time of experiment 4"),
    ],
    ids=["missing", "empty-argument", "empty-file", "no-epoch-times"],
)
def test_report_command_rejects_a_benchmark_json_it_cannot_use(benchmark_json, message, tmp_path, capsys):
    results_file = _write_results(tmp_path, "results.json", _results())
    (tmp_path / "empty.json").write_text("")
    no_epoch_times = {"benchmarks": [{"name": "x", "extra_info": {}, "stats": {}}]}
    (tmp_path / "no-epoch-times.json").write_text(json.dumps(no_epoch_times))
    out_dir = tmp_path / "out"
    argument = str(tmp_path / benchmark_json) if benchmark_json else ""

    status = writing.main([results_file, "--benchmark-json", argument, "--out-dir", str(out_dir)])

    (line,) = capsys.readouterr().err.splitlines()
    assert status == 2 and message in line and argument in line
    assert not out_dir.exists()


def test_report_command_takes_epoch_times_from_a_benchmark_json(tmp_path, capsys):
    results_file = _write_results(tmp_path, "results.json", _results())
    benchmark_file = tmp_path / "benchmarks.json"
    benchmark_file.write_text(json.dumps({"benchmarks": [
        {"name": "test_epoch_time[vgg16-frozen]", "stats": {"median": 1.5, "rounds": 3},
         "extra_info": {"backbone": "vgg16", "mode": "frozen", "image_size": 64, "images_per_epoch": 32,
                        "feature_extraction_seconds": 0.1}},
        {"name": "test_other", "stats": {"median": 9.0}, "extra_info": {}},
    ]}))
    out_dir = tmp_path / "out"

    arguments = [results_file, "--benchmark-json", str(benchmark_file), "--out-dir", str(out_dir), "--name", "r"]
    assert writing.main(arguments) == 0

    saved = Results.from_json(json.loads((out_dir / "r" / "results.json").read_text()))
    assert saved.benchmarks == [BenchmarkResult(
        test="test_epoch_time[vgg16-frozen]", backbone="vgg16", mode="frozen", image_size=64, images_per_epoch=32,
        median=1.5, rounds=3, extra={"feature_extraction_seconds": 0.1},
    )]
    assert "| vgg16      | 64px    |" in (out_dir / "r.md").read_text()
    # Speedups are answered from the new epoch times: vgg16 has no unfrozen time to compare with.
    assert ("Experiment 4, vgg16", "frozen", "unfrozen did not run in this session") in [
        (comparison.question, comparison.a_name, comparison.reason) for comparison in saved.comparisons
    ]


@pytest.mark.parametrize("out_dir", ["a-file", "a-file/below"])
def test_report_command_rejects_an_out_dir_that_is_a_file(out_dir, tmp_path, capsys):
    results_file = _write_results(tmp_path, "results.json", _results())
    (tmp_path / "a-file").write_text("not a folder")
    before = _tree(tmp_path)

    status = writing.main([results_file, "--out-dir", str(tmp_path / out_dir)])

    (line,) = capsys.readouterr().err.splitlines()
    assert status == 2 and f"{tmp_path / 'a-file'} is a file, not a folder" in line
    assert _tree(tmp_path) == before


def test_report_command_does_not_replace_a_report_of_the_same_name(tmp_path, capsys):
    results_file = _write_results(tmp_path, "results.json", _results())
    out_dir = tmp_path / "out"

    assert writing.main([results_file, "--out-dir", str(out_dir), "--name", "r"]) == 0
    first = (out_dir / "r.md").read_text()
    capsys.readouterr()
    assert writing.main([results_file, "--out-dir", str(out_dir), "--name", "r"]) == 2

    (line,) = capsys.readouterr().err.splitlines()
    assert "a report named r is already in" in line and "pass --name NAME" in line
    assert (out_dir / "r.md").read_text() == first


@pytest.mark.parametrize("name", ["../escaped", "sub/run", ".."])
def test_report_command_rejects_a_name_with_folders(name, tmp_path, capsys):
    results_file = _write_results(tmp_path, "results.json", _results())
    before = _tree(tmp_path)

    assert writing.main([results_file, "--out-dir", str(tmp_path / "out"), "--name", name]) == 2

    (line,) = capsys.readouterr().err.splitlines()
    assert f"--name {name} is not a file name" in line
    assert _tree(tmp_path) == before


def test_compare_command_rejects_a_file_that_is_not_results(tmp_path, capsys):
    good = _write_results(tmp_path, "a.json", _results())
    (tmp_path / "b.json").write_text("[]")

    assert writing.main(["--compare", good, str(tmp_path / "b.json")]) == 2

    captured = capsys.readouterr()
    (line,) = captured.err.splitlines()
    assert f"{tmp_path / 'b.json'}: not a results.json of this suite" in line
    assert captured.out == "", "nothing is compared when one side cannot be read"


def test_a_gpu_reports_header_names_its_cuda_stack(monkeypatch):
    class NvidiaSmi:
        stdout = "550.54.15, 143771 MiB\n"

    monkeypatch.setattr(environment.subprocess, "run", lambda *args, **kwargs: NvidiaSmi())
    stack = environment.gpu_stack()
    device = {"cpu": "test cpu", "cpu_cores": 16, "gpus": ["NVIDIA H200"], "gpu_count": 1, "gpu_stack": stack}

    header = render.header_table(_run(device=device))

    assert "driver 550.54.15, 143771 MiB" in stack and stack.startswith("CUDA ")
    assert f"1: NVIDIA H200 ({stack})" in header

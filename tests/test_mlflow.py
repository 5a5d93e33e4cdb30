"""`--mlflow`: a session logged to a real local MLflow store and read back with `mlflow.search_runs`.

The module on hand-made records (a session run, a nested run per training test, the report as
artifacts), one pytest session of experiment 1's narrow CNN on mock data under xdist, and the
inputs that must stop a session before it trains: MLflow not installed, a server that does not
answer (refused, or silent), a local store whose folder cannot be written, a value that is not a URI.
"""

from __future__ import annotations

import http.server
import json
import pathlib
import re
import socket
import subprocess
import sys
import threading
import time

import mlflow
import pytest

from lab.errors import LabInputError
from lab.measurements import Curves, StageCurve, ValidationSet
from lab.report import tracking, writing
from lab.report.results import Outcome, Record, Results, RunHeader

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
EXPERIMENT_1 = "experiments/test_1_base_model.py::test_base_model[seed0-narrow]"
EXPERIMENT_5 = "experiments/test_5_gradual_unfreeze.py::test_unfreeze_strategy[seed1-mobilenet_v2-gradual-blocks]"
STRUCTURE = "experiments/test_3_pretrained_backbone.py::test_backbone_matches_keras_structure[resnet50]"


@pytest.fixture
def runs_in():
    """`runs_in(uri)`: every run of the lab's experiment in the store at `uri`, by run name."""

    def read(uri: str) -> dict:
        mlflow.set_tracking_uri(uri)
        runs = mlflow.search_runs(experiment_names=[tracking.EXPERIMENT], output_format="list")
        return {run.info.run_name: run for run in runs}

    yield read
    mlflow.set_tracking_uri(None)


def _results() -> Results:
    """A session of three tests: experiment 1's CNN (curves, predictions), experiment 5's strategy (two
    stage rows and a summary with its stage curve, which failed), and a structure test that trained nothing."""
    validation = ValidationSet("flowers, 32px, 4 images", 5, [0, 1, 2, 3])
    header = RunHeader(
        profile="smoke", seed=0, data_source="mock", data_source_description="tfds mock data",
        weights_description="--weights none", options={"--data-source": "mock", "--run-eagerly": ""},
        started="2026-01-02T03:04:05+00:00", finished="2026-01-02T03:05:05+00:00", wall_seconds=60.0,
        versions={"python": "3.11.7", "keras": "3.15.1"}, device={"cpu": "x86", "cpu_cores": 2, "gpus": []},
        complete=False, incomplete_reason="some tests failed", seeds=[0, 1],
    )
    stage = "Stage by stage"
    return Results(
        run=header,
        records=[
            Record(1, "The lab CNN on tf_flowers", ("filters",), {"filters": "16-32-64", "validation accuracy": 0.75},
                   "narrow", Curves([0.5, 0.6], [0.5, 0.75]), test=EXPERIMENT_1, seed=0,
                   validation_set=validation.name, validation_images=4, predictions=[0, 1, 2, 0]),
            Record(5, stage, ("strategy", "stage"), {"strategy": "gradual", "stage": 0, "validation accuracy": 0.4},
                   test=EXPERIMENT_5, seed=1, validation_images=10),
            Record(5, stage, ("strategy", "stage"), {"strategy": "gradual", "stage": 1, "validation accuracy": 0.6},
                   test=EXPERIMENT_5, seed=1, validation_images=10),
            Record(5, "Strategies on one budget", ("backbone", "strategy"),
                   {"backbone": "mobilenet_v2", "strategy": "gradual", "final validation accuracy": 0.7},
                   stage_curve=StageCurve(["0", "1", "2"], [0.4, 0.6, 0.7]), test=EXPERIMENT_5, seed=1,
                   validation_images=10),
            Record(3, "Backbones against Keras's published structure", ("backbone",), {"backbone": "resnet50",
                   "layers": 175}, test=STRUCTURE, seed=0),
        ],
        outcomes=[Outcome(EXPERIMENT_1, "passed", "", 1, {"filters": "16-32-64", "seed": "0"}),
                  Outcome(EXPERIMENT_5, "failed", "boom", 5,
                          {"seed": "1", "backbone_name": "mobilenet_v2", "strategy": "gradual-blocks"}),
                  Outcome(STRUCTURE, "passed", "", 3, {"backbone_name": "resnet50"})],
        validation_sets=[validation],
    )


def _report(folder: pathlib.Path) -> pathlib.Path:
    """A report as `lab.report.write_report` lays it out: `<stem>.md` and `<stem>/` with results.json and plots."""
    (folder / "smoke-cpu-run").mkdir(parents=True)
    (folder / "smoke-cpu-run" / "results.json").write_text("{}")
    (folder / "smoke-cpu-run" / "curves.png").write_bytes(b"png")
    markdown = folder / "smoke-cpu-run.md"
    markdown.write_text("# report\n")
    return markdown


def _metric_history(client, run, name: str) -> list[tuple[int, float]]:
    return [(point.step, round(point.value, 6)) for point in client.get_metric_history(run.info.run_id, name)]


def test_a_session_is_one_run_with_a_nested_run_per_training_test(tmp_path, runs_in):
    uri = tracking.store_uri("", str(tmp_path / "reports"))
    assert uri == f"sqlite:///{tmp_path}/reports/mlflow.db"
    tracking.check_store(uri)
    report = _report(tmp_path / "reports")

    run_id = tracking.log_session(uri, _results(), str(report), {EXPERIMENT_1: 12.5})

    runs = runs_in(uri)
    assert sorted(runs) == ["smoke-cpu-run", "test_base_model[seed0-narrow]",
                            "test_unfreeze_strategy[seed1-mobilenet_v2-gradual-blocks]"]
    session = runs["smoke-cpu-run"]
    assert session.info.run_id == run_id and session.info.status == "FAILED"
    assert session.data.params == {"profile": "smoke", "seeds": "0,1", "data": "tfds mock data",
                                   "weights": "--weights none", "--data-source": "mock", "--run-eagerly": ""}
    assert session.data.tags["version.keras"] == "3.15.1" and session.data.tags["device.cpu_cores"] == "2"
    assert session.data.tags["version.mlflow"] == mlflow.__version__
    assert session.data.tags["incomplete reason"] == "some tests failed"
    assert session.data.metrics == {"tests_passed": 2.0, "tests_failed": 1.0, "wall_seconds": 60.0}
    client = mlflow.MlflowClient(uri)
    assert sorted(item.path for item in client.list_artifacts(run_id)) == ["smoke-cpu-run", "smoke-cpu-run.md"]
    assert sorted(item.path for item in client.list_artifacts(run_id, "smoke-cpu-run")) == [
        "smoke-cpu-run/curves.png", "smoke-cpu-run/results.json"]
    # Artifacts beside the store, not wherever the session happened to run.
    assert (tmp_path / "reports" / tracking.ARTIFACTS_FOLDER).is_dir()

    cnn = runs["test_base_model[seed0-narrow]"]
    assert cnn.data.tags["mlflow.parentRunId"] == run_id and cnn.info.status == "FINISHED"
    assert cnn.data.params == {"test": EXPERIMENT_1, "experiment": "1",
                               "table": "The lab CNN on tf_flowers", "seed": "0", "filters": "16-32-64"}
    # 3 of 4 images right: Wilson's interval over those 4 images.
    assert cnn.data.metrics["final_validation_accuracy"] == 0.75 and cnn.data.metrics["seconds"] == 12.5
    assert cnn.data.metrics["final_validation_accuracy_low"] == pytest.approx(0.3006, abs=1e-4)
    assert cnn.data.metrics["final_validation_accuracy_high"] == pytest.approx(0.9544, abs=1e-4)
    assert _metric_history(client, cnn, "validation_accuracy") == [(1, 0.5), (2, 0.75)]
    assert _metric_history(client, cnn, "train_accuracy") == [(1, 0.5), (2, 0.6)]

    strategy = runs["test_unfreeze_strategy[seed1-mobilenet_v2-gradual-blocks]"]
    assert strategy.info.status == "FAILED" and "seconds" not in strategy.data.metrics
    # The summary row's keys, not a stage's; its stage curve from stage 0, the head alone.
    assert strategy.data.params["backbone"] == "mobilenet_v2" and "stage" not in strategy.data.params
    assert strategy.data.params["seed"] == "1" and strategy.data.params["experiment"] == "5"
    assert _metric_history(client, strategy, "stage_validation_accuracy") == [(0, 0.4), (1, 0.6), (2, 0.7)]
    assert strategy.data.metrics["final_validation_accuracy_low"] < 0.7 < strategy.data.metrics[
        "final_validation_accuracy_high"]


def test_a_pytest_session_with_mlflow_is_logged_by_the_xdist_controller(tmp_path, start_pytest, runs_in):
    process = start_pytest(
        tmp_path, "experiments/test_1_base_model.py", "-k", "narrow", "--data-source", "mock", "--weights", "none",
        "--subset", "32", "--epochs", "2", "-p", "no:cacheprovider", "-n", "1", "--mlflow",
    )
    finished = process.finished()
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]
    (report,) = process.report_dir.glob("smoke-*.md")
    results = json.loads((process.report_dir / report.stem / "results.json").read_text())
    uri = f"sqlite:///{process.report_dir}/mlflow.db"
    assert re.search(r"mlflow: run \w+ in " + re.escape(uri), finished.stdout)

    runs = runs_in(uri)
    assert sorted(runs) == [report.stem, "test_base_model[seed0-narrow]"]
    session, cnn = runs[report.stem], runs["test_base_model[seed0-narrow]"]
    assert session.info.status == "FINISHED" and cnn.data.tags["mlflow.parentRunId"] == session.info.run_id
    assert session.data.params["--data-source"] == "mock" and session.data.params["--mlflow"] == ""
    assert session.data.params["-n"] == "1"
    assert session.data.tags["version.keras"] == results["run"]["versions"]["keras"]
    assert cnn.data.params["filters"] == "16-32-64" and cnn.data.params["experiment"] == "1"
    (record,) = results["records"]
    client = mlflow.MlflowClient(uri)
    for series in ("validation_accuracy", "train_loss"):
        assert _metric_history(client, cnn, series) == [
            (epoch, round(value, 6)) for epoch, value in enumerate(record["curves"][series], 1)]
    assert len(record["curves"]["train_loss"]) == 2
    metrics = cnn.data.metrics
    assert metrics["final_validation_accuracy"] == pytest.approx(record["row"]["validation accuracy"])
    assert metrics["final_validation_accuracy_low"] < metrics["final_validation_accuracy"] < metrics[
        "final_validation_accuracy_high"]
    assert metrics["seconds"] > 0
    artifacts = {item.path for item in client.list_artifacts(session.info.run_id, report.stem)}
    assert f"{report.stem}/results.json" in artifacts and any(path.endswith(".png") for path in artifacts)


def test_an_unreachable_server_stops_the_session_before_anything_trains(run_python):
    completed, _ = run_python(
        "-m", "pytest", "experiments/test_1_base_model.py", "--mlflow", "http://127.0.0.1:1",
        "-q", "-p", "no:cacheprovider", "--data-source", "mock", "--weights", "none",
    )
    assert completed.returncode == pytest.ExitCode.USAGE_ERROR, completed.stdout + completed.stderr
    assert "--mlflow http://127.0.0.1:1: no tracking server answered within 3 s" in completed.stderr
    assert "passed" not in completed.stdout


def test_a_server_that_never_answers_is_given_up_on_within_seconds():
    # It accepts the connection (the kernel's backlog does) and then says nothing.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        uri = f"http://127.0.0.1:{silent.getsockname()[1]}"
        started = time.perf_counter()
        with pytest.raises(LabInputError, match=re.escape(f"--mlflow {uri}: no tracking server answered")):
            tracking.check_store(uri)
    assert time.perf_counter() - started < tracking.PROBE_SECONDS + 2


class _Health(http.server.BaseHTTPRequestHandler):
    """A tracking server's health endpoint, for the probe; any other path wants a login."""

    def do_GET(self):
        self.send_response(200 if self.path == "/health" else 401)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_server_that_answers_passes_the_check_and_its_password_stays_out_of_messages():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        tracking.check_store(f"http://user:secret@127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
    assert tracking.displayed_uri("https://user:secret@host:5000/x") == "https://user@host:5000/x"


def test_mlflow_not_installed_names_the_line_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "mlflow", None)
    with pytest.raises(LabInputError) as raised:
        tracking.check_store(f"sqlite:///{tmp_path}/mlflow.db")
    message = str(raised.value)
    assert message.startswith("--mlflow needs mlflow, not installed here") and f"run `{tracking.INSTALL}`" in message


@pytest.mark.parametrize("requirements", ["requirements.txt", "requirements-gpu.txt"])
def test_the_install_line_is_what_the_requirements_pin(requirements):
    pinned = set((REPO_ROOT / requirements).read_text().splitlines())
    assert set(tracking.PINS.values()) <= pinned


@pytest.mark.parametrize("scheme", ["sqlite", "file"])
def test_a_local_store_whose_folder_cannot_be_written_names_the_folder(tmp_path, scheme):
    # A folder under a regular file cannot be made, even by root.
    (tmp_path / "a-file").write_text("")
    folder = tmp_path / "a-file" / "store"
    uri = f"sqlite:///{folder}/mlflow.db" if scheme == "sqlite" else folder.as_uri()
    with pytest.raises(LabInputError, match=f"cannot write the store's folder {re.escape(str(folder))} "):
        tracking.check_store(uri)


def test_a_value_that_is_not_a_uri_and_no_store_without_reports_are_usage_errors():
    # `pytest --mlflow experiments` gives the test path to --mlflow.
    with pytest.raises(LabInputError, match="'experiments' is not a tracking URI.*--mlflow=URI"):
        tracking.check_store("experiments")
    with pytest.raises(LabInputError, match="drop --no-report"):
        tracking.store_uri("", None)


def test_a_file_store_works_too(tmp_path, runs_in):
    uri = (tmp_path / "mlruns").as_uri()
    tracking.check_store(uri)
    run_id = tracking.log_session(uri, _results(), None, {})
    runs = runs_in(uri)
    assert runs["smoke-unknown-2026-01-02T03:04:05+00:00"].info.run_id == run_id and len(runs) == 3


@pytest.mark.parametrize("store", ["not a database", "a folder", "a deleted experiment"])
def test_a_store_that_cannot_be_used_is_refused_as_the_session_starts(tmp_path, store, monkeypatch):
    """Each was refused only after every test had run (a folder after 100 s of SQLAlchemy's retries)."""
    path = tmp_path / "mlflow.db"
    expected = {"not a database": "is not a SQLite database", "a folder": "is a folder",
                "a deleted experiment": "is deleted"}[store]
    if store == "not a database":
        path.write_text("x\n")
    elif store == "a folder":
        path.mkdir()
    else:
        monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", "lab-deleted")
        client = mlflow.MlflowClient(tracking_uri=f"sqlite:///{path}")
        client.delete_experiment(client.create_experiment("lab-deleted"))
    started = time.monotonic()
    with pytest.raises(LabInputError, match=expected):
        tracking.SessionLog(f"sqlite:///{path}", None)
    assert time.monotonic() - started < 30


OPEN_STORE = """
import sys
from lab.report import tracking, writing
print(tracking.open_store(sys.argv[1]))
"""


def test_two_sessions_first_opening_one_new_store_together_both_get_its_experiment(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    processes = [
        subprocess.Popen([sys.executable, "-c", OPEN_STORE, uri], cwd=pathlib.Path(__file__).resolve().parents[1],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [process.communicate(timeout=120) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], [err[-2000:] for _, err in outputs]
    assert outputs[0][0].split()[-1] == outputs[1][0].split()[-1]


def test_a_finished_run_is_logged_afterwards_from_its_folder(tmp_path, runs_in):
    """For a session whose store failed at its end, or that ran without --mlflow."""
    markdown = _report(tmp_path)
    (tmp_path / "smoke-cpu-run" / "results.json").write_text(json.dumps(_results().to_json()))
    uri = f"sqlite:///{tmp_path / 'later.db'}"

    assert writing.main([str(tmp_path / "smoke-cpu-run"), "--mlflow", uri]) == 0

    runs = runs_in(uri)
    # Named as its report, with a nested run per training test.
    assert markdown.stem in runs and len(runs) == 3

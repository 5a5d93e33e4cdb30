"""`--mlflow [URI]`: a session as one MLflow run, with a run nested in it per training test.

The session's run holds its options, versions and device, and the report, its plots and
results.json as artifacts; each test that trained holds its pytest id, the experiment, table
key columns and seed its record names, its curves by epoch, its final validation accuracy with
a 95% interval, and its seconds. All of it is written once the report is, from the records the
report is made of, by the process that writes the report: xdist's controller, a cluster's chief.

MLflow is optional: nothing here imports it until a session logs.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import importlib.util
import logging
import os
import re
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

import filelock

from lab.errors import LabInputError
from lab.measurements import ValidationSet
from lab.report import findings, statistics
from lab.report.results import ACCURACY_COLUMNS, Outcome, Record, Results, RunHeader

if TYPE_CHECKING:
    from mlflow import MlflowClient

# requirements.txt's pins: MLflow's client, and SQLAlchemy and Alembic for a SQLite store
# (mlflow-skinny leaves out those two, with MLflow's server, UI and pandas).
PINS = {"mlflow": "mlflow-skinny==3.17.2", "sqlalchemy": "sqlalchemy==2.0.58", "alembic": "alembic==1.20.1"}
INSTALL = "pip install " + " ".join(PINS.values())
# The store `--mlflow` without a URI keeps beside the reports, and the folder beside it for
# artifacts (`mlflow server`'s own name for it).
STORE_FILE = "mlflow.db"
ARTIFACTS_FOLDER = "mlartifacts"
# MLflow's experiment the runs go to, unless MLFLOW_EXPERIMENT_NAME names another.
EXPERIMENT = "transfer-learning-lab"
# How long a tracking server may take to answer the check before anything trains: MLflow's own
# client retries a refused connection for minutes.
PROBE_SECONDS = 3.0


def store_uri(given: str, report_dir: str | None) -> str:
    """The tracking URI of `--mlflow [URI]`: the one given, else a SQLite store beside the reports.

    Args:
        given: the option's value; "" for `--mlflow` alone.
        report_dir: the reports' folder, or None for `--no-report`.

    Raises:
        LabInputError: no URI given and no reports to keep the store beside.
    """
    if given:
        return given
    if report_dir is None:
        raise LabInputError(
            "--mlflow without a URI keeps its store beside the reports: drop --no-report, "
            "or give the store's URI (--mlflow=sqlite:///PATH/mlflow.db)"
        )
    return f"sqlite:///{os.path.join(os.path.abspath(report_dir), STORE_FILE)}"


def check_store(uri: str) -> None:
    """Checks, before anything trains, that a session can be logged to `uri`.

    Raises:
        LabInputError: `uri` is not a URI, MLflow (or a SQLite store's SQLAlchemy) is not
            installed, a tracking server does not answer, or a local store's folder cannot be written.
    """
    scheme = _scheme(uri)
    if scheme is None:
        raise LabInputError(
            f"--mlflow {uri!r} is not a tracking URI: give sqlite:///PATH, file:PATH or http(s)://HOST:PORT "
            "(write --mlflow=URI: a bare --mlflow takes a test path after it for its URI)"
        )
    _check_installed(scheme)
    if scheme in ("http", "https"):
        _check_server(uri)
    elif scheme in ("sqlite", "file"):
        _check_folder(uri, _store_folder(uri))
    if scheme == "sqlite":
        _check_sqlite_file(uri)


def open_store(uri: str) -> str:
    """Opens the store at `uri` and resolves the lab's experiment in it, before anything trains;
    returns the experiment's id.

    Raises:
        LabInputError: the store cannot be opened (a file that is not a database, a folder given
            as one, a server that answers but is no MLflow, ...) or the experiment was deleted,
            naming the URI and why.
    """
    import mlflow

    _configure_client(uri)
    shown = displayed_uri(uri)
    try:
        with _store_lock(uri):
            client = mlflow.MlflowClient(tracking_uri=uri)
            experiment_id = _experiment_id(client, uri)
            experiment = client.get_experiment(experiment_id)
    except Exception as error:
        reason = (str(error).strip().splitlines() or [""])[0][:300]
        raise LabInputError(
            f"--mlflow {shown}: the store cannot be opened ({type(error).__name__}: {reason}): give a store "
            "that MLflow opens (sqlite:///PATH of a new or MLflow's own file, file:PATH, an MLflow server's URL)"
        ) from None
    if experiment.lifecycle_stage == "deleted":
        raise LabInputError(
            f"--mlflow {shown}: its experiment {experiment.name!r} is deleted: restore it (`mlflow experiments "
            "restore`), delete it for good, or name another with MLFLOW_EXPERIMENT_NAME"
        )
    return experiment_id


def displayed_uri(uri: str) -> str:
    """`uri` without a password it may carry (`http://user:secret@host` -> `http://user@host`)."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    return parts._replace(netloc=parts.netloc.replace(f":{parts.password}@", "@", 1)).geturl()


def _scheme(uri: str) -> str | None:
    match = re.match(r"([A-Za-z][A-Za-z0-9+.-]*):", uri)
    return match.group(1).lower() if match else None


def _check_installed(scheme: str) -> None:
    """A usage error with the line that installs what a store of `scheme` needs, if any is missing."""
    needed = list(PINS) if scheme == "sqlite" else ["mlflow"]
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise LabInputError(f"--mlflow needs {', '.join(missing)}, not installed here: run `{INSTALL}`")


def _check_server(uri: str) -> None:
    """A usage error naming `uri` unless a server answers at its health endpoint within PROBE_SECONDS."""
    # Without user and password (urllib takes them for part of the host): any answer, a refused login
    # included, shows a server is there.
    parts = urllib.parse.urlsplit(uri)
    health = parts._replace(netloc=parts.netloc.rpartition("@")[2], path=parts.path.rstrip("/") + "/health")
    try:
        with urllib.request.urlopen(health.geturl(), timeout=PROBE_SECONDS):
            return
    except urllib.error.HTTPError as error:
        error.close()
    except (OSError, ValueError) as error:
        reason = getattr(error, "reason", error)
        raise LabInputError(
            f"--mlflow {displayed_uri(uri)}: no tracking server answered within {PROBE_SECONDS:g} s ({reason}): "
            "start it (mlflow server), correct the URI, or give --mlflow alone for a SQLite store beside the reports"
        ) from None


def _sqlite_path(uri: str) -> str:
    """The absolute path of a SQLite store's file."""
    # SQLAlchemy's form: sqlite:///relative/path.db, sqlite:////absolute/path.db, options after `?`.
    return os.path.abspath(re.sub(r"^sqlite:///", "", uri, flags=re.IGNORECASE).split("?")[0])


def _store_folder(uri: str) -> str:
    """The folder a local store writes: a SQLite file's, or a `file:` store itself."""
    if _scheme(uri) == "sqlite":
        return os.path.dirname(_sqlite_path(uri))
    return os.path.abspath(urllib.request.url2pathname(urllib.parse.urlsplit(uri).path))


# The first bytes of every SQLite database file.
SQLITE_HEADER = b"SQLite format 3\x00"


def _store_lock(uri: str):
    """A lock beside a SQLite store, held while a session opens it: two sessions that first use a new
    store together would otherwise both run MLflow's schema migration, and one would lose its run
    ("Online migration expected to match one row"). Other stores need none."""
    if _scheme(uri) != "sqlite":
        return contextlib.nullcontext()
    return filelock.FileLock(os.path.join(_store_folder(uri), ".mlflow-store.lock"))


def _check_sqlite_file(uri: str) -> None:
    """A usage error, at once, where a SQLite store's path is a folder or a file that is not a
    database: SQLAlchemy retries opening a folder for about 100 s before it gives up."""
    path = _sqlite_path(uri)
    if os.path.isdir(path):
        raise LabInputError(f"--mlflow {uri}: {path} is a folder: give the path of a SQLite file (new or MLflow's)")
    if os.path.isfile(path) and os.path.getsize(path) > 0:
        with open(path, "rb") as stream:
            if stream.read(len(SQLITE_HEADER)) != SQLITE_HEADER:
                raise LabInputError(
                    f"--mlflow {uri}: {path} is not a SQLite database: give a new file's path, or MLflow's own store"
                )


def _check_folder(uri: str, folder: str) -> None:
    """A usage error naming `folder` if a file cannot be made in it."""
    try:
        os.makedirs(folder, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise LabInputError(
            f"--mlflow {uri}: cannot write the store's folder {folder} ({error.strerror}): "
            "give --mlflow a store you can write"
        ) from None


@dataclasses.dataclass
class RunContent:
    """What one MLflow run holds, in plain types.

    Args:
        name: the run's name.
        params: parameter -> value.
        metrics: metric -> its one value.
        series: metric -> (step, value) of each step: a curve.
        tags: tag -> value.
        status: how it ended, in MLflow's words (`FINISHED`, `FAILED`, `KILLED`).
    """

    name: str
    params: dict[str, str]
    metrics: dict[str, float]
    series: dict[str, list[tuple[int, float]]]
    tags: dict[str, str]
    status: str


def log_session(uri: str, results: Results, report_path: str | None, test_seconds: dict[str, float]) -> str:
    """Logs a session to the store at `uri`: its run, a nested run per training test, the report.

    Args:
        results: what the report was made of.
        report_path: the markdown report, whose folder of the same name holds its plots and
            results.json; None where no report was written.
        test_seconds: node id -> the seconds of its setup, call and teardown.

    Returns:
        The session run's id.
    """
    import mlflow

    _configure_client(uri)
    with _store_lock(uri):
        client = mlflow.MlflowClient(tracking_uri=uri)
        experiment_id = _experiment_id(client, uri)
    session = session_run(results, report_path)
    session.tags["version.mlflow"] = mlflow.__version__
    session_id = _start_run(client, experiment_id, session, _milliseconds(results.run.started))
    for content in training_runs(results, test_seconds):
        content.tags["mlflow.parentRunId"] = session_id
        client.set_terminated(_start_run(client, experiment_id, content), content.status)
    if report_path is not None:
        _log_report(client, session_id, report_path)
    client.set_terminated(session_id, session.status, end_time=_milliseconds(results.run.finished))
    return session_id


def _configure_client(uri: str) -> None:
    """MLflow's settings for this session's store, where the user has not set them; after `import mlflow`,
    which sets its loggers' levels."""
    # Its INFO lines (a new store's tables, each migration) reach stderr in the middle of pytest's
    # progress line; the lab's own summary line says what was logged.
    if not os.environ.get("MLFLOW_LOGGING_LEVEL"):
        logging.getLogger("mlflow").setLevel(logging.WARNING)
    # MLflow 3 refuses a file: store unless told otherwise; the user chose this one by its URI.
    if _scheme(uri) == "file":
        os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    # A server that went away during the session: seconds of retries after the report, not minutes.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "30")


def _experiment_id(client: MlflowClient, uri: str) -> str:
    """The lab's experiment in the store, made on first use (a SQLite store's artifacts beside it)."""
    from mlflow.exceptions import MlflowException

    name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or EXPERIMENT
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    artifacts = os.path.join(_store_folder(uri), ARTIFACTS_FOLDER) if _scheme(uri) == "sqlite" else None
    try:
        return client.create_experiment(name, artifact_location=artifacts)
    except MlflowException:
        # Another session on the same store may have made it in between.
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


def session_run(results: Results, report_path: str | None) -> RunContent:
    """The session's run: what the user chose as parameters, the machine as tags, its seconds and outcomes."""
    header = results.run
    return RunContent(
        name=_run_name(header, report_path),
        params=session_params(header),
        metrics=session_metrics(results),
        series={},
        tags=session_tags(header),
        status="FINISHED" if header.complete else "KILLED" if header.killed else "FAILED",
    )


def session_params(header: RunHeader) -> dict[str, str]:
    """Profile, seeds, data, weights, and every option not at its default, as typed."""
    chosen = {
        "profile": header.profile,
        "seeds": ",".join(map(str, header.seeds or [header.seed])),
        "data": header.data_source_description,
        "dataset": header.dataset_description,
        "weights": header.weights_description,
        **header.options,
    }
    return {name: value for name, value in chosen.items() if value is not None}


def session_tags(header: RunHeader) -> dict[str, str]:
    """The machine and how the run went: versions, device, commit, training step, warnings."""
    tags = {
        **{f"version.{package}": version for package, version in header.versions.items()},
        **{
            f"device.{name}": ", ".join(value) if isinstance(value, list) else value
            for name, value in header.device.items()
        },
        "commit": header.commit,
        "replicas": header.replicas,
        "training step": header.training_step,
        "complete": header.complete,
        "incomplete reason": header.incomplete_reason,
        "warnings": "\n".join(header.warnings) or None,
    }
    return {name: str(value) for name, value in tags.items() if value is not None}


def session_metrics(results: Results) -> dict[str, float]:
    """The session's seconds and how many tests ended each way (`tests_passed`, `tests_not_run`...)."""
    counts = collections.Counter(outcome.outcome.replace(" ", "_") for outcome in results.outcomes)
    metrics = {f"tests_{outcome}": float(count) for outcome, count in counts.items()}
    if results.run.wall_seconds is not None:
        metrics["wall_seconds"] = results.run.wall_seconds
    return metrics


def training_runs(results: Results, test_seconds: dict[str, float]) -> list[RunContent]:
    """A run for each test that trained (recorded a validation accuracy), in the order they recorded."""
    by_test: dict[str, list[Record]] = {}
    for record in results.records:
        by_test.setdefault(record.test, []).append(record)
    outcomes = {outcome.test: outcome for outcome in results.outcomes}
    return [
        RunContent(
            name=test.split("::")[-1],
            params=case_params(test, record, outcomes.get(test)),
            metrics=case_metrics(record, results.validation_sets, test_seconds.get(test)),
            series=case_series(record),
            tags={},
            status="FAILED" if test in outcomes and outcomes[test].outcome == "failed" else "FINISHED",
        )
        for test, records in by_test.items()
        if (record := final_record(records)) is not None
    ]


def final_record(records: list[Record]) -> Record | None:
    """The record of a test's final accuracy (a schedule's summary row over its stages' rows, else the
    last with one); None for a test that recorded none."""
    scored = [record for record in records if record.accuracy() is not None]
    summaries = [record for record in scored if ACCURACY_COLUMNS[0] in record.row]
    return (summaries or scored or [None])[-1]


def case_params(test: str, record: Record, outcome: Outcome | None) -> dict[str, str]:
    """A test's node id and parameters (its outcome's), and its record's experiment, table, seed and key columns."""
    params = {"test": test, "experiment": record.experiment, "table": record.table, "seed": record.seed}
    if outcome is not None:
        params.update(outcome.parameters)
    params.update({column: record.row.get(column) for column in record.keys})
    return {name: str(value) for name, value in params.items()}


def case_metrics(record: Record, validation_sets: list[ValidationSet], seconds: float | None) -> dict[str, float]:
    """A test's final validation accuracy with its 95% interval, and its seconds."""
    metrics = {"final_validation_accuracy": record.accuracy()}
    estimate = accuracy_estimate(record, validation_sets)
    if estimate is not None:
        metrics.update(final_validation_accuracy_low=estimate.low, final_validation_accuracy_high=estimate.high)
    if seconds is not None:
        metrics["seconds"] = seconds
    return metrics


def accuracy_estimate(record: Record, validation_sets: list[ValidationSet]) -> statistics.Estimate | None:
    """The record's accuracy with its interval over its validation images; None where it kept no count."""
    correctness = findings.correctness_of([record], validation_sets)
    if correctness is None and record.validation_images:
        correctness = statistics.Correctness.from_count(record.accuracy(), record.validation_images)
    return statistics.estimate_accuracy(correctness) if correctness else None


def case_series(record: Record) -> dict[str, list[tuple[int, float]]]:
    """A record's curves: every series of its `Curves` by epoch (1, 2...), and by stage (0: the head alone)."""
    series = {}
    if record.curves:
        series = {name: list(enumerate(values, 1)) for name, values in dataclasses.asdict(record.curves).items()}
    if record.stage_curve:
        series["stage_validation_accuracy"] = list(enumerate(record.stage_curve.accuracy))
    return series


def _start_run(client: MlflowClient, experiment_id: str, content: RunContent, started: int | None = None) -> str:
    """Creates a run holding `content`'s parameters, tags and metrics; returns its id."""
    from mlflow.entities import Metric, Param

    now = int(time.time() * 1000)
    run_id = client.create_run(experiment_id, start_time=started, tags=content.tags, run_name=content.name).info.run_id
    metrics = [Metric(name, float(value), now, 0) for name, value in content.metrics.items()]
    metrics += [
        Metric(name, float(value), now, step) for name, points in content.series.items() for step, value in points
    ]
    client.log_batch(run_id, metrics=metrics, params=[Param(name, value) for name, value in content.params.items()])
    return run_id


def _log_report(client: MlflowClient, run_id: str, report_path: str) -> None:
    """The markdown report, and its folder of plots and results.json under the same name, as its links expect."""
    client.log_artifact(run_id, report_path)
    figures = os.path.splitext(report_path)[0]
    client.log_artifacts(run_id, figures, artifact_path=os.path.basename(figures))


def _run_name(header: RunHeader, report_path: str | None) -> str:
    """The report's name, or where none was written, one made the same way."""
    if report_path is not None:
        return os.path.splitext(os.path.basename(report_path))[0]
    return f"{header.profile}-{header.device_slug}-{header.started}"


def _milliseconds(iso_time: str | None) -> int | None:
    return int(datetime.datetime.fromisoformat(iso_time).timestamp() * 1000) if iso_time else None


class SessionLog:
    """`--mlflow` in one session: its store checked as the session starts, the session logged as it ends.

    Args:
        given: the option's value ("" for `--mlflow` alone).
        report_dir: the reports' folder, or None for `--no-report`.

    Raises:
        LabInputError: the store cannot be had (see `store_uri` and `check_store`).
    """

    def __init__(self, given: str, report_dir: str | None):
        self.uri = store_uri(given, report_dir)
        check_store(self.uri)
        open_store(self.uri)
        # The terminal summary's line: the run logged, or why it was not.
        self.summary: str | None = None

    def log(self, results: Results, report_path: str | None, test_seconds: dict[str, float]) -> bool:
        """Logs the session (`log_session`); returns whether it was logged, and `summary` says where or why not."""
        try:
            run_id = log_session(self.uri, results, report_path, test_seconds)
        # The report is written by now: whatever MLflow or its store raised is named in a line, not a traceback.
        except Exception as error:
            reason = (str(error).strip().splitlines() or [""])[0]
            self.summary = f"mlflow: not logged to {displayed_uri(self.uri)}: {type(error).__name__}: {reason}"
            return False
        self.summary = f"mlflow: run {run_id} in {displayed_uri(self.uri)}"
        return True

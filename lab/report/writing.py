"""A session's results on disk: the report folder, pytest's summary lines, and the command line.

The pytest session calls `make_run_folder` at its start, `write_report_into` and `summary_lines`
at its end; the same report can be regenerated from its results.json without training, the
report of a killed session written from its journal, and two runs compared:

    python -m lab.report reports/RUN/results.json [--benchmark-json FILE] [--out-dir DIR] [--name NAME]
    python -m lab.report reports/RUN                 (results.json, or the journal of a killed session)
    python -m lab.report --compare A.json B.json
    python -m lab.report reports/RUN --mlflow URI    (log a finished run to MLflow afterwards)

from the checkout's folder, or from any other with `PYTHONPATH=PATH/TO/CHECKOUT`: `python -m`
finds `lab` on the import path, which holds the working folder, and requirements.txt installs
no package of the lab.

Rendering lives in `lab.report.render` and `lab.report.plots`, the comparison in `lab.report.compare`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import json
import os
import shutil
import sys
import tempfile

from lab.errors import LabInputError
from lab.measurements import TimeSplit
from lab.report import compare, findings, journal, render, tracking
from lab.report.results import EXPERIMENT_TITLES, BenchmarkResult, Results, ResultsFormatError, RunHeader
from lab.runtime import atomic, timesplit

USAGE_ERROR = 2
WRITE_ERROR = 1
# Names tried for one session's report (`stem`, `stem-2`...) before giving up.
NAME_ATTEMPTS = 100


def write_report(results: Results, report_dir: str, stem: str, latest_name: str | None) -> str:
    """Writes `<stem>.md`, and its figures and `results.json` in a folder `<stem>`: all or nothing.

    The folder is written under a temporary name and renamed into place, then the markdown
    is written atomically; if anything fails, what was written is removed again (with any
    folder this call created), so no report is ever half there.

    Args:
        results: what the session saved.
        report_dir: the reports folder (created if need be).
        stem: the report's name without `.md`; no report of that name may exist yet.
        latest_name: also write the same markdown under this name (`latest-smoke.md`), or None.

    Returns:
        The path of the markdown report.

    Raises:
        FileExistsError: a report named `stem` is already in `report_dir`.
        OSError: the report could not be written; the message names it.
    """
    markdown_path = os.path.join(report_dir, f"{stem}.md")
    figures_dir = os.path.join(report_dir, stem)
    for path in (markdown_path, figures_dir):
        if os.path.lexists(path):
            raise FileExistsError(f"a report named {stem} is already in {report_dir}: {path} exists")
    rendered = render.render(results, figures_link=stem)
    files = {**rendered.figures, "results.json": json.dumps(results.to_json(), indent=2).encode("utf-8")}
    created = _missing_folders(report_dir)
    written: list[str] = []
    try:
        os.makedirs(report_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=f".{stem}.", suffix=".partial", dir=report_dir)
        written.append(staging)
        # Readable by whoever can read the markdown beside it: mkdtemp's folder is private.
        os.chmod(staging, atomic.usual_mode(0o777))
        for name, payload in files.items():
            atomic.atomic_write_bytes(os.path.join(staging, name), payload)
        os.rename(staging, figures_dir)
        written[-1] = figures_dir
        atomic.atomic_write_text(markdown_path, rendered.markdown)
        written.append(markdown_path)
        if latest_name:
            atomic.atomic_write_text(os.path.join(report_dir, latest_name), rendered.markdown)
    except BaseException as error:
        _remove(written, created)
        if isinstance(error, OSError):
            reason = error.strerror or str(error)
            raise OSError(f"cannot write the report {markdown_path} ({reason}); nothing of it was kept") from error
        raise
    return markdown_path


def make_run_folder(report_dir: str, stem: str) -> str:
    """Creates a session's run folder `<report_dir>/<stem>` (or `<stem>-2`... where taken) at its
    start, for its journal; returns its path. The report's figures and results.json join it at the end.

    Raises:
        OSError: the folder cannot be made.
    """
    os.makedirs(report_dir, exist_ok=True)
    for name in [stem, *(f"{stem}-{number}" for number in range(2, NAME_ATTEMPTS + 1))]:
        folder = os.path.join(report_dir, name)
        if os.path.lexists(os.path.join(report_dir, f"{name}.md")):
            continue
        try:
            os.mkdir(folder)
        except FileExistsError:
            continue
        os.chmod(folder, atomic.usual_mode(0o777))
        return folder
    raise OSError(f"{stem} and {NAME_ATTEMPTS - 1} more names are taken in {report_dir}")


def remove_run_folder(folder: str) -> None:
    """Removes the run folder of a session in which no experiment ran: it has nothing to report or resume."""
    shutil.rmtree(folder, ignore_errors=True)


def write_report_into(results: Results, run_folder: str, latest_name: str | None) -> tuple[str | None, str | None]:
    """Writes the report of the session whose run folder (holding its journal) is `run_folder`:
    figures and results.json into it, `<run folder>.md` beside it. Each file appears whole; if
    one cannot be written, those written before it are removed again and the journal stays.

    Returns:
        (the markdown report's path, None), or (None, the error message naming that path).
    """
    report_dir, stem = os.path.split(os.path.abspath(run_folder))
    markdown_path = os.path.join(report_dir, f"{stem}.md")
    written: list[str] = []
    try:
        rendered = render.render(results, figures_link=stem)
        files = {**rendered.figures, "results.json": json.dumps(results.to_json(), indent=2).encode("utf-8")}
        for name, payload in files.items():
            path = os.path.join(run_folder, name)
            atomic.atomic_write_bytes(path, payload)
            written.append(path)
        atomic.atomic_write_text(markdown_path, rendered.markdown)
        written.append(markdown_path)
        if latest_name:
            atomic.atomic_write_text(os.path.join(report_dir, latest_name), rendered.markdown)
    except OSError as error:
        _remove(written, [])
        reason = error.strerror or str(error)
        return None, (f"report not written: cannot write the report {markdown_path} ({reason}); nothing of it was "
                      f"kept; the journal in {run_folder} holds every test that ended")
    return markdown_path, None


def report_stem(run: RunHeader, started: float) -> str:
    """The report's name without `.md`: profile, device, the session's start (UTC) and process id.

    The process id keeps apart two sessions that start in the same second.
    """
    moment = datetime.datetime.fromtimestamp(started, datetime.UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{run.profile}-{run.device_slug}-{moment}-{os.getpid()}"


def write_report_once(results: Results, report_dir: str, stem: str, latest_name: str) -> tuple[str | None, str | None]:
    """Writes the report under `stem`, or `stem-2`, `stem-3`... if that name is taken.

    `write_report` writes all of a report or nothing, so a failure (a full disk)
    leaves no part of it behind.

    Returns:
        (the markdown report's path, None), or (None, the error message naming that path).
    """
    # Taken only by this process's own earlier sessions: the stem holds the process id.
    names = [stem, *(f"{stem}-{number}" for number in range(2, NAME_ATTEMPTS + 1))]
    for name in names:
        try:
            return write_report(results, report_dir, name, latest_name), None
        except FileExistsError:
            continue
        except OSError as error:
            return None, f"report not written: {error}"
    return None, f"report not written: {stem} and {NAME_ATTEMPTS - 1} more names are taken in {report_dir}"


def summary_lines(results: Results) -> list[str]:
    """One line per experiment for pytest's terminal summary: how many results, the best accuracy."""
    by_experiment = render.records_by_experiment(results.records)
    lines = []
    for number, title in EXPERIMENT_TITLES.items():
        records = by_experiment.get(number)
        if not records:
            continue
        accuracies = [
            (record.row.get("validation accuracy", record.row.get("final validation accuracy")), record.label)
            for record in records
            if record.label
        ]
        accuracies = [(accuracy, label) for accuracy, label in accuracies if isinstance(accuracy, float)]
        text = f"{title.split(':')[0]}: {len(records)} results"
        if accuracies:
            accuracy, label = max(accuracies)
            text += f"; best validation accuracy {accuracy:.3f} ({label})"
        lines.append(text)
    return lines


def time_split_line(splits: list[TimeSplit], report_seconds: float | None, journal_seconds: float | None = None) -> str:
    """The session's time split in one line for pytest's terminal summary, with the report's and
    the journal's own seconds."""
    whole = timesplit.total(splits)
    parts = ", ".join(f"{name} {seconds:.1f} s" for name, seconds in render.time_split_parts(whole))
    wall = "s" if any(split.experiment is None for split in splits) else "s summed over xdist workers"
    line = f"time: {parts} (of {whole.total_seconds:.0f} {wall}; per experiment in the report)"
    if report_seconds is not None:
        line += f"; writing the report {report_seconds:.1f} s"
    if journal_seconds:
        line += f", the journal {journal_seconds:.2f} s"
    return line


def load_results(path: str) -> Results:
    """Reads a results.json.

    Raises:
        LabInputError: the file is missing, unreadable, not JSON, or not what a session writes.
    """
    data = _load_json(path, "results file", "a results.json that a pytest session of this suite wrote")
    try:
        return Results.from_json(data)
    except ResultsFormatError as error:
        raise LabInputError(f"{path}: {error}; give a results.json that a pytest session of this suite wrote") from None


def load_run(path: str) -> tuple[Results, str]:
    """The results of a run: its results.json, or, for a session that was killed before it wrote
    one, what its journal holds; and its run folder.

    Args:
        path: a results.json, a run folder, or a journal.

    Raises:
        LabInputError: none of those can be read; the message says why.
    """
    path = os.path.expanduser(path)
    folder = os.path.abspath(path) if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path) and os.path.exists(os.path.join(path, "results.json")):
        return load_results(os.path.join(path, "results.json")), folder
    if os.path.isdir(path) or path.endswith(".jsonl"):
        read = journal.read_journal(path)
        for warning in read.warnings:
            print(f"warning: {warning}", file=sys.stderr)
        return journal.results_of(read), folder
    return load_results(path), folder


def load_benchmarks(path: str) -> list[BenchmarkResult]:
    """The epoch times of experiment 4 in a file written by `pytest --benchmark-json FILE`.

    Raises:
        LabInputError: the file is missing, unreadable, not such a file, or holds no epoch time.
    """
    fix = "the file that `pytest experiments -k epoch_time --benchmark-json FILE` wrote"
    data = _load_json(path, "--benchmark-json file", fix)
    entries = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise LabInputError(f"--benchmark-json {path} has no 'benchmarks' list: give {fix}")
    try:
        benchmarks = [
            BenchmarkResult.from_pytest_benchmark(entry["name"], entry["extra_info"], entry["stats"])
            for entry in entries
            if "mode" in entry.get("extra_info", {})
        ]
    except (KeyError, TypeError, AttributeError) as error:
        raise LabInputError(f"--benchmark-json {path} has a benchmark without {error}: give {fix}") from None
    if not benchmarks:
        raise LabInputError(f"--benchmark-json {path} holds no epoch time of experiment 4: give {fix}")
    return benchmarks


def main(argv: list[str] | None = None) -> int:
    """`python -m lab.report`: regenerates a report, or compares two runs; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m lab.report", description=__doc__.split("\n")[0],
        epilog="From outside the checkout: PYTHONPATH=PATH/TO/CHECKOUT python -m lab.report ...",
    )
    parser.add_argument(
        "results", nargs="?", metavar="RUN",
        help="a results.json that a pytest session saved, a run folder, or its journal.jsonl (a killed session's)",
    )
    parser.add_argument("--benchmark-json", metavar="FILE", help="epoch times from pytest --benchmark-json")
    parser.add_argument(
        "--out-dir", metavar="DIR", help="where to write the report (default: the reports folder holding the results)"
    )
    parser.add_argument("--name", help="the report's file name without .md (default: the run's name + -regenerated)")
    parser.add_argument("--compare", nargs=2, metavar=("A", "B"), help="print two runs' figures side by side")
    parser.add_argument(
        "--mlflow", metavar="URI",
        help="log the run (its results, and its report where there is one) to MLflow instead of writing a report: "
        "for a session whose store failed, or that ran without --mlflow",
    )
    args = parser.parse_args(argv)
    if not args.compare and args.results is None:
        parser.error("give a results.json, a run folder or its journal, or --compare A.json B.json")
    try:
        if args.compare:
            print(compare.compare(load_results(args.compare[0]), load_results(args.compare[1])))
            return 0
        results, run_folder = load_run(args.results)
        if args.mlflow is not None:
            return _log_to_mlflow(args.mlflow, results, run_folder)
        if args.benchmark_json is not None:
            results = dataclasses.replace(results, benchmarks=load_benchmarks(args.benchmark_json))
            # Experiment 4's speedups come from the epoch times: answer them from the new ones.
            results.comparisons = findings.comparisons(results)
        out_dir = os.path.dirname(run_folder) if args.out_dir is None else args.out_dir
        _check_out_dir(out_dir)
        stem = args.name or os.path.basename(run_folder) + "-regenerated"
        if os.path.basename(stem) != stem or stem in (".", ".."):
            raise LabInputError(f"--name {stem} is not a file name: give a name without folders, e.g. --name my-run")
        path = write_report(results, out_dir, stem, latest_name=None)
    except LabInputError as error:
        return _fail(parser, error, USAGE_ERROR)
    except FileExistsError as error:
        return _fail(parser, f"{error}: pass --name NAME or --out-dir DIR, or delete it", USAGE_ERROR)
    except OSError as error:
        return _fail(parser, error, WRITE_ERROR)
    print(path)
    return 0


def _log_to_mlflow(uri: str, results: Results, run_folder: str) -> int:
    """Logs a finished run to the MLflow store at `uri`, as `--mlflow` would have at its end."""
    session_log = tracking.SessionLog(uri, os.path.dirname(run_folder))
    markdown = run_folder + ".md"
    logged = session_log.log(results, markdown if os.path.isfile(markdown) else None, {})
    print(session_log.summary)
    return 0 if logged else WRITE_ERROR


def _load_json(path: str, what: str, fix: str):
    if not path:
        raise LabInputError(f"the {what} path is empty: give {fix}")
    try:
        with open(path, encoding="utf-8") as stream:
            text = stream.read()
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or error
        raise LabInputError(f"cannot read {what} {path} ({reason}): give {fix}") from None
    if not text.strip():
        raise LabInputError(f"{what} {path} is empty: give {fix}")
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise LabInputError(f"{what} {path} is not JSON ({error}): give {fix}") from None


def _check_out_dir(out_dir: str) -> None:
    """A usage error, before anything is created, if `out_dir` cannot be a folder."""
    if not out_dir:
        raise LabInputError("--out-dir is empty: give a folder for the report")
    existing = os.path.abspath(out_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise LabInputError(f"--out-dir {out_dir}: {existing} is a file, not a folder: give a folder for the report")


def _missing_folders(folder: str) -> list[str]:
    """`folder` and those of its parents that do not exist yet, deepest first."""
    missing = []
    folder = os.path.abspath(folder)
    while not os.path.exists(folder):
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing


def _remove(written: list[str], created_folders: list[str]) -> None:
    """Removes what a failed `write_report` wrote, then the folders it created, if empty."""
    for path in reversed(written):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    for folder in created_folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


def _fail(parser: argparse.ArgumentParser, message, status: int) -> int:
    print(f"{parser.prog}: error: {message}", file=sys.stderr)
    return status


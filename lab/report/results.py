"""What a session measured, as typed records: the recorder, the session, the report and
`--compare` all read and write these, and results.json is their plain-JSON form."""

from __future__ import annotations

import dataclasses
from typing import Any

from lab.measurements import Curves, LearningRateSearch, StageCurve, TimeSplit, ValidationSet
from lab.report.statistics import Comparison

EXPERIMENT_TITLES = {
    1: "Experiment 1: the lab CNN on tf_flowers",
    2: "Experiment 2: its convolutions reused on CIFAR-10",
    3: "Experiment 3: a pretrained ImageNet backbone",
    4: "Experiment 4: freezing the backbone",
    5: "Experiment 5: gradual unfreezing",
}


# The columns that hold a row's validation accuracy, most final first.
ACCURACY_COLUMNS = ("final validation accuracy", "validation accuracy")


class ResultsFormatError(ValueError):
    """A results.json that is not what a session writes."""


@dataclasses.dataclass(frozen=True)
class Table:
    """A report table, declared once in the experiment that fills it.

    Args:
        title: the table's heading in the report.
        keys: the columns that identify a row (backbone, strategy, stage...): `--compare`
            pairs the rows of two runs by them, and repeated seeds group by them.
    """

    title: str
    keys: tuple[str, ...]


@dataclasses.dataclass
class Record:
    """One row of one report table, as a test recorded it.

    Args:
        experiment: 1..5, from the test module's `experiment` marker.
        table: the table's title.
        keys: the table's key columns (see `Table`).
        row: column -> value, in the table's column order.
        label: names the case in plots ("" when it has no curve).
        curves: accuracy per epoch, for the learning-curve plot.
        stage_curve: accuracy per stage, for the stage plot.
        test: the pytest node id that recorded it.
        seed: the seed the test ran with.
        rate_curves: parameter group -> the learning rate it used in each epoch (None where
            it did not train), for the learning-rate plot.
        validation_set: the name of the `ValidationSet` its accuracy was measured on.
        validation_images: how many validation images that accuracy counts (for its interval).
        predictions: the class predicted for each of those images, in their order (for paired
            comparisons of two arms on the same images).
        rate_search: the learning-rate range test the row reports, for its plot.
    """

    experiment: int
    table: str
    keys: tuple[str, ...]
    row: dict[str, Any]
    label: str = ""
    curves: Curves | None = None
    stage_curve: StageCurve | None = None
    test: str = ""
    seed: int | None = None
    rate_curves: dict[str, list[float | None]] | None = None
    validation_set: str | None = None
    validation_images: int | None = None
    predictions: list[int] | None = None
    rate_search: LearningRateSearch | None = None

    def key(self) -> tuple[str, ...]:
        """The values of the key columns, as text: the row's identity within its table."""
        return tuple(str(self.row.get(column)) for column in self.keys)

    def accuracy(self) -> float | None:
        """The row's accuracy on its validation images (its last, for a schedule of stages), if any."""
        for column in ACCURACY_COLUMNS:
            value = self.row.get(column)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
        return None

    @classmethod
    def from_json(cls, item: dict) -> Record:
        """Reads a record's plain-JSON form (`dataclasses.asdict`): results.json, or what an
        xdist worker sent in its test report."""
        curves = item.get("curves")
        stage_curve = item.get("stage_curve")
        rate_search = item.get("rate_search")
        return cls(
            **{
                **item,
                "keys": tuple(item.get("keys", ())),
                "curves": Curves(**curves) if curves else None,
                "stage_curve": StageCurve(**stage_curve) if stage_curve else None,
                "rate_search": LearningRateSearch(**rate_search) if rate_search else None,
            }
        )


@dataclasses.dataclass
class BenchmarkResult:
    """pytest-benchmark's statistics for one epoch-time case of experiment 4.

    Args:
        test: the test's name.
        backbone: the backbone timed.
        mode: `unfrozen`, `frozen` or `frozen-cached`.
        image_size: input side in pixels.
        images_per_epoch: images in one timed epoch.
        median, mean, min, max: seconds per epoch over the timed rounds.
        rounds: timed epochs (after an untimed warm-up).
        round_seconds: the seconds of each timed epoch (for the interval of a speedup).
        extra: anything else the test measured (`feature_extraction_seconds`, ...).
    """

    test: str
    backbone: str
    mode: str
    image_size: int
    images_per_epoch: int
    median: float
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    rounds: int | None = None
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    round_seconds: list[float] | None = None

    @classmethod
    def from_pytest_benchmark(cls, name: str, extra_info: dict[str, Any], stats: dict[str, Any]) -> BenchmarkResult:
        """One case from pytest-benchmark: a test's name, `extra_info` and statistics.

        Args:
            name: the test's name.
            extra_info: what the test put in `benchmark.extra_info`; `backbone`, `mode`,
                `image_size` and `images_per_epoch` are required, the rest goes to `extra`.
            stats: pytest-benchmark's statistics (`median` required; `mean`, `min`, `max`,
                `rounds` kept when present), as in a `--benchmark-json` file.

        Raises:
            KeyError: a required entry is missing.
        """
        extra = dict(extra_info)
        return cls(
            test=name,
            backbone=extra.pop("backbone"),
            mode=extra.pop("mode"),
            image_size=extra.pop("image_size"),
            images_per_epoch=extra.pop("images_per_epoch"),
            median=stats["median"],
            mean=stats.get("mean"),
            min=stats.get("min"),
            max=stats.get("max"),
            rounds=stats.get("rounds"),
            round_seconds=stats.get("data"),
            extra=extra,
        )


def checked_predictions(validation_set: ValidationSet, table: Table, row: dict, predictions) -> list[int]:
    """`predictions` as plain ints, after checking that they are one class per image of
    `validation_set` and that their accuracy is `row`'s.

    Raises:
        ValueError: they are not, which would make every paired comparison of the row wrong.
    """
    predictions = [int(value) for value in predictions]
    labels = validation_set.labels
    if len(predictions) != len(labels):
        raise ValueError(f"{table.title}: {len(predictions)} predictions for the {len(labels)} images of "
                         f"{validation_set.name}")
    accuracy = Record(0, table.title, table.keys, row).accuracy()
    correct = sum(predicted == label for predicted, label in zip(predictions, labels, strict=True))
    if accuracy is not None and abs(correct / len(labels) - accuracy) > 1e-6:
        raise ValueError(f"{table.title}: the predictions' accuracy {correct / len(labels)} is not the "
                         f"recorded {accuracy}")
    return predictions


@dataclasses.dataclass
class Outcome:
    """How one selected test ended: passed, failed, skipped, or not run.

    Args:
        test: the test's node id, for people to read; nothing is parsed out of it.
        outcome: `passed`, `failed`, `skipped` or `not run`.
        reason: why it was skipped or failed, or did not run.
        experiment: the experiment it belongs to (its module's `experiment` marker); None for a
            test of no experiment, or one that did not run under xdist.
        parameters: its parametrization (`seed`, `backbone_name`, `strategy`...) and the
            parameters its `arm` marker names (experiment 4's `mode`), as text: what the
            Findings match arms by.
    """

    test: str
    outcome: str
    reason: str = ""
    experiment: int | None = None
    parameters: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class EarlierSession:
    """The session whose journal a `--resume` session took its finished tests from.

    Args:
        journal: the journal's path, as the report shows paths.
        started: when that session started (UTC, ISO 8601).
        commit: the commit it ran, which may differ from this session's (fix, then resume).
        tests: how many of this report's tests ended in it.
    """

    journal: str
    started: str | None
    commit: str | None
    tests: int


@dataclasses.dataclass
class HostInfo:
    """One machine of a session spread over xdist workers (`-n`, `--tx ssh=...`).

    Args:
        name: the host (`localhost` for this machine's own workers).
        workers: its xdist workers (`gw0`...), a worker that died marked so.
        device: its device summary (`lab.runtime.environment.device_summary`), empty where
            no worker of it could say.
        versions: its library versions.
    """

    name: str
    workers: list[str]
    device: dict[str, Any] = dataclasses.field(default_factory=dict)
    versions: dict[str, str] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunHeader:
    """The run's settings and machine: everything the report says above its tables."""

    profile: str
    seed: int
    data_source: str
    data_source_description: str
    weights_description: str
    # What experiments 3-5 ran on (`DatasetSpec.describe`); None in reports from before --dataset.
    dataset_description: str | None = None
    options: dict[str, str] = dataclasses.field(default_factory=dict)
    profile_settings: dict[str, Any] = dataclasses.field(default_factory=dict)
    started: str | None = None
    finished: str | None = None
    wall_seconds: float | None = None
    commit: str | None = None
    versions: dict[str, str] = dataclasses.field(default_factory=dict)
    device: dict[str, Any] = dataclasses.field(default_factory=dict)
    device_slug: str = "unknown"
    replicas: int | None = None
    benchmarks_note: str | None = None
    warnings: list[str] = dataclasses.field(default_factory=list)
    complete: bool = True
    incomplete_reason: str | None = None
    # Ended by a signal (SIGTERM, Ctrl-C) or killed outright, rather than by itself: MLflow's KILLED.
    killed: bool = False
    seeds: list[int] = dataclasses.field(default_factory=list)
    # Which Adam ran and whether XLA compiled the steps (`environment.training_step`); None in
    # reports from before --adam and --xla.
    training_step: str | None = None
    # Where this session resumed an earlier one (`--resume`); None for a session of its own.
    resumed_from: EarlierSession | None = None
    # The machines of a session spread over xdist workers; empty for one process.
    hosts: list[HostInfo] = dataclasses.field(default_factory=list)

    @classmethod
    def from_json(cls, data: dict) -> RunHeader:
        """Reads its plain-JSON form (`dataclasses.asdict`)."""
        earlier = data.get("resumed_from")
        return cls(**{
            **data,
            "resumed_from": EarlierSession(**earlier) if earlier else None,
            "hosts": [HostInfo(**host) for host in data.get("hosts", [])],
        })

    @property
    def options_description(self) -> str:
        """The non-default options, as the user would type them."""
        return ", ".join(f"{name} {value}".strip() for name, value in self.options.items()) or "defaults"


@dataclasses.dataclass(frozen=True)
class BaselineRow:
    """One row of this session set against the same row of a baseline run (`--baseline`).

    Args:
        experiment: 1..5.
        row: the row as the report names it (table, key values).
        this_run, baseline: each side's accuracy with its 95% interval (or `-`).
        comparison: the paired verdict (`worse than the baseline`, ...); for an epoch time, the
            ratio of the baseline's time to this run's.
    """

    experiment: int
    row: str
    this_run: str
    baseline: str
    comparison: Comparison


@dataclasses.dataclass
class Baseline:
    """What `--baseline` set this session against: the run, and every row compared.

    Args:
        source: the baseline's results.json (or run folder), as the report shows paths.
        started: when the baseline session started.
        commit: the commit it ran.
        differing: every setting that differs, `--epochs 2 / 8` (this run / the baseline): the
            change being tested.
        rows: each accuracy row against the baseline's.
        epoch_times: experiment 4's epoch times against the baseline's, as ratios (reported, never gating).
    """

    source: str
    started: str | None
    commit: str | None
    differing: list[str] = dataclasses.field(default_factory=list)
    rows: list[BaselineRow] = dataclasses.field(default_factory=list)
    epoch_times: list[BaselineRow] = dataclasses.field(default_factory=list)

    def worse(self) -> list[BaselineRow]:
        """The accuracy rows whose verdict is "worse than the baseline"."""
        return [row for row in self.rows if row.comparison.verdict == WORSE]

    @classmethod
    def from_json(cls, data: dict) -> Baseline:
        def rows(items):
            return [BaselineRow(**{**item, "comparison": comparison_from_json(item["comparison"])}) for item in items]

        return cls(**{**data, "rows": rows(data.get("rows", [])), "epoch_times": rows(data.get("epoch_times", []))})


# The verdicts of a row against the baseline (`lab.report.baseline`).
WORSE, BETTER = "worse than the baseline", "better than the baseline"


def comparison_from_json(item: dict) -> Comparison:
    """A `Comparison` from its plain-JSON form."""
    return Comparison(**{
        **item,
        "n_rounds": tuple(item["n_rounds"]) if item.get("n_rounds") else None,
        "discordant": tuple(item["discordant"]) if item.get("discordant") else None,
    })


@dataclasses.dataclass
class Results:
    """Everything a session saved: the run, its records, benchmarks and test outcomes, the
    validation sets the records predicted, the comparisons the findings come from, and where
    the session's time went."""

    run: RunHeader
    records: list[Record] = dataclasses.field(default_factory=list)
    benchmarks: list[BenchmarkResult] = dataclasses.field(default_factory=list)
    outcomes: list[Outcome] = dataclasses.field(default_factory=list)
    validation_sets: list[ValidationSet] = dataclasses.field(default_factory=list)
    comparisons: list[Comparison] = dataclasses.field(default_factory=list)
    time_split: list[TimeSplit] = dataclasses.field(default_factory=list)
    baseline: Baseline | None = None

    def to_json(self) -> dict:
        """The plain-JSON form written as results.json."""
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: Any) -> Results:
        """Reads what `to_json` wrote.

        Raises:
            ResultsFormatError: `data` is not a results.json of this suite.
        """
        if not isinstance(data, dict) or not isinstance(data.get("run"), dict):
            raise ResultsFormatError("not a results.json of this suite: it has no 'run' object")
        try:
            return cls(
                run=RunHeader.from_json(data["run"]),
                records=[Record.from_json(item) for item in data.get("records", [])],
                benchmarks=[BenchmarkResult(**item) for item in data.get("benchmarks", [])],
                outcomes=[Outcome(**item) for item in data.get("outcomes", [])],
                validation_sets=[ValidationSet(**item) for item in data.get("validation_sets", [])],
                comparisons=[comparison_from_json(item) for item in data.get("comparisons", [])],
                time_split=[TimeSplit(**item) for item in data.get("time_split", [])],
                baseline=Baseline.from_json(data["baseline"]) if data.get("baseline") else None,
            )
        except (TypeError, AttributeError, KeyError) as error:
            raise ResultsFormatError(f"not a results.json of this suite: {error}") from None


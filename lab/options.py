"""The lab's command-line options, each declared once: flag, type, default, choices, help, report.

`Options` is a frozen dataclass whose every field is one option of the "transfer-learning lab"
group of `pytest --help`. Its declaration says all that is said about the option anywhere:

- pytest's `addoption` arguments (pytest_lab/plugin.py adds them in one loop, `addoption_arguments`);
- its value, read from pytest in one call (`Options.read(config.getoption)`), or given as keywords
  (`lab.config.build_config(seed=3, ...)`), whose checks it then passes;
- how the report's header lists it when it is not the default (`Options.given`): as the user
  would type it, or, where `shown` says so, in the run's resolved form (every seed of `--seeds 3`).

Adding an option is two edits: its field here, and its use (read `run.options.NAME`, or, for a
value that needs checking or resolving, a `RunConfig` field that `build_config` fills).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from lab.finetune.stage_cache import DEFAULT_CACHE_BUDGET
from lab.inputs import data
from lab.inputs.datasets import DatasetSpec
from lab.networks.optimizers import DISCRIMINATIVE_FACTOR, LR_SCHEDULES
from lab.networks.training_step import ADAM_CHOICES, XLA_CHOICES
from lab.profiles import PROFILES
from lab.report.tracking import displayed_uri
from lab.runtime import distribution

WEIGHTS_CHOICES = ("imagenet", "none")
DISTRIBUTE_CHOICES = ("default", "mirrored", "multiworker")
CACHED_CHOICES = ("auto", "off")
# Block k below the head learns at rate / F**k: past this factor the base's blocks are all but
# frozen, and the discriminative strategies turn into head-only ones.
MAX_LR_FACTOR = 100.0


class ResolvedRun(Protocol):
    """What the header reads of the run's checked settings (a `lab.config.RunConfig`, which
    imports this module, so it is named here by what it holds)."""

    seeds: tuple[int, ...]
    backbones: tuple[str, ...] | None
    dataset: DatasetSpec
    cache_budget: int


# How the header shows a value: (the option's value, the run's checked settings) -> text, or
# None where the run's value is the default after all (2048M is --cache-budget's 2G).
Shown = Callable[[Any, ResolvedRun], "str | None"]


def option(
    flag: str,
    default: Any,
    help: str,
    *,
    type: type | None = None,
    choices: tuple[str, ...] | None = None,
    metavar: str | None = None,
    shown: Shown | None = None,
    const: str | None = None,
    changes_results: bool = True,
) -> Any:
    """One option's declaration: a dataclass field of `Options`.

    Args:
        flag: the command line's name, `--run-eagerly`.
        default: its value when not given; a False default makes it a switch (`store_true`).
        help: its line in `pytest --help`.
        type: `int` or `float` for a number; strings otherwise.
        choices: the values it accepts (pytest refuses others; `build_config` checks them too).
        metavar: the placeholder `pytest --help` shows for its value.
        shown: how the report's header shows a non-default value, where not as typed.
        const: its value when the flag is given without one, which makes the value optional.
        changes_results: whether a record can differ with its value; `--resume` refuses a
            journal whose options that do differ from this session's.
    """
    metadata = {
        "flag": flag, "help": help, "type": type, "choices": choices, "metavar": metavar, "shown": shown,
        "const": const, "changes_results": changes_results,
    }
    return dataclasses.field(default=default, metadata=metadata)


def _absolute(value: str, run: ResolvedRun) -> str:
    return os.path.abspath(value)


def _seeds(value: str, run: ResolvedRun) -> str:
    return ",".join(map(str, run.seeds))


def _backbones(value: str, run: ResolvedRun) -> str:
    return ",".join(run.backbones or ())


def _dataset(value: str, run: ResolvedRun) -> str:
    return run.dataset.folder if run.dataset.classes_sorted else run.dataset.name


def _tracking_uri(value: str, run: ResolvedRun) -> str:
    return displayed_uri(value)


def _cache_budget(value: str, run: ResolvedRun) -> str | None:
    return f"{run.cache_budget / 2**20:g}M" if run.cache_budget != DEFAULT_CACHE_BUDGET else None


@dataclasses.dataclass(frozen=True)
class Options:
    """Every option of the lab as given: pytest's parsed values, or `build_config`'s keywords.

    The first eight keep `build_config`'s old positional order. Values are unchecked here;
    `lab.config.build_config` checks them and resolves what needs resolving into a `RunConfig`.
    """

    profile: str = option(
        "--profile", "smoke", choices=tuple(sorted(PROFILES)),
        help="smoke: tiny subsets and sizes for a CPU (default); full: the lab's own settings, for a GPU",
    )
    data_source: str | None = option(
        "--data-source", None, choices=data.SOURCES,
        help="where images come from (default: folder when --data-dir is given, else the embedded "
        "sample for the smoke profile and tfds for the full one)",
    )
    data_dir: str | None = option(
        "--data-dir", None, metavar="PATH", shown=_absolute,
        help="a folder with flower_photos/<class>/* and cifar10/<class>/* (the layout of ../shared/data); "
        "default: $LAB_DATA_DIR",
    )
    # None, not 0: a list of --seeds given with --seed is an error, so --seed must show it was given.
    seed: int | None = option("--seed", None, type=int, help="seeds Python, NumPy and TensorFlow (default 0)")
    subset: int | None = option(
        "--subset", None, type=int, metavar="N", help="training images per dataset, overriding the profile"
    )
    backbone_names: str | None = option(
        "--backbones", None, metavar="NAME[,NAME...]", shown=_backbones,
        help="backbones for experiments 3-5: any keras.applications network by Keras's name "
        "(ResNet50, EfficientNetB0, ConvNeXtTiny, MobileNetV3Small...), or the lab's hand-written "
        "resnet50, vgg16, mobilenet (alpha 0.25), mobilenet_v2 (alpha 0.35) (default: the profile's)",
    )
    weights: str = option(
        "--weights", "imagenet", choices=WEIGHTS_CHOICES,
        help="backbone weights: imagenet (a --weights-dir file, Keras's cache or a download) or none (random)",
    )
    weights_dir: str | None = option(
        "--weights-dir", None, metavar="PATH", shown=_absolute,
        help="a folder holding Keras's official no-top weights files under their own names; "
        "default: $LAB_WEIGHTS_DIR",
    )
    seeds: str = option(
        "--seeds", "1", metavar="N|S,S...", shown=_seeds,
        help="run every training case once per seed: N seeds from --seed on (default 1), or the "
        "seeds listed (0,1,2; not with --seed), at most 100; accuracies then carry their spread over seeds",
    )
    split_per_seed: bool = option(
        "--split-per-seed", False,
        help="every seed draws its own train/validation split of the loaded images (stratified by "
        "class; the same for every arm of that seed), so that a verdict covers other validation "
        "images too; a publisher's fixed test split (tensorflow-datasets) stays as it is",
    )
    dataset: str = option(
        "--dataset", "tf_flowers", metavar="NAME|PATH", shown=_dataset,
        help="what experiments 3-5 run on: a tensorflow-datasets name whose examples are an image and a "
        "class label (beans, oxford_flowers102, cats_vs_dogs...; mock data with --data-source mock), "
        "or a folder of <class>/* images (default: tf_flowers; experiments 1 and 2 keep the lab's)",
    )
    report_dir: str | None = option(
        "--report-dir", None, metavar="PATH", shown=_absolute, changes_results=False,
        help="where the session's run folder (its journal, results.json and figures) and markdown report go "
        "(default: $LAB_REPORT_DIR, else reports/)",
    )
    no_report: bool = option("--no-report", False, changes_results=False, help="write no report and no journal")
    resume: str | None = option(
        "--resume", None, metavar="RUN", shown=_absolute, changes_results=False,
        help="finish a session that ended early: take the tests its journal (RUN: its run folder "
        "reports/<run>/, or RUN/journal.jsonl) holds as passed or skipped, run the rest of this selection, and "
        "write one report of both; refused where the profile, seeds, an option that changes results or a "
        "library version differs",
    )
    deterministic: bool = option(
        "--deterministic", False,
        help="TensorFlow op determinism (deterministic kernels are slower: timings are not comparable)",
    )
    distribute: str = option(
        "--distribute", "default", choices=DISTRIBUTE_CHOICES,
        help="mirrored: tf.distribute.MirroredStrategy over every GPU (or logical CPU device); "
        "multiworker: tf.distribute.MultiWorkerMirroredStrategy over the machines TF_CONFIG names",
    )
    mixed_precision: bool = option("--mixed-precision", False, help="mixed_float16 compute (for GPUs)")
    xla: str = option(
        "--xla", "auto", choices=XLA_CHOICES,
        help="XLA compilation of every training step: auto (default) is Keras's own compile(jit_compile="
        "'auto'): on for a GPU, off on a CPU, under --deterministic and with --run-eagerly; on or off decide",
    )
    adam: str = option(
        "--adam", "fused", choices=ADAM_CHOICES,
        help="Adam's update: fused (default) is TensorFlow's one ApplyAdam kernel per weight (lab/networks/adam.py; "
        "far less to trace, the same update to float32 rounding; Keras's own under --distribute); "
        "keras is keras.optimizers.Adam",
    )
    epochs: int | None = option(
        "--epochs", None, type=int, metavar="N",
        help="every epoch count of the profile (at least 2), for a quick structural run",
    )
    image_size: int | None = option(
        "--image-size", None, type=int, metavar="N",
        help="input side of every backbone of experiments 3-5 (at least 32), overriding the profile's",
    )
    run_eagerly: bool = option(
        "--run-eagerly", False,
        help="run Keras's training steps as plain Python, without tracing a graph: on a CPU much faster "
        "for a few steps of a large backbone, slower per step (timings are not comparable)",
    )
    lr_schedule: str = option(
        "--lr-schedule", "constant", choices=LR_SCHEDULES,
        help="experiment 5's learning rate within each compile: constant (default), cosine (a linear "
        "warm-up over a tenth of the steps, then cosine decay) or triangular (ULMFiT's slanted triangle)",
    )
    lr_factor: float = option(
        "--lr-factor", DISCRIMINATIVE_FACTOR, type=float, metavar="F",
        help="discriminative learning rates of experiment 5: each block down from the head learns F "
        f"times slower (default {DISCRIMINATIVE_FACTOR}, ULMFiT's; 1 to {MAX_LR_FACTOR:g})",
    )
    lr_find: bool = option(
        "--lr-find", False,
        help="before experiment 5, a learning-rate range test (lab/finetune/lr_finder.py, fastai's valley rule) on "
        "each backbone's head, per seed: its suggestion becomes the head's rate and every stage's follows from it "
        "as from 1e-3 (the profile's rate stays where the loss never falls)",
    )
    augment: bool = option(
        "--augment", False,
        help="random horizontal flips, rotations and zooms of 10%% in front of every backbone classifier "
        "(experiments 3-5; training only); cases that train on cached features are skipped",
    )
    early_stopping: int | None = option(
        "--early-stopping", None, type=int, metavar="PATIENCE",
        help="experiment 5: stop each fit after PATIENCE epochs without a better validation accuracy "
        "and keep its best epoch's weights (default: off, every strategy trains its whole budget)",
    )
    cached: str = option(
        "--cached", "auto", choices=CACHED_CHOICES,
        help="experiment 5: auto (default) runs each stage's frozen layers once over the images and "
        "trains the rest on their cached activations, where that is the same training (else end to "
        "end, saying why); off always trains end to end, to time the two against each other",
    )
    cache_budget: str = option(
        "--cache-budget", "2G", metavar="SIZE", shown=_cache_budget,
        help="the most memory one stage's cached activations may take: bytes, or K, M, G, T, "
        "such as 512M or 2G (default 2G); a stage over it trains end to end",
    )
    image_cache_limit: str = option(
        "--image-cache-limit", "10G", metavar="SIZE", changes_results=False,
        help="the most disk the decoded-image cache ($LAB_CACHE_DIR) keeps: past it, the least recently "
        "used entries no process is reading are deleted (default 10G; python -m lab.inputs.image_cache "
        "lists or clears it)",
    )
    baseline: str | None = option(
        "--baseline", None, metavar="RUN", shown=_absolute, changes_results=False,
        help="set every accuracy row against the same row of an earlier run (RUN: its results.json or run "
        "folder) on the same validation images: a paired verdict per row (Holm over the session), and "
        "experiment 4's epoch times as ratios",
    )
    fail_if_worse: bool = option(
        "--fail-if-worse", False, changes_results=False,
        help="with --baseline: exit 1 when any accuracy row is worse than the baseline's, naming the rows",
    )
    tensorboard_dir: str | None = option(
        "--tensorboard", None, metavar="DIR", shown=_absolute, changes_results=False,
        help="write a TensorBoard log of every fit to DIR/<test module>/<test>/seed<N>",
    )
    mlflow: str | None = option(
        "--mlflow", None, metavar="URI", const="", shown=_tracking_uri, changes_results=False,
        help="log the session to MLflow once its report is written: one run (options, versions, device; the "
        "report as artifacts) with a nested run per training test; URI: sqlite:///PATH, file:PATH or a "
        "tracking server's http(s)://HOST:PORT (default: sqlite:///<report dir>/mlflow.db)",
    )
    worker_timeout: float = option(
        "--worker-timeout", distribution.DEFAULT_WORKER_TIMEOUT, type=float, metavar="SECONDS", changes_results=False,
        help="--distribute multiworker: how long to wait for every other machine TF_CONFIG names to "
        "accept a connection, then stop naming those that did not "
        f"(default {distribution.DEFAULT_WORKER_TIMEOUT:g})",
    )

    @classmethod
    def read(cls, value_of: Callable[[str], Any]) -> Options:
        """The options as `value_of(name)` gives each field's: pytest's `config.getoption`, which
        holds each under its field's name (`addoption_arguments`'s `dest`)."""
        return cls(**{field.name: value_of(field.name) for field in declarations()})

    def given(self, run: ResolvedRun) -> dict[str, str]:
        """Flag -> value of every option not at its default, as the report's header lists them.

        A switch's value is empty; a number is written as Python's `g` format writes it; an option
        with a `shown` is written as its `shown` says (the run's seeds, an absolute path...).
        """
        listed = {}
        for field in declarations():
            value = getattr(self, field.name)
            if value == field.default:
                continue
            shown = field.metadata["shown"]
            text = shown(value, run) if shown else _typed(value)
            if text is not None:
                listed[field.metadata["flag"]] = text
        return listed

    def result_options(self) -> dict[str, Any]:
        """Flag -> value as given, of every option that can change a record (`changes_results`)."""
        return {
            field.metadata["flag"]: getattr(self, field.name)
            for field in declarations()
            if field.metadata["changes_results"]
        }

    def choice_errors(self) -> Iterator[str]:
        """`unknown --weights 'x': use one of imagenet, none` for every value outside its choices.

        pytest refuses them itself; these reach `build_config` only through its keywords.
        """
        for field in declarations():
            value, choices = getattr(self, field.name), field.metadata["choices"]
            if choices and value is not None and value not in choices:
                yield f"unknown {field.metadata['flag']} {value!r}: use one of {', '.join(choices)}"


def declarations() -> tuple[dataclasses.Field, ...]:
    """Every option's declaration, in `pytest --help`'s order."""
    return dataclasses.fields(Options)


def flag_of(name: str) -> str:
    """The command line's flag of option field `name` (`backbone_names` -> `--backbones`)."""
    return next(field.metadata["flag"] for field in declarations() if field.name == name)


def addoption_arguments() -> Iterator[tuple[str, dict[str, Any]]]:
    """(flag, keyword arguments) of `group.addoption` for every option, in order."""
    for field in declarations():
        arguments: dict[str, Any] = {"dest": field.name, "help": field.metadata["help"]}
        if field.default is False:
            arguments["action"] = "store_true"
        else:
            arguments["default"] = field.default
            for key in ("type", "choices", "metavar", "const"):
                if field.metadata[key] is not None:
                    arguments[key] = field.metadata[key]
            if field.metadata["const"] is not None:
                arguments["nargs"] = "?"
        yield field.metadata["flag"], arguments


def _typed(value: Any) -> str:
    """A value as typed: empty for a switch, `g` format for a number."""
    if isinstance(value, bool):
        return ""
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)

"""The run's settings, from the command line, checked before any data is read."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings

from lab.errors import LabInputError
from lab.finetune import stage_cache
from lab.inputs import data, datasets, image_cache, sample
from lab.inputs.datasets import DatasetSpec
from lab.networks import backbones
from lab.networks.optimizers import DISCRIMINATIVE_FACTOR, LR_SCHEDULES
from lab.options import MAX_LR_FACTOR, Options
from lab.profiles import Profile, get_profile, with_overrides
from lab.runtime import distribution

logger = logging.getLogger(__name__)

# Python's, NumPy's and TensorFlow's seeding all accept exactly this range.
MAX_SEED = 2**32 - 1
# Every seed is scored on the same validation images, whose sampling bounds the intervals:
# past this many seeds they narrow by little, while every training case runs once more per seed.
MAX_SEEDS = 100
# The longest --worker-timeout: a day.
MAX_WORKER_TIMEOUT = 86400.0
# The environment variable that gives each path option its default, as TFDS_DATA_DIR and
# KERAS_HOME do for tensorflow-datasets and Keras; the command line wins over it.
PATH_VARIABLES = {"data_dir": "LAB_DATA_DIR", "weights_dir": "LAB_WEIGHTS_DIR", "report_dir": "LAB_REPORT_DIR"}
# The units of a size option (--cache-budget, --image-cache-limit), binary.
_BYTE_UNITS = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}


@dataclasses.dataclass(frozen=True)
class RunConfig:
    """Everything a session needs to know about what to run and on what.

    Attributes:
        profile: the profile's settings.
        data_source: `sample`, `tfds`, `folder` or `mock`.
        data_dir: the image folder for the folder source.
        dataset: what experiments 3-5 run on (`--dataset`; experiments 1 and 2 keep the lab's).
        seed: the first of `seeds`; seeds the tests that do not train (structure checks,
            epoch timings), which run once whatever `--seeds` says.
        backbones: the backbones named with --backbones, or None for the profile's defaults.
        weights_dir: a folder with official weights files.
        tensorboard_dir: where each fit writes its TensorBoard log, or None for no logs.
        seeds: every training case runs once with each of these (`--seeds`).
        cache_budget: the most bytes one stage's cached activations may take.
        image_cache_limit: the most bytes the image cache keeps (`lab.inputs.image_cache`).
        options: every option as given (`lab.options.Options`), unchecked values included: what
            the report's header lists, and where an option with nothing to resolve is read.
    """

    profile: Profile
    data_source: str
    data_dir: str | None
    dataset: DatasetSpec
    seed: int
    backbones: tuple[str, ...] | None
    weights_dir: str | None
    tensorboard_dir: str | None = None
    seeds: tuple[int, ...] = (0,)
    cache_budget: int = stage_cache.DEFAULT_CACHE_BUDGET
    image_cache_limit: int = image_cache.DEFAULT_SIZE_LIMIT
    options: Options = dataclasses.field(default_factory=Options)

    def backbones_for(self, experiment: str) -> tuple[str, ...]:
        """The backbones experiment `pretrained`, `freeze` or `unfreeze` covers."""
        if self.backbones:
            logger.info("%s experiments run backbones %s (--backbones)", experiment, ", ".join(self.backbones))
            return self.backbones
        chosen = self.profile.default_backbones[experiment]
        logger.info("%s experiments run backbones %s (the %s profile's default)",
                    experiment, ", ".join(chosen), self.profile.name)
        return chosen

    def train_count(self, profile_count: int | None) -> int | None:
        return self.options.subset if self.options.subset is not None else profile_count

    def describe_data(self) -> str:
        if self.data_source == "sample":
            return sample.DESCRIPTION
        if self.data_source == "folder":
            return f"folder {self.data_dir}"
        if self.data_source == "mock":
            return "tensorflow-datasets mock data (random images)"
        return "tensorflow-datasets"


def path_option(option: str, given: str | None, fallback: str | None = None) -> tuple[str | None, str]:
    """Path option `option` (`data_dir`...) and the name a message gives it: the command line's
    value as `--data-dir`, else its environment variable's as `LAB_DATA_DIR`, else `fallback`.

    An empty variable counts as unset. A leading `~` is the user's home, as a shell would expand
    it: a variable set in quotes, or `--report-dir=~/x`, reaches the suite unexpanded.
    """
    flag = "--" + option.replace("_", "-")
    if given is not None:
        return os.path.expanduser(given), flag
    variable = PATH_VARIABLES[option]
    if os.environ.get(variable):
        return os.path.expanduser(os.environ[variable]), variable
    return fallback, flag


def _holds_tests(folder: str) -> bool:
    """Whether `folder` holds pytest's test modules or a conftest.py (a test path, not a log folder)."""
    if not os.path.isdir(folder):
        return False
    return any(name == "conftest.py" or (name.startswith("test_") and name.endswith(".py"))
               for name in os.listdir(folder))


def check_folder(path: str | None, name: str, holds: str) -> None:
    """Checks that a path option, if set, names a folder.

    Raises:
        LabInputError: naming what set it, `--data-dir` or `LAB_DATA_DIR`, and the fix.
    """
    if not path or os.path.isdir(path):
        return
    if name in PATH_VARIABLES.values():
        raise LabInputError(f"{name}={path} is not a folder: set {name} to {holds}, or unset it")
    raise LabInputError(f"{name} {path} is not a folder: give {holds}, or leave {name} out")


def parse_backbones(text: str) -> tuple[str, ...]:
    """The backbone names in a `--backbones` list, in order, each once.

    Raises:
        LabInputError: the list names no backbone, or one that is neither a keras.applications
            network nor a hand-written entry.
    """
    names = [name.strip() for name in text.split(",") if name.strip()]
    if not names:
        raise LabInputError(
            f"--backbones {text!r} names no backbone: give one or more keras.applications names (ResNet50, "
            f"EfficientNetB0...) or the lab's {', '.join(backbones.REGISTRY)}, comma-separated, or leave the "
            "option out for the profile's defaults"
        )
    for name in names:
        backbones.get_backbone(name)
    unique = tuple(dict.fromkeys(names))
    if len(unique) < len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        warnings.warn(
            f"--backbones names {', '.join(repeated)} more than once: each runs once", UserWarning, stacklevel=2
        )
    return unique


def parse_size(text: str, flag: str) -> int:
    """Bytes from a size such as `512M`, `2G` or `1.5G` (binary units), the value of option `flag`.

    Raises:
        LabInputError: the size is unparsable, zero or negative.
    """
    cleaned = text.strip().upper().removesuffix("B").removesuffix("I")
    unit = cleaned[-1:] if cleaned[-1:] in _BYTE_UNITS else ""
    try:
        size = float(cleaned.removesuffix(unit)) * _BYTE_UNITS[unit]
    except ValueError:
        size = None
    if size is None or not 1 <= size < float("inf"):
        raise LabInputError(
            f"{flag} {text!r} is not a positive size: give bytes, or a number and one of the units "
            f"{', '.join(unit for unit in _BYTE_UNITS if unit)} (binary: K is 1024 bytes), such as 512M or 2G"
        )
    return int(size)


def parse_seeds(text: str, first_seed: int | None) -> tuple[int, ...]:
    """The seeds of `--seeds`: a count N (`first_seed`, `first_seed`+1, ...) or a list `0,1,2`.

    Args:
        text: the option's value.
        first_seed: `--seed`, or None where it was not given (a count then starts at 0).

    Raises:
        LabInputError: a count below 1, more than MAX_SEEDS seeds, a seed that is not a whole
            number in 0..MAX_SEED, a seed listed twice, or a list together with `--seed`.
    """
    fix = "give a count (--seeds 3: --seed, --seed+1, --seed+2) or a comma-separated list (--seeds 0,1,2)"
    parts = [part.strip() for part in text.split(",")]
    # A long list is not echoed back whole: its start and its length say which it was.
    given = text if len(text) <= 60 else f"{text[:40]}... ({len(parts):,} entries)"
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise LabInputError(f"--seeds {given!r} is not a count or a list of seeds 0..{MAX_SEED}: {fix}")
    count = int(parts[0]) if "," not in text else len(parts)
    if count > MAX_SEEDS:
        raise LabInputError(
            f"--seeds {given} runs {count:,} seeds, more than {MAX_SEEDS}: every seed is scored on the same "
            "validation images, so past that the intervals do not narrow noticeably, while every training "
            f"case runs once per seed and the session would run for days; give at most {MAX_SEEDS}"
        )
    if "," not in text:
        start = first_seed or 0
        if count < 1:
            raise LabInputError(f"--seeds {text} runs no seed: {fix}")
        if start + count - 1 > MAX_SEED:
            raise LabInputError(f"--seeds {text} from --seed {start} goes past {MAX_SEED}: {fix}")
        return tuple(range(start, start + count))
    if first_seed is not None:
        raise LabInputError(
            f"--seed {first_seed} and the list --seeds {text} both say which seeds run: the list names every "
            f"seed, so drop --seed (or give --seeds a count to start at --seed {first_seed})"
        )
    seeds = tuple(int(part) for part in parts)
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise LabInputError(
            f"--seeds {given} lists {', '.join(map(str, repeated))} more than once: a seed gives the same "
            "figures every time, so list each once"
        )
    if max(seeds) > MAX_SEED:
        raise LabInputError(f"--seeds {given} goes past {MAX_SEED}, the largest seed: {fix}")
    return seeds


def build_config(*args, **kwargs) -> RunConfig:
    """Checks every option and returns the run's settings: the checks that involve several
    options, and each option's own, in one place.

    Takes an `Options` (`build_config(Options.read(config.getoption))`), or an `Options`'s fields
    as arguments (`build_config(profile="smoke", seed=3)`; the first eight also by position).
    `data_dir` and `weights_dir` None take their environment variable's value (`path_option`);
    `seed` None is `--seed` not given.

    Raises:
        LabInputError: naming the option (or the environment variable) to fix.
    """
    options = args[0] if len(args) == 1 and not kwargs and isinstance(args[0], Options) else Options(*args, **kwargs)
    profile = get_profile(options.profile)
    for error in options.choice_errors():
        raise LabInputError(error)
    data_dir, data_dir_name = path_option("data_dir", options.data_dir)
    weights_dir, weights_dir_name = path_option("weights_dir", options.weights_dir)
    data_source = options.data_source
    if data_source is None:
        data_source = "folder" if data_dir else ("sample" if profile.name == "smoke" else "tfds")
    if data_source == "sample" and profile.name == "full":
        raise LabInputError(
            "--data-source sample is too small for --profile full (500 flowers, 2,500 CIFAR-10 images): "
            "use --data-source tfds (the full profile's default) or --data-dir PATH"
        )
    if data_source == "folder" and not data_dir:
        raise LabInputError("--data-source folder needs --data-dir PATH")
    check_folder(data_dir, data_dir_name, "the folder that holds flower_photos/ and cifar10/")
    data_dir = os.path.abspath(data_dir) if data_dir else None
    subset, seed = options.subset, options.seed
    if subset is not None and subset <= 0:
        raise LabInputError(f"--subset must be a positive number of training images, got {subset}")
    if seed is not None and not 0 <= seed <= MAX_SEED:
        raise LabInputError(
            f"--seed must be in 0..{MAX_SEED} (what Python, NumPy and TensorFlow seeding accept), got {seed}"
        )
    seed_list = parse_seeds(options.seeds, seed)
    names = None if options.backbone_names is None else parse_backbones(options.backbone_names)
    if options.image_size is not None:
        for name in names or ():
            backbones.get_backbone(name).check_image_size(options.image_size)
    check_folder(
        weights_dir, weights_dir_name,
        "a folder holding Keras's ImageNet weights files under their own names "
        "(resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5...)",
    )
    if options.distribute == "multiworker":
        distribution.check_multiworker_config()
    # NaN and infinity too: an unbounded wait is the hang the timeout is there to end; a day is
    # longer than anyone starts a command on each machine by hand.
    if not 0 < options.worker_timeout <= MAX_WORKER_TIMEOUT:
        raise LabInputError(
            f"--worker-timeout must be a number of seconds from 0 to {MAX_WORKER_TIMEOUT:g} (a day), got "
            f"{options.worker_timeout:g}: how long --distribute multiworker waits for the other machines of TF_CONFIG"
        )
    tensorboard_dir = options.tensorboard_dir and os.path.expanduser(options.tensorboard_dir)
    if tensorboard_dir and os.path.exists(tensorboard_dir) and not os.path.isdir(tensorboard_dir):
        raise LabInputError(f"--tensorboard {tensorboard_dir} is a file: give a folder for the TensorBoard logs")
    if tensorboard_dir and _holds_tests(tensorboard_dir):
        raise LabInputError(
            f"--tensorboard {options.tensorboard_dir} is a folder of tests: pytest took the test path for the "
            "option's folder; give the log folder with `=` after the test paths: pytest experiments "
            "--tensorboard=logs"
        )
    check_fine_tuning(options.lr_schedule, options.lr_factor, options.early_stopping)
    if options.fail_if_worse and options.baseline is None:
        raise LabInputError(
            "--fail-if-worse needs --baseline RUN: the earlier run (its results.json or run folder) to compare with"
        )
    budget_bytes = parse_size(options.cache_budget, "--cache-budget")
    image_cache_limit = parse_size(options.image_cache_limit, "--image-cache-limit")
    if data_source == "sample":
        # Hashes every sample file (once per process): a broken sample stops the run before it starts.
        sample.verified_root()
    dataset_spec = resolve_dataset(options.dataset, data_source, options.data_source is not None, data_dir)
    return RunConfig(
        profile=with_overrides(profile, options.epochs, options.image_size),
        data_source=data_source,
        data_dir=data_dir,
        dataset=dataset_spec,
        seed=seed_list[0],
        backbones=names,
        weights_dir=os.path.abspath(weights_dir) if weights_dir else None,
        # Every worker of a multi-worker run has the same weights and all-reduced metrics: the
        # chief's logs are the run's, as its report is.
        tensorboard_dir=os.path.abspath(tensorboard_dir) if tensorboard_dir and distribution.is_chief() else None,
        seeds=seed_list,
        cache_budget=budget_bytes,
        image_cache_limit=image_cache_limit,
        options=options,
    )


def resolve_dataset(text: str, data_source: str, source_given: bool, data_dir: str | None) -> DatasetSpec:
    """The dataset of experiments 3-5 (`--dataset`): one of the lab's, another tensorflow-datasets
    name, or a folder of `<class>/*` images.

    The lab's own datasets come from --data-source as experiments 1 and 2 do. Another name
    comes from tensorflow-datasets, or its mock data with `--data-source mock`; the sample and
    the --data-dir folder hold only the lab's.

    Raises:
        LabInputError: an unknown or unsuitable name, a bad folder, or a source that cannot hold it.
    """
    if text in data.DATASETS:
        return data.lab_dataset(text, data_source, data_dir)
    if os.path.isdir(text) or text.startswith(("/", ".", "~")):
        return datasets.folder_dataset(text)
    if data_source in ("sample", "folder"):
        if source_given:
            raise LabInputError(
                f"--data-source {data_source} holds only {' and '.join(data.DATASETS)}, not --dataset {text}: "
                "use --data-source tfds or mock, or give --dataset a folder of <class>/* images"
            )
        data_source = "tfds"
    return datasets.tfds_dataset(text, data_source)


def check_fine_tuning(lr_schedule: str, lr_factor: float, early_stopping: int | None) -> None:
    """Checks the fine-tuning options of experiment 5.

    Raises:
        LabInputError: naming the option to fix.
    """
    if lr_schedule not in LR_SCHEDULES:
        raise LabInputError(f"unknown --lr-schedule {lr_schedule!r}: use one of {', '.join(LR_SCHEDULES)}")
    if not 1 <= lr_factor <= MAX_LR_FACTOR:
        raise LabInputError(
            f"--lr-factor must be a number from 1 to {MAX_LR_FACTOR:g}, got {lr_factor}: below 1 lower blocks "
            f"would learn faster than the head, and above {MAX_LR_FACTOR:g} the base's top block learns at "
            f"under a hundredth of the head's rate and lower ones at all but zero (inf: exactly zero), which "
            f"makes the discriminative strategies head-only (1 gives every block the head's rate; ULMFiT uses "
            f"{DISCRIMINATIVE_FACTOR})"
        )
    if early_stopping is not None and early_stopping < 1:
        raise LabInputError(
            f"--early-stopping must be a patience of at least 1 epoch, got {early_stopping}: "
            "leave the option out to train every epoch"
        )

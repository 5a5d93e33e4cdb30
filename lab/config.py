"""The run's settings, from the command line, checked before any data is read."""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings

from lab import backbones, data, datasets, distribution, sample, stage_cache
from lab.datasets import DatasetSpec
from lab.errors import LabInputError
from lab.optimizers import DISCRIMINATIVE_FACTOR, LR_SCHEDULES
from lab.profiles import Profile, get_profile, with_overrides

logger = logging.getLogger(__name__)

WEIGHTS_CHOICES = ("imagenet", "none")
# Python's, NumPy's and TensorFlow's seeding all accept exactly this range.
MAX_SEED = 2**32 - 1
# The environment variable that gives each path option its default, as TFDS_DATA_DIR and
# KERAS_HOME do for tensorflow-datasets and Keras; the command line wins over it.
PATH_VARIABLES = {"data_dir": "LAB_DATA_DIR", "weights_dir": "LAB_WEIGHTS_DIR", "report_dir": "LAB_REPORT_DIR"}
DISTRIBUTION_STRATEGIES = ("default", "mirrored", "multiworker")
CACHED_CHOICES = ("auto", "off")


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
        subset: training images per dataset, overriding the profile.
        backbones: the backbones named with --backbones, or None for the profile's defaults.
        weights: `imagenet` or `none`.
        weights_dir: a folder with official weights files.
        deterministic: TensorFlow op determinism on.
        strategy: `default`, `mirrored` or `multiworker`.
        mixed_precision: float16 compute where the device supports it.
        tensorboard_dir: where each fit writes its TensorBoard log, or None for no logs.
        run_eagerly: every tf.function runs as plain Python, untraced (quick structural runs).
        lr_schedule: experiment 5's learning-rate schedule within each compile
            (`lab.optimizers.LR_SCHEDULES`).
        lr_factor: the discriminative division of the learning rate per block going down.
        augment: random flips, rotations and zooms in front of every backbone classifier.
        early_stopping: experiment 5 stops a stage's fit after this many epochs without a
            better validation accuracy, keeping its best weights; None trains every epoch.
        seeds: every training case runs once with each of these (`--seeds`).
        cached: `auto` trains each stage of experiment 5 on its frozen prefix's cached
            activations where that gives the same training, `off` always end to end.
        cache_budget: the most bytes one stage's cached activations may take.
    """

    profile: Profile
    data_source: str
    data_dir: str | None
    dataset: DatasetSpec
    seed: int
    subset: int | None
    backbones: tuple[str, ...] | None
    weights: str
    weights_dir: str | None
    deterministic: bool = False
    strategy: str = "default"
    mixed_precision: bool = False
    tensorboard_dir: str | None = None
    run_eagerly: bool = False
    seeds: tuple[int, ...] = (0,)
    lr_schedule: str = "constant"
    lr_factor: float = DISCRIMINATIVE_FACTOR
    augment: bool = False
    early_stopping: int | None = None
    cached: str = "auto"
    cache_budget: int = stage_cache.DEFAULT_CACHE_BUDGET

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
        return self.subset if self.subset is not None else profile_count

    def describe_data(self) -> str:
        if self.data_source == "sample":
            return sample.DESCRIPTION
        if self.data_source == "folder":
            return f"folder {self.data_dir}"
        if self.data_source == "mock":
            return "tensorflow-datasets mock data (random images)"
        return "tensorflow-datasets"


def path_default(option: str, fallback: str | None = None) -> str | None:
    """The default of path option `option` (`data_dir`...): its environment variable, if set."""
    return os.environ.get(PATH_VARIABLES[option]) or fallback


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


def parse_seeds(text: str, first_seed: int) -> tuple[int, ...]:
    """The seeds of `--seeds`: a count N (`first_seed`, `first_seed`+1, ...) or a list `0,1,2`.

    Raises:
        LabInputError: a count below 1, a seed that is not a whole number in 0..MAX_SEED, or a
            seed listed twice.
    """
    fix = "give a count (--seeds 3: --seed, --seed+1, --seed+2) or a comma-separated list (--seeds 0,1,2)"
    parts = [part.strip() for part in text.split(",")]
    if not all(part.isascii() and part.isdigit() for part in parts):
        raise LabInputError(f"--seeds {text!r} is not a count or a list of seeds 0..{MAX_SEED}: {fix}")
    if "," not in text:
        count = int(parts[0])
        if count < 1:
            raise LabInputError(f"--seeds {text} runs no seed: {fix}")
        if first_seed + count - 1 > MAX_SEED:
            raise LabInputError(f"--seeds {text} from --seed {first_seed} goes past {MAX_SEED}: {fix}")
        seeds = tuple(range(first_seed, first_seed + count))
    else:
        seeds = tuple(int(part) for part in parts)
        repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
        if repeated:
            raise LabInputError(
                f"--seeds {text} lists {', '.join(map(str, repeated))} more than once: a seed gives the same "
                "figures every time, so list each once"
            )
        if max(seeds) > MAX_SEED:
            raise LabInputError(f"--seeds {text} goes past {MAX_SEED}, the largest seed: {fix}")
    return seeds


def build_config(
    profile: str,
    data_source: str | None,
    data_dir: str | None,
    seed: int,
    subset: int | None,
    backbone_names: str | None,
    weights: str,
    weights_dir: str | None,
    deterministic: bool = False,
    strategy: str = "default",
    mixed_precision: bool = False,
    epochs: int | None = None,
    image_size: int | None = None,
    tensorboard_dir: str | None = None,
    run_eagerly: bool = False,
    lr_schedule: str = "constant",
    lr_factor: float = DISCRIMINATIVE_FACTOR,
    augment: bool = False,
    early_stopping: int | None = None,
    seeds: str = "1",
    cached: str = "auto",
    cache_budget: str = "2G",
    dataset: str = "tf_flowers",
) -> RunConfig:
    """Checks every option and returns the run's settings.

    Raises:
        LabInputError: naming the option to fix.
    """
    source_given = data_source is not None
    if data_source is None:
        data_source = "folder" if data_dir else ("sample" if profile == "smoke" else "tfds")
    if data_source not in data.SOURCES:
        raise LabInputError(f"unknown --data-source {data_source!r}: use one of {', '.join(data.SOURCES)}")
    if data_source == "sample" and profile == "full":
        raise LabInputError(
            "--data-source sample is too small for --profile full (500 flowers, 2,500 CIFAR-10 images): "
            "use --data-source tfds (the full profile's default) or --data-dir PATH"
        )
    if data_source == "folder" and not data_dir:
        raise LabInputError("--data-source folder needs --data-dir PATH")
    if data_dir and not os.path.isdir(data_dir):
        raise LabInputError(
            f"--data-dir {data_dir} is not a folder: give the folder that holds flower_photos/ and cifar10/"
        )
    if subset is not None and subset <= 0:
        raise LabInputError(f"--subset must be a positive number of training images, got {subset}")
    if not 0 <= seed <= MAX_SEED:
        raise LabInputError(
            f"--seed must be in 0..{MAX_SEED} (what Python, NumPy and TensorFlow seeding accept), got {seed}"
        )
    seed_list = parse_seeds(seeds, seed)
    names = None if backbone_names is None else parse_backbones(backbone_names)
    if image_size is not None:
        for name in names or ():
            backbones.get_backbone(name).check_image_size(image_size)
    if weights not in WEIGHTS_CHOICES:
        raise LabInputError(f"unknown --weights {weights!r}: use one of {', '.join(WEIGHTS_CHOICES)}")
    if weights_dir and not os.path.isdir(weights_dir):
        raise LabInputError(f"--weights-dir {weights_dir} is not a folder")
    if strategy not in DISTRIBUTION_STRATEGIES:
        raise LabInputError(f"unknown --strategy {strategy!r}: use one of {', '.join(DISTRIBUTION_STRATEGIES)}")
    if strategy == "multiworker":
        distribution.check_multiworker_config()
    if tensorboard_dir and os.path.exists(tensorboard_dir) and not os.path.isdir(tensorboard_dir):
        raise LabInputError(f"--tensorboard {tensorboard_dir} is a file: give a folder for the TensorBoard logs")
    check_fine_tuning(lr_schedule, lr_factor, early_stopping)
    if cached not in CACHED_CHOICES:
        raise LabInputError(f"unknown --cached {cached!r}: use one of {', '.join(CACHED_CHOICES)}")
    budget_bytes = stage_cache.parse_cache_budget(cache_budget)
    if data_source == "sample":
        # Hashes every sample file (once per process): a broken sample stops the run before it starts.
        sample.verified_root()
    dataset_spec = resolve_dataset(dataset, data_source, source_given, data_dir)
    return RunConfig(
        profile=with_overrides(get_profile(profile), epochs, image_size),
        data_source=data_source,
        data_dir=os.path.abspath(data_dir) if data_dir else None,
        dataset=dataset_spec,
        seed=seed_list[0],
        subset=subset,
        backbones=names,
        weights=weights,
        weights_dir=os.path.abspath(weights_dir) if weights_dir else None,
        deterministic=deterministic,
        strategy=strategy,
        mixed_precision=mixed_precision,
        # Every worker of a multi-worker run has the same weights and all-reduced metrics: the
        # chief's logs are the run's, as its report is.
        tensorboard_dir=os.path.abspath(tensorboard_dir) if tensorboard_dir and distribution.is_chief() else None,
        run_eagerly=run_eagerly,
        seeds=seed_list,
        lr_schedule=lr_schedule,
        lr_factor=lr_factor,
        augment=augment,
        early_stopping=early_stopping,
        cached=cached,
        cache_budget=budget_bytes,
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
    if not lr_factor >= 1:
        raise LabInputError(
            f"--lr-factor must be at least 1, got {lr_factor}: below 1 lower blocks would learn faster "
            f"than the head (1 gives every block the head's rate; ULMFiT uses {DISCRIMINATIVE_FACTOR})"
        )
    if early_stopping is not None and early_stopping < 1:
        raise LabInputError(
            f"--early-stopping must be a patience of at least 1 epoch, got {early_stopping}: "
            "leave the option out to train every epoch"
        )

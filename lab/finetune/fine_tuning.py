"""Fine-tuning a classifier stage by stage, as experiment 5 does: the stages of a strategy,
each stage's optimizer and learning rates, and what each stage trained.

`FineTuning` is the building block (Lightning's `BaseFinetuning` is the model): a strategy is
its stages plus an optimizer per stage; iterating it thaws each stage's layers (BatchNormalization
kept frozen, Lightning's `train_bn=False`), and `StageTraining.train` compiles, fits and records.
Behind that call a stage trains on the cached activations of its frozen layers where that is
the same training (`lab.finetune.stage_cache`), end to end otherwise, and a configuration trained again
(another seed) reuses its compiled models (`lab.finetune.reuse`), so that its graphs are traced once.

A stage trains either at one rate (every trainable weight, Adam) or at discriminative rates
(a sub-optimizer per parameter group, `lab.networks.optimizers`). Either follows the run's learning-rate
schedule over the steps of its compile. What each group actually used is recorded per epoch
by `lab.networks.optimizers.GroupLearningRates` and lined up across stages by `RateCurves`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator, Sequence

import keras
import numpy as np

from lab.finetune import freezing, lr_finder, stage_cache
from lab.finetune.freezing import Stage
from lab.finetune.reuse import CompiledRun
from lab.inputs.data import ImageData
from lab.measurements import FitResult, LearningRateSearch, StageCurve
from lab.networks import models, optimizers
from lab.networks.adam import adam
from lab.networks.backbones import Backbone
from lab.networks.training import fit
from lab.runtime import prediction, timesplit

# The name of a stage's single Adam, and so of its one parameter group in the rate records.
SINGLE_GROUP = "all"


def steps_per_epoch(train_images: int, batch_size: int) -> int:
    """Training steps of one epoch: the last batch may be smaller, it still counts."""
    return math.ceil(train_images / batch_size)


def stage_optimizer(
    model: keras.Model, backbone: Backbone, stage: Stage, schedule: str, factor: float, steps: int
) -> keras.optimizers.Optimizer:
    """A fresh optimizer for `stage`: build one for every compile, never reuse one.

    Args:
        model: the classifier being compiled, its layers' `trainable` set for the stage.
        backbone: the registry entry of its base.
        stage: the stage; its `learning_rate` is the head's rate (discriminative) or every
            weight's.
        schedule: one of `lab.networks.optimizers.LR_SCHEDULES`.
        factor: the discriminative division per block going down.
        steps: training steps the compile spans, for the schedule.
    """
    if stage.discriminative:
        groups = optimizers.parameter_groups(model, backbone, stage.learning_rate, factor)
        return optimizers.discriminative_optimizer(groups, schedule=schedule, steps=steps)
    return adam(
        optimizers.learning_rate_schedule(schedule, stage.learning_rate, steps), name=SINGLE_GROUP
    )


def stage_rates(model: keras.Model, backbone: Backbone, stage: Stage, factor: float) -> dict[str, float]:
    """The (peak) rate of each parameter group that trains in `stage`, top down.

    Read from the model's trainable weights after `set_base_trainable`: a discriminative
    stage lists the head and each block with a trainable weight; a single-rate stage is one
    group, `SINGLE_GROUP`.
    """
    if not stage.discriminative:
        return {SINGLE_GROUP: stage.learning_rate}
    trainable = {weight.path for weight in model.trainable_weights}
    return {
        group.name: group.learning_rate
        for group in optimizers.parameter_groups(model, backbone, stage.learning_rate, factor)
        if trainable.intersection(group.variable_paths)
    }


def describe_rates(rates: dict[str, float]) -> str:
    """`head 1.0e-03, top_conv 3.8e-04, ...`: a report cell."""
    return ", ".join(f"{name} {rate:.1e}" for name, rate in rates.items())


@dataclasses.dataclass
class RateCurves:
    """The rate each parameter group used per epoch, lined up over a run's consecutive fits.

    Attributes:
        epochs: epochs added so far.
        rates: group name -> one entry per epoch: the rate of the group's last step in that
            epoch, or None where the group did not train (frozen, or a stage without it).
    """

    epochs: int = 0
    rates: dict[str, list[float | None]] = dataclasses.field(default_factory=dict)

    def add_fit(self, per_epoch: dict[str, list[float]], epochs: int) -> None:
        """Appends one fit of `epochs` epochs, from `GroupLearningRates.per_epoch` of that fit.

        A group with fewer entries than `epochs` missed its first epochs: only steps that
        loss scaling skips (at the start, while it lowers the scale) leave a whole epoch out.
        """
        for name, trained in per_epoch.items():
            if len(trained) > epochs:
                raise ValueError(f"group {name} has rates for {len(trained)} epochs of a {epochs}-epoch fit")
            self.rates.setdefault(name, [None] * self.epochs)
        for name, curve in self.rates.items():
            trained = per_epoch.get(name, [])
            curve += [None] * (epochs - len(trained)) + list(trained)
        self.epochs += epochs


@dataclasses.dataclass(frozen=True)
class FineTuningOptions:
    """The run's settings a fine-tuning follows.

    Attributes:
        batch_size: images per batch.
        lr_schedule: the rate within each compile (`lab.networks.optimizers.LR_SCHEDULES`).
        lr_factor: the discriminative division per block going down.
        cached: train a stage on its frozen prefix's cached activations where that is the same
            training; False always trains end to end.
        cache_budget: the most bytes one stage's cached activations may take.
        early_stopping: stop a stage's fit after this many epochs without a better validation
            accuracy, keeping its best weights; None trains every epoch.
    """

    batch_size: int
    lr_schedule: str = "constant"
    lr_factor: float = optimizers.DISCRIMINATIVE_FACTOR
    cached: bool = True
    cache_budget: int = stage_cache.DEFAULT_CACHE_BUDGET
    early_stopping: int | None = None


@dataclasses.dataclass(frozen=True)
class HeadRateSearch:
    """A head's learning-rate search, and the searched model's state before and after it.

    Attributes:
        search: the range test.
        state_before, state_after: `lab.finetune.lr_finder.state_digest` of the model searched (its
            weights and its optimizer's variables): the search must leave them as they were.
    """

    search: LearningRateSearch
    state_before: str
    state_after: str

    @property
    def head_rate(self) -> float:
        """The head's rate to train at: the suggestion, or the profile's where there is none."""
        return self.search.suggestion if self.search.found else freezing.HEAD_LEARNING_RATE


def search_head_rate(
    classifier: keras.Model,
    data: ImageData,
    seed: int,
    options: FineTuningOptions,
    earlier_passes: stage_cache.PrefixActivations | None = None,
) -> HeadRateSearch:
    """Smith's range test (`lab.finetune.lr_finder`) on the head of `classifier`, its base frozen.

    The head trains on the base's pooled features where the stage cache allows (the pass
    experiments 3 and 5 share), else end to end; `classifier` is the search's own, not one a
    strategy trains afterwards, though its state comes back byte for byte all the same.
    """
    freezing.freeze_base(classifier)
    stage = (
        stage_cache.cache_stage(classifier, data, options.batch_size, options.cache_budget, None, earlier_passes)
        if options.cached
        else stage_cache.CachedStage("--cached off", None, data=data)
    )
    model = stage.top if stage.cached else classifier
    models.compile_for_classification(model, freezing.HEAD_LEARNING_RATE)
    before = lr_finder.state_digest(model)
    search = lr_finder.find_learning_rate(model, stage.train_batches(options.batch_size, seed))
    return HeadRateSearch(search, before, lr_finder.state_digest(model))


@dataclasses.dataclass(frozen=True)
class StageResult:
    """What one stage trained and measured.

    Attributes:
        number: the stage's place in its strategy, from 0 (the head).
        stage: the stage.
        fit: the stage's fit.
        rates: the rate configured for each parameter group that trained, top down.
        rates_used: group -> the rate it applied at the last step of each epoch it trained in.
        path: how it trained: cached (and whether its prefix pass was shared), or end to end and why.
        compiled: `new`, `reused` (an earlier run's compiled model) or `kept` (the last stage's).
        prefix_seconds: running the frozen prefix over the images, where the stage did.
        trainable_tensors: the classifier's trainable tensors in this stage.
        trainable_parameters: their parameters.
        classifier_difference: the largest difference between the classifier's validation
            predictions and those of the model that trained (0 when that model is the classifier).
    """

    number: int
    stage: Stage
    fit: FitResult
    rates: dict[str, float]
    rates_used: dict[str, list[float]]
    path: str
    compiled: str
    prefix_seconds: float
    trainable_tensors: int
    trainable_parameters: int
    classifier_difference: float

    @property
    def seconds(self) -> float:
        return self.prefix_seconds + sum(self.fit.epoch_seconds)

    def summary(self) -> dict:
        """The stage's report columns, after its key columns."""
        tracing_seconds, training_seconds = timesplit.fit_seconds(self.fit.epoch_seconds)
        return {
            "thawed": self.stage.name,
            "rates": describe_rates(self.rates),
            "trainable tensors": self.trainable_tensors,
            "trainable parameters": self.trainable_parameters,
            "validation accuracy": self.fit.final_validation_accuracy,
            "path": self.path,
            "compiled": self.compiled,
            "prefix s": self.prefix_seconds,
            "tracing s": tracing_seconds,
            "training s": training_seconds,
            "seconds": self.seconds,
            **self.fit.early_stopping_summary(),
        }


class FineTuning:
    """A strategy's stages, trained one after another on one classifier.

    Iterate it: each step thaws the next stage's layers and gives its `StageTraining`, whose
    `train` compiles (or reuses) the stage's model and fits it. Results accumulate in `results`.

    Args:
        run: the classifier's compiled run (`lab.finetune.reuse.CompiledRuns.start`).
        backbone: the registry entry of its base.
        data: the images it trains on.
        stages: the strategy's stages (`lab.finetune.freezing.strategy_stages`).
        seed: shuffles each stage's batches (stage `n` with `seed + n`).
        options: the run's settings.
        earlier_passes: this process's prefix passes, shared with other strategies and seeds.
    """

    def __init__(
        self,
        run: CompiledRun,
        backbone: Backbone,
        data: ImageData,
        stages: Sequence[Stage],
        seed: int,
        options: FineTuningOptions,
        earlier_passes: stage_cache.PrefixActivations | None = None,
    ):
        self.run, self.backbone, self.data, self.stages = run, backbone, data, list(stages)
        self.seed, self.options, self.earlier_passes = seed, options, earlier_passes
        self.results: list[StageResult] = []
        self.rate_curves = RateCurves()
        self._spans = freezing.compile_spans(self.stages)
        # A stage's layers below the cut have not trained yet, nor have a later stage's, lower
        # down: the first prefix pass that runs gives the later stages' activations too.
        self._cuts = stage_cache.stage_cuts(self.classifier, [set(stage.trainable_layers) for stage in self.stages])
        self._span: tuple[keras.Model, stage_cache.CachedStage] | None = None

    @property
    def classifier(self) -> keras.Model:
        return self.run.classifier

    def __iter__(self) -> Iterator[StageTraining]:
        for number, stage in enumerate(self.stages):
            freezing.set_base_trainable(self.classifier, set(stage.trainable_layers))
            yield StageTraining(self, number, stage)

    def summary(self) -> dict:
        """The strategy's report columns after its key columns: its budget and final accuracy."""
        return {
            "train images": self.data.train_count,
            "epochs": sum(stage.epochs for stage in self.stages),
            "rates (last stage)": describe_rates(self.results[-1].rates),
            "final validation accuracy": self.results[-1].fit.final_validation_accuracy,
            "cached stages": f"{sum(result.path.startswith('cached') for result in self.results)} of "
                             f"{len(self.stages)}",
            "training seconds": sum(result.seconds for result in self.results),
        }

    def stage_curve(self) -> StageCurve:
        """Validation accuracy after each stage."""
        return StageCurve(
            stages=[str(result.number) for result in self.results],
            accuracy=[result.fit.final_validation_accuracy for result in self.results],
        )

    def _compiled_span(self, number: int, stage: Stage) -> tuple[keras.Model, stage_cache.CachedStage, bool, bool]:
        """(the model stage `number` trains, its stage cache, whether it compiled now, whether reused)."""
        if not self._spans[number]:
            model, cache = self._span
            return model, cache, False, False
        if self.options.cached:
            cache = stage_cache.cache_stage(
                self.classifier, self.data, self.options.batch_size, self.options.cache_budget,
                self.run.split(number), self.earlier_passes, self._cuts[number + 1:],
            )
        else:
            cache = stage_cache.CachedStage("--cached off", None, data=self.data)
        steps = self._spans[number] * steps_per_epoch(self.data.train_count, self.options.batch_size)
        # The optimizer is built from the classifier's parameter groups: a cached top's weights
        # are the classifier's, with the same paths.
        model, reused = self.run.span_model(number, cache, lambda: stage_optimizer(
            self.classifier, self.backbone, stage, self.options.lr_schedule, self.options.lr_factor, steps,
        ))
        self._span = model, cache
        return model, cache, True, reused


class StageTraining:
    """One stage of a `FineTuning`, its layers thawed, ready to train.

    Attributes:
        number: the stage's place in its strategy, from 0.
        stage: the stage.
        rates: the rate configured for each parameter group that trains in it, top down.
    """

    def __init__(self, tuning: FineTuning, number: int, stage: Stage):
        self.tuning, self.number, self.stage = tuning, number, stage
        self.rates = stage_rates(tuning.classifier, tuning.backbone, stage, tuning.options.lr_factor)

    def train(self, verbose: int = 0, callbacks: Sequence[keras.callbacks.Callback] = ()) -> StageResult:
        """Compiles (or reuses) the stage's model, fits it for the stage's epochs, and records the rates."""
        tuning, options = self.tuning, self.tuning.options
        model, cache, compiled_now, reused = tuning._compiled_span(self.number, self.stage)
        prefix_seconds = cache.prefix_seconds if compiled_now else 0.0
        recorder = optimizers.GroupLearningRates()
        result = fit(
            model, cache.train_batches(options.batch_size, tuning.seed + self.number), self.stage.epochs,
            cache.validation_batches(options.batch_size), verbose, [*callbacks, recorder],
            early_stopping_patience=options.early_stopping,
        )
        tuning.rate_curves.add_fit(recorder.per_epoch, len(result.loss))
        stage_result = StageResult(
            self.number, self.stage, result, self.rates, recorder.per_epoch, cache.path,
            ("reused" if reused else "new") if compiled_now else "kept", prefix_seconds,
            len(tuning.classifier.trainable_weights), freezing.trainable_parameter_count(tuning.classifier),
            self._classifier_difference(model, cache),
        )
        tuning.results.append(stage_result)
        return stage_result

    def _classifier_difference(self, model: keras.Model, cache: stage_cache.CachedStage) -> float:
        """How far the classifier's validation predictions are from the trained model's."""
        if not cache.cached:
            return 0.0
        batch_size = self.tuning.options.batch_size
        with timesplit.evaluating():
            on_images = prediction.predict(self.tuning.classifier, self.tuning.data.batches("validation", batch_size))
            trained = prediction.predict(model, cache.validation_batches(batch_size))
        return float(np.max(np.abs(on_images - trained)))

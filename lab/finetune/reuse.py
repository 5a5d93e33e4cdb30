"""Trace once: train a compiled model again from fresh weights, instead of building and compiling anew.

Every `compile()` drops the model's traced `train_function`, and on a CPU the first epoch after
it is mostly graph tracing. A run of the same architecture with the same trainable layers
(another seed, another strategy's identical stage) can reuse the compiled model: put that run's
initial weights and the optimizer's starting state into it, and fit with the graph already
traced. The optimizer's state is restored by its variables (step counts, moments, and the
learning rate where it is a variable), so a `MultiOptimizer` of per-group rates restarts as it
was compiled; a plain optimizer's constant rate can also be changed without a retrace.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Hashable

import keras
import numpy as np

from lab.finetune import freezing
from lab.finetune.stage_cache import CachedStage, PrefixActivations, StageModels, cache_stage
from lab.inputs.data import ImageData
from lab.networks import models
from lab.runtime import keras_internals


@dataclasses.dataclass
class ReusableModel:
    """A compiled model and its optimizer's state before the first step, to start training over.

    Attributes:
        model: the compiled model.
        optimizer_start: the optimizer's variables before any step (iteration 0, zero moments,
            the compiled learning rate), in `optimizer.variables` order.
        trainable_paths: the paths of the variables the traced train step updates.
    """

    model: keras.Model
    optimizer_start: list[np.ndarray]
    trainable_paths: tuple[str, ...]

    @classmethod
    def of(cls, model: keras.Model) -> ReusableModel:
        """Records the starting state of a model compiled and not yet trained.

        Builds the optimizer's variables now, for the model's trainable variables, as `fit`
        would at its first call.

        Raises:
            ValueError: the model is not compiled, or its optimizer has already taken steps.
        """
        optimizer = getattr(model, "optimizer", None)
        if optimizer is None:
            raise ValueError(f"compile {model.name} before making it reusable")
        if int(optimizer.iterations.numpy()) != 0:
            raise ValueError(f"{model.name} has already trained; make it reusable right after compile()")
        if not optimizer.built:
            optimizer.build(model.trainable_variables)
        return cls(
            model,
            [variable.numpy() for variable in optimizer.variables],
            tuple(variable.path for variable in model.trainable_variables),
        )

    def restart(self, weights: list[np.ndarray] | None, learning_rate: float | None = None) -> None:
        """Puts `weights` and the optimizer's starting state into the model, keeping its traced graph.

        Args:
            weights: every weight of the model, as `keras.Model.get_weights()` gives them (for
                instance from the same architecture freshly built with another seed), or None
                to keep the weights it has: for the top of a cached stage, whose layers are the
                classifier's, put the weights into the classifier.
            learning_rate: a new constant learning rate for a plain optimizer, or None for the
                compiled rates (the only choice for a `MultiOptimizer`, which has a rate per group,
                or for a rate schedule).

        Raises:
            ValueError: the model's trainable variables changed since `of`: that takes a
                compile(); or `learning_rate` is given for a MultiOptimizer or a rate schedule.
        """
        trainable = tuple(variable.path for variable in self.model.trainable_variables)
        if trainable != self.trainable_paths:
            raise ValueError(
                f"the trainable variables of {self.model.name} changed since it was compiled: "
                "compile it again rather than reusing it"
            )
        optimizer = self.model.optimizer
        # compile() wraps the optimizer in a LossScaleOptimizer under mixed_float16.
        inner = getattr(optimizer, "inner_optimizer", optimizer)
        if learning_rate is not None and (
            isinstance(inner, keras.optimizers.MultiOptimizer)
            or keras_internals.learning_rate_schedule(inner) is not None
        ):
            raise ValueError(
                f"{self.model.name} trains with per-group rates or a rate schedule: restart it with "
                "learning_rate=None for its compiled rates, or compile it again for others"
            )
        if weights is not None:
            self.model.set_weights(weights)
        # Variable by variable: `set_weights` of a MultiOptimizer refuses a sub-optimizer that
        # owns no trainable variable at this stage (a block still frozen), which was never built.
        for variable, start in zip(optimizer.variables, self.optimizer_start, strict=True):
            variable.assign(start)
        if learning_rate is not None:
            inner.learning_rate = learning_rate
        self.model.reset_metrics()


@dataclasses.dataclass
class CompiledSpan:
    """The model one compile span of a fine-tuning run trains, compiled once.

    Attributes:
        reusable: the compiled model: a cached stage's top, or a view of the whole classifier.
        split: the cached stage's prefix and top (`lab.finetune.stage_cache.CachedStage.split`), or None
            for a span trained end to end.
    """

    reusable: ReusableModel
    split: StageModels | None


@dataclasses.dataclass
class CompiledRun:
    """A classifier and the model each of its compile spans trains, to train the same configuration again.

    Attributes:
        classifier: the classifier every span's model shares its layers with.
        spans: compile span (the number of its first stage) -> its compiled model.
        reused: whether this run started from an earlier run's compiled models.
        first_weights: the classifier's weights before the first run trained, kept where a
            later run draws only its head (`CompiledRuns.start`); else None.
    """

    classifier: keras.Model
    spans: dict[int, CompiledSpan] = dataclasses.field(default_factory=dict)
    reused: bool = False
    first_weights: list[np.ndarray] | None = None

    def split(self, number: int) -> StageModels | None:
        """The cached split an earlier run compiled span `number` with, for `cache_stage`; None if none."""
        span = self.spans.get(number)
        return span and span.split

    def span_model(
        self, number: int, cache: CachedStage, optimizer: Callable[[], keras.optimizers.Optimizer] | None = None
    ) -> tuple[keras.Model, bool]:
        """The compiled model that span `number` trains, and whether an earlier run compiled it.

        The model is the cached stage's top where `cache` is cached, else a Functional model on
        the classifier's own layers, so that each span keeps its own compile and traced
        functions. A span compiled for an earlier run with the same split restarts from its
        optimizer's starting state; its weights are the classifier's.

        Args:
            number: the span's first stage.
            cache: this span's `lab.finetune.stage_cache.cache_stage`, given the span's earlier split.
            optimizer: makes the span's fresh optimizer, for a span compiled here; None for
                `lab.networks.models.compile_for_classification`'s own.
        """
        span = self.spans.get(number)
        if span is not None and span.split == cache.split:
            span.reusable.restart(None)
            return span.reusable.model, True
        model = cache.top if cache.cached else keras.Model(
            self.classifier.inputs, self.classifier.outputs, name=f"{self.classifier.name}_span{number}"
        )
        models.compile_for_classification(model, optimizer=optimizer() if optimizer else None)
        self.spans[number] = CompiledSpan(ReusableModel.of(model), cache.split)
        return model, False

    def head_span(
        self, data: ImageData, batch_size: int, budget_bytes: int, earlier_passes: PrefixActivations | None = None
    ) -> tuple[keras.Model, CachedStage]:
        """Freezes the base; the compiled model that trains the head alone (span 0), and its stage.

        The head trains on the base's pooled features, computed once, where `cache_stage`
        allows it; where it refuses (dropout in the base, augmentation, the budget), on the
        images end to end through the frozen base, as a stage of gradual unfreezing does. The
        stage's batches are the ones the model takes, either way.
        """
        freezing.freeze_base(self.classifier)
        stage = cache_stage(self.classifier, data, batch_size, budget_bytes, self.split(0), earlier_passes)
        model, _ = self.span_model(0, stage)
        return model, stage


class CompiledRuns:
    """Compiled runs by configuration: a run of a configuration seen before reuses its models.

    Args:
        keep: whether to keep runs at all; without a second run of any configuration (one
            seed), keeping them would only hold memory.
    """

    def __init__(self, keep: bool):
        self.keep = keep
        self._runs: dict[Hashable, CompiledRun] = {}

    def start(self, key: Hashable, build: Callable[[], keras.Model], head_seed: int | None = None) -> CompiledRun:
        """The run of configuration `key`, starting from the weights `build` gives.

        Args:
            key: everything that decides the architecture, the trainable layers of each
                stage and the optimizers (backbone, input size, strategy, options...).
            build: builds this run's classifier (its seed's weights); the kept run of `key`, if
                any, takes its weights, else it becomes the run's classifier.
            head_seed: the seed `build` gives the head (`lab.networks.models.backbone_classifier`), where
                nothing else of the classifier depends on the seed: a base from a weights file
                and no augmentation. The kept run then takes its first run's starting weights
                with the head drawn for `head_seed`, without building. None: build.
        """
        run = self._runs.get(key)
        if run is None:
            run = CompiledRun(build())
            if self.keep:
                self._runs[key] = run
                if head_seed is not None:
                    run.first_weights = run.classifier.get_weights()
            return run
        if head_seed is not None and run.first_weights is not None:
            run.classifier.set_weights(run.first_weights)
            models.draw_head(run.classifier, head_seed)
        else:
            run.classifier.set_weights(build().get_weights())
        run.reused = True
        return run

"""One backbone of experiments 3-5 with its weights and data, and the classifiers built on it."""

from __future__ import annotations

import dataclasses

import keras

from lab.finetune.reuse import CompiledRun, CompiledRuns
from lab.inputs.data import ImageData
from lab.networks import models
from lab.networks.backbones import Backbone, WeightsSource


@dataclasses.dataclass(frozen=True)
class BackboneCase:
    """One backbone of experiments 3-5, its weights, and their dataset (--dataset) at its input size."""

    backbone: Backbone
    weights: WeightsSource
    data: ImageData
    augment: bool = False

    @property
    def name(self) -> str:
        return self.backbone.name

    @property
    def image_size(self) -> int:
        return self.data.image_size

    def classifier(self, seed: int) -> keras.Model:
        """A new classifier: the backbone with these weights, pooled, under a softmax head seeded
        with `seed` (behind the augmentation layers with --augment)."""
        return models.backbone_classifier(
            self.backbone, self.image_size, self.data.num_classes, self.weights.path, self.augment, head_seed=seed
        )

    def run(self, compiled_models: CompiledRuns, purpose: str, seed: int) -> CompiledRun:
        """This case's run of `purpose` ("frozen base", a strategy...) for `seed` (`lab.finetune.reuse.CompiledRuns`).

        Another seed of the run reuses the models compiled for the first. With a base from a
        weights file and no augmentation only the head depends on the seed, so it is drawn
        again in the kept classifier instead of building a new one.
        """
        head_only_seeded = self.weights.path is not None and not self.augment
        return compiled_models.start(
            (self.name, self.image_size, self.weights.kind, purpose),
            lambda: self.classifier(seed),
            head_seed=seed if head_only_seeded else None,
        )

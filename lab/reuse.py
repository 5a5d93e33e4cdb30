"""Trace once: train a compiled model again from fresh weights, instead of building and compiling anew.

Every `compile()` drops the model's traced `train_function`, and on a CPU the first epoch after
it is mostly graph tracing. A run of the same architecture with the same trainable layers
(another seed, another strategy's identical stage) can reuse the compiled model: put that run's
initial weights and the optimizer's starting state into it, and fit with the graph already
traced. The learning rate is a variable of the optimizer, so it can change without a retrace.
"""

from __future__ import annotations

import dataclasses

import keras
import numpy as np


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
            learning_rate: a new learning rate, or None for the compiled one.

        Raises:
            ValueError: the model's trainable variables changed since `of`: that takes a compile().
        """
        trainable = tuple(variable.path for variable in self.model.trainable_variables)
        if trainable != self.trainable_paths:
            raise ValueError(
                f"the trainable variables of {self.model.name} changed since it was compiled: "
                "compile it again rather than reusing it"
            )
        if weights is not None:
            self.model.set_weights(weights)
        self.model.optimizer.set_weights(self.optimizer_start)
        if learning_rate is not None:
            self.model.optimizer.learning_rate = learning_rate
        self.model.reset_metrics()

"""Every private Keras or TensorFlow name the lab relies on, each behind one small named function.

Written for TensorFlow 2.21.0 and Keras 3.15.1, the versions requirements.txt pins. Neither
library promises these names from one release to the next: under other versions a session's
report header warns once (`version_warning`), and tests/test_keras_internals.py checks each
function on a tiny model, failing by name where an internal moved or changed.

What is reached, and why no public way serves:

- `KerasTensor._keras_history` (`producing_operation`, `output_index`): which operation made a
  symbolic tensor, and which of its outputs it is; the stage cuts and block boundaries of a
  graph are counted from it.
- `Functional._nodes_by_depth` (`graph_nodes`): a model's own graph nodes; its layers may also
  have nodes in other models (a classifier's stage-cache prefix and top), which
  `layer._inbound_nodes` would mix in.
- `keras.src.backend.compute_output_spec` and `Trainer._compute_loss`
  (`build_loss_and_metric_state`): a compiled model's loss and metric state built from
  symbolic tensors, before the first traced training step would build it.
- `Optimizer._learning_rate` (`learning_rate_schedule`): the rate as compiled, a schedule or
  not; the public `learning_rate` gives a schedule's current value.
- `Adam._get_variable_index`, `Adam._momentums`, `Adam._velocities` (`adam_slots`): the
  moments the fused Adam update writes.
- `tensorflow.python.pywrap_tfe.TFE_ContextClearCaches` (`kernel_cache_kept`): TensorFlow's
  global seed setter empties its kernel cache; there is no public way to keep it.
- `keras.src.applications.imagenet_utils.obtain_input_shape` (`input_size_checks_recorded`)
  and `keras.src.utils.file_utils.get_file` (`requested_weights_file`): the input sizes and
  ImageNet weights file a keras.applications constructor states, asked of the constructor
  itself (the download probe of derived backbones).
- `keras.src.applications.<family>` (`application_source_module`): the module that defines a
  constructor, which holds its `preprocess_input` where no public module does (MobileNetV3).
"""

from __future__ import annotations

import contextlib
import importlib
import types
from collections.abc import Callable, Iterator
from unittest import mock

import keras
import tensorflow as tf
from keras.src.applications import imagenet_utils as _imagenet_utils
from keras.src.backend import compute_output_spec as _compute_output_spec
from keras.src.utils import file_utils as _file_utils
from tensorflow.python import pywrap_tfe as _pywrap_tfe

# The versions this module was written for and tested on (requirements.txt's pins).
WRITTEN_FOR = {"TensorFlow": "2.21.0", "Keras": "3.15.1"}


def installed_versions() -> dict[str, str]:
    """The TensorFlow and Keras versions this process runs."""
    return {"TensorFlow": tf.__version__, "Keras": keras.version()}


def version_warning() -> str | None:
    """One line for the report's header where TensorFlow or Keras is not the version this
    module was written for; None where both are."""
    installed = installed_versions()
    differing = [f"{name} {installed[name]}" for name, pinned in WRITTEN_FOR.items() if installed[name] != pinned]
    if not differing:
        return None
    written_for = " and ".join(f"{name} {version}" for name, version in WRITTEN_FOR.items())
    return (
        f"{' and '.join(differing)}: lab/runtime/keras_internals.py reaches private names of {written_for}, which "
        "may have changed; run tests/test_keras_internals.py, or install requirements.txt's versions"
    )


def producing_operation(tensor: keras.KerasTensor) -> keras.Operation:
    """The operation (layer or plain operation) whose call made the symbolic `tensor`."""
    return tensor._keras_history.operation


def output_index(tensor: keras.KerasTensor) -> int:
    """Which output of its `producing_operation` call `tensor` is (0 for a single output)."""
    return tensor._keras_history.tensor_index


def graph_nodes(model: keras.Model) -> list:
    """The nodes of a Functional model's own graph, inputs first (deepest first).

    Each node has `operation`, `is_input` and `input_tensors`. Only this model's: a layer
    shared with other models has nodes in theirs too.
    """
    by_depth = model._nodes_by_depth
    return [node for depth in sorted(by_depth, reverse=True) for node in by_depth[depth]]


def build_loss_and_metric_state(
    model: keras.Model, inputs, labels: keras.KerasTensor, predictions
) -> None:
    """Builds a compiled model's loss and metric state from symbolic tensors, computing nothing.

    Args:
        model: a compiled model.
        inputs: its symbolic inputs, as `fit` passes `x`.
        labels: a symbolic label tensor, as `fit` passes `y`.
        predictions: its symbolic outputs.
    """
    _compute_output_spec(model.compute_metrics, inputs, labels, predictions, sample_weight=None)
    _compute_output_spec(model._compute_loss, inputs, labels, predictions, sample_weight=None, training=False)


def learning_rate_schedule(
    optimizer: keras.optimizers.Optimizer,
) -> keras.optimizers.schedules.LearningRateSchedule | None:
    """The schedule `optimizer` was given as its learning rate; None for a constant rate."""
    rate = optimizer._learning_rate
    return rate if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule) else None


def adam_slots(optimizer: keras.optimizers.Adam, variable) -> tuple[keras.Variable, keras.Variable]:
    """The first and second moment (`m`, `v`) a built Adam keeps for `variable`."""
    index = optimizer._get_variable_index(variable)
    return optimizer._momentums[index], optimizer._velocities[index]


@contextlib.contextmanager
def kernel_cache_kept() -> Iterator[None]:
    """Makes TensorFlow's global-seed setter (`tf.random.set_seed`, which
    `keras.utils.set_random_seed` calls) leave its kernel cache as it is."""
    clear_caches = _pywrap_tfe.TFE_ContextClearCaches
    _pywrap_tfe.TFE_ContextClearCaches = lambda context_handle: None
    try:
        yield
    finally:
        _pywrap_tfe.TFE_ContextClearCaches = clear_caches


@contextlib.contextmanager
def input_size_checks_recorded() -> Iterator[dict[str, int]]:
    """Records the input sizes a keras.applications constructor called inside states.

    Yields a dict that gets `default` and `minimum` (Keras's `default_size` and `min_size`)
    when the constructor checks its input shape, which it does before making any layer.
    """
    declared: dict[str, int] = {}
    obtain_input_shape = _imagenet_utils.obtain_input_shape

    def recording(*args, **kwargs):
        declared.update(default=kwargs["default_size"], minimum=kwargs["min_size"])
        return obtain_input_shape(*args, **kwargs)

    with mock.patch.object(_imagenet_utils, "obtain_input_shape", recording):
        yield declared


class _WeightsRequest(Exception):
    """Stops a constructor at the moment it asks for its weights file."""

    def __init__(self, name: str, url: str | None, file_hash: str | None):
        super().__init__(name)
        self.request = (name, url, file_hash)


def requested_weights_file(build: Callable[[], object]) -> tuple[str, str | None, str | None] | None:
    """The (file name, url, hash) of the weights file `build()` asks Keras for, nothing downloaded.

    `build` constructs a keras.applications network with `weights="imagenet"`; it is stopped
    when it asks for the file. None where it finished without asking.
    """

    def requesting(fname, origin=None, *args, file_hash=None, **kwargs):
        raise _WeightsRequest(fname, origin, file_hash)

    with mock.patch.object(_file_utils, "get_file", requesting):
        try:
            build()
        except _WeightsRequest as stopped:
            return stopped.request
    return None


def application_source_module(constructor: Callable) -> types.ModuleType:
    """The Keras source module (`keras.src.applications.<family>`) that defines a constructor,
    or the function a `functools.partial` wraps."""
    return importlib.import_module(getattr(constructor, "func", constructor).__module__)

"""lab/runtime/keras_internals.py: each private Keras or TensorFlow name the lab reaches still exists and
still gives what the lab expects, checked on tiny models. A failure here names the internal that
moved under a new TensorFlow or Keras; fix that one function, not its callers."""

import functools

import keras
import numpy as np
import pytest

from lab import config
from lab.report import render
from lab.runtime import keras_internals
from pytest_lab.session import LabSession


def _tiny_model():
    inputs = keras.Input((4,), name="pixels")
    hidden = keras.layers.Dense(3, name="hidden")(inputs)
    outputs = keras.layers.Dense(2, activation="softmax", name="scores")(hidden)
    return keras.Model(inputs, outputs, name="tiny")


def test_producing_operation_and_output_index_of_layers_and_plain_operations():
    inputs = keras.Input((4,))
    dense = keras.layers.Dense(4, name="dense")
    left, right = keras.ops.split(dense(inputs), 2, axis=-1)
    total = keras.ops.add(left, right)
    assert keras_internals.producing_operation(inputs).__class__ is keras.layers.InputLayer
    assert keras_internals.producing_operation(left) is keras_internals.producing_operation(right)
    assert keras_internals.producing_operation(left).name.startswith("split")
    assert [keras_internals.output_index(left), keras_internals.output_index(right)] == [0, 1]
    # A plain operation between layers makes tensors too (ConvNeXt's Add): the lab counts it.
    assert type(keras_internals.producing_operation(total)).__name__ == "Add"
    model = keras.Model(inputs, total)
    assert keras_internals.producing_operation(total) in model.operations


def test_graph_nodes_are_the_models_own_inputs_first():
    model = _tiny_model()
    hidden = model.get_layer("hidden")
    # The same layer called in another model: its node there is not `model`'s.
    other_input = keras.Input((4,), name="other")
    keras.Model(other_input, hidden(other_input))
    nodes = keras_internals.graph_nodes(model)
    assert [node.operation.name for node in nodes] == ["pixels", "hidden", "scores"]
    assert [node.is_input for node in nodes] == [True, False, False]
    (hidden_node,) = [node for node in nodes if node.operation is hidden]
    assert [keras_internals.producing_operation(tensor).name for tensor in hidden_node.input_tensors] == ["pixels"]


def test_build_loss_and_metric_state_builds_the_compiled_state_symbolically():
    model = _tiny_model()
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    assert "accuracy/total" not in [variable.path for variable in model.metrics_variables]
    labels = keras.KerasTensor((None,), "int32")
    keras_internals.build_loss_and_metric_state(model, model.inputs[0], labels, model.outputs[0])
    assert {"loss/total", "accuracy/total", "accuracy/count"} <= {variable.path for variable in model.metrics_variables}
    # Nothing was computed: the weights and metrics are as compiled, and training still works.
    assert all(float(keras.ops.sum(variable)) == 0 for variable in model.metrics_variables)
    history = model.fit(np.zeros((4, 4)), np.zeros((4,), np.int64), epochs=1, verbose=0)
    assert set(history.history) == {"loss", "accuracy"}


def test_learning_rate_schedule_tells_a_schedule_from_a_constant_rate():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-3, decay_steps=10, decay_rate=0.5)
    assert keras_internals.learning_rate_schedule(keras.optimizers.Adam(1e-3)) is None
    assert keras_internals.learning_rate_schedule(keras.optimizers.Adam(schedule)) is schedule
    assert keras_internals.learning_rate_schedule(keras.optimizers.SGD(schedule)) is schedule


def test_adam_slots_are_the_moments_keras_adam_updates():
    optimizer = keras.optimizers.Adam(0.1)
    first, second = keras.Variable(np.zeros(2, np.float32)), keras.Variable(np.zeros(3, np.float32))
    optimizer.build([first, second])
    momentum, velocity = keras_internals.adam_slots(optimizer, second)
    assert tuple(momentum.shape) == tuple(velocity.shape) == (3,)
    optimizer.apply_gradients([(np.ones(2, np.float32), first), (np.full(3, 2.0, np.float32), second)])
    # beta_1 = 0.9, beta_2 = 0.999: m = 0.1 g, v = 0.001 g^2 after one step.
    np.testing.assert_allclose(momentum.numpy(), np.full(3, 0.2), rtol=1e-6)
    np.testing.assert_allclose(velocity.numpy(), np.full(3, 0.004), rtol=1e-6)
    np.testing.assert_allclose(keras_internals.adam_slots(optimizer, first)[0].numpy(), np.full(2, 0.1), rtol=1e-6)


def test_kernel_cache_kept_stops_the_seed_setter_emptying_the_cache(monkeypatch):
    emptied = []
    monkeypatch.setattr(keras_internals._pywrap_tfe, "TFE_ContextClearCaches", lambda handle: emptied.append(1))
    keras.utils.set_random_seed(5)
    assert emptied, "TensorFlow's seed setter no longer empties its kernel cache through TFE_ContextClearCaches"
    emptied.clear()
    with keras_internals.kernel_cache_kept():
        keras.utils.set_random_seed(5)
    assert not emptied
    keras.utils.set_random_seed(5)
    assert emptied, "kernel_cache_kept did not put TFE_ContextClearCaches back"


def test_input_size_checks_recorded_gives_a_constructors_stated_sizes():
    with keras_internals.input_size_checks_recorded() as declared:
        with pytest.raises(ValueError, match="at least 32x32"):
            keras.applications.MobileNet(input_shape=(1, 1, 3), include_top=False, weights=None, alpha=0.25)
    assert declared == {"default": 224, "minimum": 32}


def test_requested_weights_file_stops_before_any_download(monkeypatch):
    monkeypatch.setenv("KERAS_HOME", "/nonexistent-keras-home")
    mobilenet = functools.partial(keras.applications.MobileNet, alpha=0.25, include_top=False, weights="imagenet")
    request = keras_internals.requested_weights_file(lambda: mobilenet(input_shape=(224, 224, 3)))
    assert request == (
        "mobilenet_2_5_224_tf_no_top.h5",
        "https://storage.googleapis.com/tensorflow/keras-applications/mobilenet/mobilenet_2_5_224_tf_no_top.h5",
        None,
    )
    assert keras_internals.requested_weights_file(lambda: None) is None


def test_application_source_module_holds_preprocess_input():
    module = keras_internals.application_source_module(keras.applications.MobileNetV3Small)
    assert module.__name__.rsplit(".", 1)[-1] == "mobilenet_v3"
    assert callable(module.preprocess_input)
    partial = functools.partial(keras.applications.MobileNet, alpha=0.25)
    assert keras_internals.application_source_module(partial).__name__.rsplit(".", 1)[-1] == "mobilenet"


def test_version_warning_only_for_other_versions(monkeypatch):
    assert keras_internals.installed_versions() == keras_internals.WRITTEN_FOR, (
        "TensorFlow or Keras is not requirements.txt's version: every internal above was checked "
        "against it; update WRITTEN_FOR once they pass"
    )
    assert keras_internals.version_warning() is None
    monkeypatch.setattr(keras_internals, "installed_versions", lambda: {"TensorFlow": "2.22.0", "Keras": "3.15.1"})
    warning = keras_internals.version_warning()
    assert "\n" not in warning
    assert warning.startswith("TensorFlow 2.22.0: lab/runtime/keras_internals.py")
    assert "TensorFlow 2.21.0 and Keras 3.15.1" in warning


def test_a_version_warning_reaches_the_report_header_and_banners(pytestconfig, monkeypatch):
    for variable in config.PATH_VARIABLES.values():
        monkeypatch.delenv(variable, raising=False)
    run = config.build_config(data_source="mock", weights="none")
    pinned = LabSession(pytestconfig, run, None).collect_results(0).run
    assert not [warning for warning in pinned.warnings if "keras_internals" in warning]
    monkeypatch.setattr(keras_internals, "installed_versions", lambda: {"TensorFlow": "2.21.0", "Keras": "3.16.0"})
    header = LabSession(pytestconfig, run, None).collect_results(0).run
    (warning,) = [warning for warning in header.warnings if "keras_internals" in warning]
    assert warning.startswith("Keras 3.16.0: ")
    assert f"**Warning**: {warning}" in render.banners(header)

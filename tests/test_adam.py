"""lab/networks/adam.py: the fused Adam updates as Keras's Adam does, with one operation per update."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from lab.networks import models
from lab.networks.adam import FusedAdam

STEPS = 5


def updated(optimizer: keras.optimizers.Optimizer) -> list[np.ndarray]:
    """Two variables and the optimizer's moments after `STEPS` traced updates with fixed gradients.

    The gradients do not depend on the weights, so a difference between two optimizers is their
    arithmetic's, not round-off amplified by training.
    """
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.standard_normal(shape).astype("float32")) for shape in ((4, 5), (5,))]
    optimizer.build(variables)

    @tf.function
    def step(gradients):
        optimizer.apply(gradients, variables)

    for _ in range(STEPS):
        step([tf.constant(rng.standard_normal(variable.shape).astype("float32")) for variable in variables])
    return [keras.ops.convert_to_numpy(variable) for variable in [*variables, *optimizer.variables]]


def test_fused_adam_updates_as_keras_adam_within_float32_rounding():
    schedule = keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=2, decay_rate=0.5)
    keras_values = updated(keras.optimizers.Adam(schedule, beta_1=0.8, beta_2=0.95, epsilon=1e-3))
    fused_values = updated(FusedAdam(schedule, beta_1=0.8, beta_2=0.95, epsilon=1e-3))
    assert len(fused_values) == len(keras_values) == 2 + 1 + 4
    for keras_value, fused_value in zip(keras_values, fused_values, strict=True):
        # The kernel rounds its intermediate results otherwise than Keras's separate operations:
        # a couple of float32 steps of the value's size per update, at most.
        tolerance = 2 * STEPS * np.spacing(np.abs(keras_value).max())
        np.testing.assert_allclose(fused_value, keras_value, rtol=0, atol=tolerance)


def test_each_variable_update_is_one_fused_operation():
    variables = [keras.Variable(np.zeros(shape, "float32")) for shape in ((4, 5), (5,), (5, 3), (3,))]
    optimizer = FusedAdam(1e-3)
    optimizer.build(variables)

    @tf.function
    def step():
        optimizer.apply([tf.ones_like(variable) for variable in variables], variables)

    operations = [operation.type for operation in step.get_concrete_function().graph.get_operations()]
    assert operations.count("ResourceApplyAdam") == len(variables)


def test_the_labs_compile_trains_with_the_fused_update_inside_fit(monkeypatch):
    # Keras's trainer could run updates under a strategy one day, where this Adam steps aside:
    # then its per-operation update would run, silently slower.
    def per_operation_update(*args, **kwargs):
        raise AssertionError("Keras's per-operation Adam update ran")

    monkeypatch.setattr(keras.optimizers.Adam, "update_step", per_operation_update)
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(3, activation="softmax")])
    models.compile_for_classification(model)
    before = [keras.ops.convert_to_numpy(weight) for weight in model.weights]
    model.fit(np.ones((8, 6), np.float32), np.zeros(8), batch_size=4, epochs=1, verbose=0)

    assert isinstance(model.optimizer, FusedAdam)
    after = [keras.ops.convert_to_numpy(weight) for weight in model.weights]
    assert all(not np.array_equal(old, new) for old, new in zip(before, after, strict=True))
    with pytest.raises(AssertionError, match="per-operation"):
        FusedAdam(amsgrad=True).update_step(tf.ones(3), keras.Variable(tf.zeros(3)), 0.1)

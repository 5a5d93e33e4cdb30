"""Adam whose update of each variable is TensorFlow's one fused kernel.

Keras's Adam writes each variable's update as 37 graph operations (Keras 3.15.1: an update of
four 3x3 weights traced to 154 operations, of two to 80, placeholders aside). Tracing them
costs 20-40 ms per trainable tensor on two CPU cores: a second of the first epoch of a stage
that trains 42 tensors, more for a whole ResNet50. TensorFlow's `ApplyAdam` kernel computes the
same update as one operation. It rounds its intermediate results otherwise than Keras's
separate operations, so an update may differ from Keras's by a float32 step or two of the
weight; two runs of this Adam agree bit for bit, as two runs of Keras's do.

Which Adam a run's compiles build is the run's `--adam` (`lab.networks.training_step`): `fused`,
the default, or `keras`, Keras's own. Build every Adam with `adam()`.
"""

from __future__ import annotations

import keras
import tensorflow as tf

from lab.networks import training_step
from lab.runtime import keras_internals


def adam(learning_rate=0.001, **kwargs) -> keras.optimizers.Adam:
    """A fresh Adam of the run's choice (`training_step.current().adam`) with Keras's Adam arguments."""
    optimizer_class = FusedAdam if training_step.current().adam == "fused" else keras.optimizers.Adam
    return optimizer_class(learning_rate=learning_rate, **kwargs)


@keras.saving.register_keras_serializable(package="lab")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam`, with one fused operation per variable update.

    AMSGrad, and updates under a distribution strategy (whose variables are mirrored across
    devices), take Keras's own path.
    """

    def update_step(self, gradient, variable, learning_rate):
        if self.amsgrad or tf.distribute.has_strategy():
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        momentum, velocity = keras_internals.adam_slots(self, variable)
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=_handle(variable),
            m=_handle(momentum),
            v=_handle(velocity),
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )


def _handle(variable) -> tf.Tensor:
    """The resource handle of a Keras variable or of the tf.Variable Keras's trainer passes."""
    return (variable.value if isinstance(variable, keras.Variable) else variable).handle

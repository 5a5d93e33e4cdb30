"""Training on more than one device with tf.distribute.MirroredStrategy."""

from __future__ import annotations

import tensorflow as tf

# Without GPUs the CPU is split into this many logical devices, so that mirrored training runs
# the same replica code path on any machine.
CPU_REPLICAS = 2


def use_mirrored_strategy() -> tf.distribute.Strategy:
    """Makes MirroredStrategy the default for every model built and trained from now on.

    Over every GPU when there are any; else over `CPU_REPLICAS` logical CPU devices. Must run
    before TensorFlow initialises its devices (before the first model or dataset).
    """
    if not tf.config.list_physical_devices("GPU"):
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(CPU_REPLICAS)]
        )
        strategy = tf.distribute.MirroredStrategy([d.name for d in tf.config.list_logical_devices("CPU")])
    else:
        strategy = tf.distribute.MirroredStrategy()
    tf.distribute.experimental_set_strategy(strategy)
    return strategy


def replicas() -> int:
    """How many replicas the current default strategy trains on."""
    return tf.distribute.get_strategy().num_replicas_in_sync

"""The run's process-wide TensorFlow and Keras settings, applied once per process before the first test."""

from __future__ import annotations

import os

import keras
import tensorflow as tf

from lab.config import RunConfig
from lab.inputs import image_cache
from lab.networks import training_step
from lab.runtime import distribution, reproducibility


def apply_run_settings(run: RunConfig) -> None:
    """Sets up this process as `run` says: the distribution strategy, the seed, eager execution,
    op determinism, mixed precision, the training step (--adam, --xla) and the image cache's bound.

    Raises:
        LabInputError: a machine of `--distribute multiworker` did not answer.
    """
    if run.options.distribute == "mirrored":
        distribution.use_mirrored_strategy()
    elif run.options.distribute == "multiworker":
        distribution.use_multiworker_strategy(run.options.worker_timeout)
    reproducibility.seed_everything(run.seed)
    if run.options.run_eagerly:
        # Tracing ResNet50's training step takes about 20 s on two CPU cores, an eager step 1 s.
        tf.config.run_functions_eagerly(True)
    if run.options.deterministic:
        reproducibility.enable_determinism()
    if run.options.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    training_step.use(training_step.TrainingStep(adam=run.options.adam, xla=run.options.xla))
    image_cache.set_size_limit(run.image_cache_limit)


def pin_worker_gpu(worker_index: int) -> None:
    """Makes an xdist worker, the `worker_index`-th of its host's, see only GPU `worker_index`
    modulo the host's GPU count, so that K workers on a machine of K GPUs take one each."""
    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        tf.config.set_visible_devices(gpus[worker_index % len(gpus)], "GPU")


def share_cpu_cores(processes: int) -> None:
    """Sizes TensorFlow's thread pools to this process's share of the machine's cores, one of
    `processes` (pytest-xdist's workers) training side by side.

    Each process would otherwise start a pool the size of the whole machine, and on two cores
    two workers' pools spinning against each other made an eager ResNet50 stage five times
    slower than in one process. Must run before TensorFlow executes its first operation.
    """
    share = max(1, len(os.sched_getaffinity(0)) // processes)
    tf.config.threading.set_intra_op_parallelism_threads(share)
    tf.config.threading.set_inter_op_parallelism_threads(share)

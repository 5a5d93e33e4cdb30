"""Shared saved models under concurrency, and reproducibility from one seed."""

import json
import os
import random
import subprocess
import sys
import textwrap
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python import pywrap_tfe

from lab.runtime import reproducibility, storage

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _python(code: str, *args: str, **popen) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "3"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT, **popen,
    )


RACER = """
    import json, os, sys, time
    from lab.runtime import atomic, storage
    from lab.networks import models

    path, go = sys.argv[1], sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.01)

    def create(target):
        model = models.lab_cnn(5, 32, (4, 4, 4))
        storage.atomic_save_model(model, target)
        time.sleep(1.0)  # holds the lock long enough for the other process to be waiting on it
        return {"creator": os.getpid(), "weights_digest": storage.weights_digest(model)}

    metadata = storage.ensure_saved(path, create)
    print(json.dumps({**metadata, "file_digest": atomic.file_digest(path), "pid": os.getpid()}))
"""


def test_two_processes_racing_for_one_saved_model_get_the_same_complete_file(tmp_path):
    path = str(tmp_path / "base.keras")
    go = str(tmp_path / "go")
    racers = [_python(RACER, path, go) for _ in range(2)]
    time.sleep(3)  # both processes past their imports, polling for the start signal
    open(go, "w").close()
    answers = []
    for racer in racers:
        out, err = racer.communicate(timeout=120)
        assert racer.returncode == 0, err
        answers.append(json.loads(out.strip().splitlines()[-1]))

    assert sorted(answer["created_here"] for answer in answers) == [False, True]
    assert answers[0]["creator"] == answers[1]["creator"]
    assert answers[0]["file_digest"] == answers[1]["file_digest"]
    assert [name for name in os.listdir(tmp_path) if ".partial" in name] == []
    assert storage.weights_digest(storage.load_model(path)) == answers[0]["weights_digest"]


TRAINER = """
    import sys
    import numpy as np
    from lab.networks import models
    from lab.runtime import reproducibility, storage

    seed = int(sys.argv[1])
    reproducibility.seed_everything(seed)
    reproducibility.enable_determinism()
    images = np.random.default_rng(7).random((64, 32, 32, 3), dtype=np.float32)
    labels = np.arange(64) % 5
    model = models.lab_cnn(5, 32, (8, 8, 8))
    models.compile_for_classification(model)
    model.fit(images, labels, batch_size=16, epochs=2, shuffle=True, verbose=0)
    print(storage.weights_digest(model))
"""


def _trained_digests(*seeds: int) -> list[str]:
    """The weights digest of one training process per seed, run side by side."""
    trainers = [_python(TRAINER, str(seed)) for seed in seeds]
    digests = []
    for trainer in trainers:
        out, err = trainer.communicate(timeout=120)
        assert trainer.returncode == 0, err
        digests.append(out.strip().splitlines()[-1])
    return digests


def test_same_seed_gives_identical_weights_and_another_seed_does_not():
    first, again, other = _trained_digests(0, 0, 1)
    assert first == again
    assert first != other


def _draws() -> tuple:
    """One draw from each generator the lab uses."""
    return (
        random.random(),
        float(np.random.rand()),
        keras.initializers.GlorotUniform()((2, 2)).numpy().tolist(),
        keras.random.uniform((2,)).numpy().tolist(),
        list(tf.data.Dataset.range(8).shuffle(8, seed=1).as_numpy_iterator()),
    )


def test_seeding_restarts_every_generator_as_keras_does_and_keeps_the_kernel_cache(monkeypatch):
    def emptied(context_handle):
        raise AssertionError("TensorFlow's kernel cache was emptied")

    monkeypatch.setattr(pywrap_tfe, "TFE_ContextClearCaches", emptied)
    reproducibility.seed_everything(3)
    first = _draws()
    _draws()
    reproducibility.seed_everything(3)
    assert _draws() == first
    with pytest.raises(AssertionError, match="emptied"):
        keras.utils.set_random_seed(3)

    monkeypatch.undo()
    keras.utils.set_random_seed(3)
    assert _draws() == first


MIRRORED = """
    import numpy as np
    from lab.runtime import distribution
    from lab.networks import models

    strategy = distribution.use_mirrored_strategy()
    model = models.lab_cnn(5, 32, (4, 4, 4))
    models.compile_for_classification(model)
    history = model.fit(np.zeros((32, 32, 32, 3), np.float32), np.zeros(32), batch_size=8, epochs=1, verbose=0)
    print(strategy.num_replicas_in_sync, type(model.weights[0].value).__name__, len(history.history["loss"]))
"""


def test_mirrored_strategy_trains_on_two_logical_cpu_devices():
    process = _python(MIRRORED)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 0, err
    replicas, variable_type, epochs = out.strip().splitlines()[-1].split()
    assert (int(replicas), variable_type, int(epochs)) == (2, "MirroredVariable", 1)

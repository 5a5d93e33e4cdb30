"""`--distribute multiworker`: TF_CONFIG read and checked, and two workers that train as one.

The two-worker test starts two processes on this machine, each a worker of one
tf.distribute.MultiWorkerMirroredStrategy cluster on localhost ports, as two machines would
run the same command. Run as a script, this file is one such worker.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import pytest

from lab.config import build_config
from lab.errors import LabInputError
from lab.inputs import data
from lab.networks.models import compile_for_classification, lab_cnn
from lab.networks.training import fit_on
from lab.runtime import distribution, storage
from lab.runtime.reproducibility import seed_everything

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]

# Each worker trains the lab CNN for one epoch on this many mock images at 32 px.
WORKER_IMAGES = 64
WORKER_TIMEOUT_SECONDS = 180
# A session that waits for an unreachable worker: importing TensorFlow on a busy machine, then
# --worker-timeout, must fit in this many seconds.
SESSION_LIMIT_SECONDS = 120


def tf_config(workers: list[str], task_type: str = "worker", index: int = 0, chief: str | None = None) -> str:
    cluster = {"worker": workers, **({"chief": [chief]} if chief else {})}
    return json.dumps({"cluster": cluster, "task": {"type": task_type, "index": index}})


@pytest.mark.parametrize(
    ("settings", "chief"),
    [
        (None, True),
        (tf_config(["a:1", "b:1"], index=0), True),
        (tf_config(["a:1", "b:1"], index=1), False),
        (tf_config(["a:1"], chief="c:1", index=0), False),
        (tf_config(["a:1"], chief="c:1", task_type="chief"), True),
    ],
    ids=["no-cluster", "worker-0", "worker-1", "worker-0-beside-a-chief", "chief"],
)
def test_only_the_chief_writes(monkeypatch, settings, chief):
    if settings is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", settings)
    assert distribution.is_chief() is chief


@pytest.mark.parametrize(
    "settings",
    [
        "{not json",
        "[]",
        json.dumps({"cluster": {"worker": ["a:1"]}}),
        tf_config(["a:1", "b:1"], index=2),
        tf_config(["a:1"], task_type="chief"),
        json.dumps({"cluster": {"worker": []}, "task": {"type": "worker", "index": 0}}),
    ],
    ids=["not-json", "not-an-object", "no-task", "index-outside", "job-not-in-cluster", "no-addresses"],
)
def test_malformed_tf_config_is_named(monkeypatch, settings):
    monkeypatch.setenv("TF_CONFIG", settings)
    with pytest.raises(LabInputError, match="TF_CONFIG.*set it as in"):
        distribution.cluster_task()


@pytest.mark.parametrize(("index", "writes_logs"), [(0, True), (1, False)])
def test_only_the_chief_writes_tensorboard_logs(monkeypatch, tmp_path, index, writes_logs):
    monkeypatch.setenv("TF_CONFIG", tf_config(["a:1", "b:1"], index=index))
    run = build_config(
        "smoke", "mock", None, 0, None, None, "none", None, distribute="multiworker", tensorboard_dir=str(tmp_path)
    )
    assert run.tensorboard_dir == (str(tmp_path) if writes_logs else None)


def test_multiworker_needs_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    with pytest.raises(LabInputError, match="--distribute multiworker needs the TF_CONFIG"):
        distribution.check_multiworker_config()


def free_ports(count: int) -> list[int]:
    """Ports nothing listens on now, held open together so that they differ."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for held in sockets:
            held.bind(("localhost", 0))
        return [held.getsockname()[1] for held in sockets]
    finally:
        for held in sockets:
            held.close()


def start_multiworker_session(addresses: list[str], worker_timeout: float) -> subprocess.Popen:
    """`pytest --distribute multiworker` as worker 0 of `addresses`, collecting experiment 1 only."""
    return subprocess.Popen(
        [
            sys.executable, "-m", "pytest", "experiments/test_1_base_model.py", "--collect-only", "-q",
            "--no-report", "-p", "no:cacheprovider", "--data-source", "mock", "--weights", "none",
            "--distribute", "multiworker", "--worker-timeout", str(worker_timeout),
        ],
        cwd=REPO_ROOT,
        env={**os.environ, "TF_CONFIG": tf_config(addresses), "TF_CPP_MIN_LOG_LEVEL": "2"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finished(process: subprocess.Popen) -> tuple[int, str]:
    """The exit status and output of a session, which must end within SESSION_LIMIT_SECONDS."""
    try:
        stdout, stderr = process.communicate(timeout=SESSION_LIMIT_SECONDS)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    return process.returncode, stdout + stderr


def test_an_unreachable_worker_stops_the_session_within_the_timeout_naming_its_address():
    own, closed = free_ports(2)
    unreachable = f"127.0.0.1:{closed}"
    process = start_multiworker_session([f"127.0.0.1:{own}", unreachable], worker_timeout=2)

    returncode, output = finished(process)
    assert returncode == pytest.ExitCode.USAGE_ERROR, output[-3000:]
    assert unreachable in output and "--worker-timeout 2 s" in output, output[-3000:]
    assert f"waiting up to 2 s for {unreachable} (the other tasks of TF_CONFIG)" in output


def test_sigterm_stops_a_session_waiting_for_a_worker():
    own, closed = free_ports(2)
    process = start_multiworker_session([f"127.0.0.1:{own}", f"127.0.0.1:{closed}"], worker_timeout=600)
    try:
        # The session listens on its own address while it waits for the others: then it is waiting.
        deadline = time.monotonic() + SESSION_LIMIT_SECONDS
        while not accepts_connections(f"127.0.0.1:{own}"):
            assert process.poll() is None, process.communicate()
            assert time.monotonic() < deadline, "the session never started waiting for the other worker"
            time.sleep(0.2)
        process.send_signal(signal.SIGTERM)
        returncode, output = finished(process)
    finally:
        if process.poll() is None:
            process.kill()
    assert returncode == -signal.SIGTERM, output[-3000:]


def accepts_connections(address: str) -> bool:
    try:
        with socket.create_connection(distribution.split_address(address), timeout=1):
            return True
    except OSError:
        return False


def test_two_workers_train_to_identical_weights(tmp_path):
    addresses = [f"localhost:{port}" for port in free_ports(2)]
    outputs = [tmp_path / f"worker{index}.json" for index in range(2)]
    workers = [
        subprocess.Popen(
            [sys.executable, __file__, str(output)],
            cwd=REPO_ROOT,
            env={
                **os.environ,
                "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), os.environ.get("PYTHONPATH", "")]),
                "TF_CONFIG": tf_config(addresses, index=index),
                "TF_CPP_MIN_LOG_LEVEL": "2",
            },
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for index, output in enumerate(outputs)
    ]
    try:
        logs = [worker.communicate(timeout=WORKER_TIMEOUT_SECONDS)[0] for worker in workers]
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    for worker, log in zip(workers, logs, strict=True):
        assert worker.returncode == 0, log[-3000:]
    first, second = (json.loads(output.read_text()) for output in outputs)

    assert first["replicas"] == second["replicas"] == 2
    assert (first["chief"], second["chief"]) == (True, False)
    assert first["trained_digest"] != first["initial_digest"], "training did not change the weights"
    assert first["trained_digest"] == second["trained_digest"], "the workers' weights differ after training"
    assert first["predictions_digest"] == second["predictions_digest"]


def run_worker(output_path: str) -> None:
    """One worker of the two: the lab CNN under `--distribute multiworker`, one epoch on mock images.

    Each worker shuffles its shard of the data with a seed of its own, so that only the
    strategy's synchronisation can leave the two with the same weights.
    """
    run = build_config(
        profile="smoke", data_source="mock", data_dir=None, seed=0, subset=WORKER_IMAGES,
        backbone_names=None, weights="none", weights_dir=None, distribute="multiworker",
    )
    distribution.use_multiworker_strategy()
    seed = run.seed + distribution.cluster_task().index
    flowers = data.load("tf_flowers", run.data_source, 32, WORKER_IMAGES, WORKER_IMAGES // 4)
    seed_everything(seed)
    model = lab_cnn(flowers.num_classes, flowers.image_size)
    compile_for_classification(model)
    initial_digest = storage.weights_digest(model)
    fit_on(model, flowers, 1, run.profile.batch_size, seed)
    predictions = model.predict(flowers.scaled("validation"), verbose=0)
    result = {
        "replicas": distribution.replicas(),
        "chief": distribution.is_chief(),
        "initial_digest": initial_digest,
        "trained_digest": storage.weights_digest(model),
        "predictions_digest": hashlib.sha256(predictions.tobytes()).hexdigest(),
    }
    with open(output_path, "w", encoding="utf-8") as stream:
        json.dump(result, stream)


if __name__ == "__main__":
    run_worker(sys.argv[1])


def test_a_peer_that_accepts_connections_but_is_no_tensorflow_worker_fails_naming_it_in_bounded_time():
    """A wrong port whose listener accepts and says nothing: TensorFlow's own setup would wait on
    it forever, ignoring SIGTERM; the session stops within --worker-timeout, naming it."""
    own, = free_ports(1)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        process = start_multiworker_session([f"127.0.0.1:{own}", address], worker_timeout=3)
        returncode, output = finished(process)
    assert returncode == pytest.ExitCode.USAGE_ERROR, output[-3000:]
    assert address in output and "said nothing" in output, output[-3000:]

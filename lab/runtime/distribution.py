"""Training on more than one device, or more than one machine, with tf.distribute."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import socket
import sys
import threading
import time
from collections.abc import Iterator

import tensorflow as tf

from lab.errors import LabInputError

# Without GPUs the CPU is split into this many logical devices, so that mirrored training runs
# the same replica code path on any machine.
CPU_REPLICAS = 2

TF_CONFIG_EXAMPLE = (
    'TF_CONFIG=\'{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
    '"task": {"type": "worker", "index": 0}}\''
)
# Seconds `--distribute multiworker` waits for every other machine of TF_CONFIG to accept a
# connection (`--worker-timeout`): machines started by hand, one after another, come up minutes apart.
DEFAULT_WORKER_TIMEOUT = 300.0
# Seconds one connection attempt may take (a firewall drops it silently), and between two rounds.
CONNECT_TIMEOUT = 2.0
PROBE_INTERVAL = 0.5
# The probe of another task's port: an HTTP/2 client's connection preface and an empty SETTINGS
# frame. An HTTP/2 server sends a SETTINGS frame first (RFC 9113, 3.4): TensorFlow's gRPC server
# does, and so does this suite's listener while its task waits. A port that answers anything
# else, or nothing (a wrong port: TensorFlow's own setup then waits forever and ignores SIGTERM),
# is not a task of the cluster.
SETTINGS_FRAME = bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + SETTINGS_FRAME
FRAME_TYPE_SETTINGS = 4


@dataclasses.dataclass(frozen=True)
class ClusterTask:
    """This process's place in a multi-worker cluster, as TF_CONFIG gives it.

    Attributes:
        task_type: `chief` or `worker` (or another job TF_CONFIG names).
        index: the task's position in its job.
        jobs: every job of the cluster -> its addresses.
    """

    task_type: str
    index: int
    jobs: dict[str, list[str]]

    @property
    def is_chief(self) -> bool:
        """tf.distribute's rule: the `chief` task, or worker 0 in a cluster without one."""
        if "chief" in self.jobs:
            return self.task_type == "chief"
        return self.task_type == "worker" and self.index == 0


def cluster_task() -> ClusterTask | None:
    """This process's task in the cluster the `TF_CONFIG` environment variable describes.

    Returns:
        None when TF_CONFIG is unset or empty (a single machine).

    Raises:
        LabInputError: TF_CONFIG is not JSON, or its task is not one of its cluster's.
    """
    text = os.environ.get("TF_CONFIG", "").strip()
    if not text:
        return None
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as error:
        raise LabInputError(f"TF_CONFIG is not JSON ({error}): set it as in {TF_CONFIG_EXAMPLE}") from None
    jobs = settings.get("cluster") if isinstance(settings, dict) else None
    task = settings.get("task") if isinstance(settings, dict) else None
    if (
        not isinstance(jobs, dict)
        or not all(isinstance(addresses, list) and addresses for addresses in jobs.values())
        or not isinstance(task, dict)
        or task.get("type") not in jobs
        or not isinstance(task.get("index"), int)
        or not 0 <= task["index"] < len(jobs[task["type"]])
    ):
        raise LabInputError(
            f"TF_CONFIG {text!r} needs a cluster (job -> addresses) and this machine's task "
            f"(a job of the cluster and an index in it): set it as in {TF_CONFIG_EXAMPLE}"
        )
    return ClusterTask(task["type"], task["index"], jobs)


def is_chief() -> bool:
    """Whether this process writes the session's report: the cluster's chief, or no cluster."""
    task = cluster_task()
    return task is None or task.is_chief


def check_multiworker_config() -> ClusterTask:
    """The task `--distribute multiworker` runs as; an error naming TF_CONFIG when there is none.

    Raises:
        LabInputError: TF_CONFIG is unset or malformed.
    """
    task = cluster_task()
    if task is None:
        raise LabInputError(
            "--distribute multiworker needs the TF_CONFIG environment variable on every machine: "
            f"the same cluster, each machine its own task, as in {TF_CONFIG_EXAMPLE}"
        )
    return task


class KerasMultiWorkerMirroredStrategy(tf.distribute.MultiWorkerMirroredStrategy):
    """MultiWorkerMirroredStrategy with the `reduce` that Keras 3's `fit` expects of a strategy.

    Keras 3.15's TensorFlow trainer reduces a whole (inputs, labels) batch in one `reduce`
    call, and every scalar it logs with `axis=0` (keras-team/keras#20585): MirroredStrategy
    accepts both, MultiWorkerMirroredStrategy neither, so that `fit` fails at its first batch.
    """

    def reduce(self, reduce_op, value, axis):
        def reduce_one(one):
            has_batch_axis = bool(self.experimental_local_results(one)[0].shape.rank)
            return super(KerasMultiWorkerMirroredStrategy, self).reduce(
                reduce_op, one, axis if has_batch_axis else None
            )

        return tf.nest.map_structure(reduce_one, value)


def split_address(address: str) -> tuple[str, int]:
    """The host and port of a TF_CONFIG address, `host1:12345` or `[::1]:12345`.

    Raises:
        LabInputError: the address has no port.
    """
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise LabInputError(f"TF_CONFIG address {address!r} needs a host and a port: set it as in {TF_CONFIG_EXAMPLE}")
    return host.strip("[]"), int(port)


def wait_for_workers(task: ClusterTask, timeout: float) -> None:
    """Waits until every other task of the cluster accepts a connection, `timeout` seconds at most.

    TensorFlow's collective setup waits for an absent worker without end, and its C++ code
    takes SIGTERM meanwhile as a preemption notice and carries on: this wait, in Python, ends
    in time and on a signal. A task answers only when it answers as HTTP/2 does (TensorFlow's
    gRPC server, or this suite's listener): a port that accepts connections and says nothing, or
    something else, is not handed to TensorFlow. While it waits, this task answers on its own
    port, so that the others' waits for it end too; TensorFlow's server takes the port over afterwards.

    Raises:
        LabInputError: naming every address that did not answer in time, and why.
    """
    own = task.jobs[task.task_type][task.index]
    others = [
        address
        for job, addresses in task.jobs.items()
        for index, address in enumerate(addresses)
        if (job, index) != (task.task_type, task.index)
    ]
    if others:
        # It runs before pytest prints its header: without this line, minutes of waiting look like a hang.
        print(f"--distribute multiworker: waiting up to {timeout:g} s for {', '.join(others)} (the other tasks of "
              "TF_CONFIG) to answer", file=sys.stderr, flush=True)
    deadline = time.monotonic() + timeout
    with _listening_on(own):
        unanswered = {address: _connect_error(address) for address in others}
        while any(unanswered.values()) and time.monotonic() < deadline:
            time.sleep(PROBE_INTERVAL)
            for address in [address for address, error in unanswered.items() if error]:
                unanswered[address] = _connect_error(address)
    failed = [f"{address} ({error})" for address, error in unanswered.items() if error]
    if failed:
        raise LabInputError(
            f"--distribute multiworker: {', '.join(failed)} did not answer as a task of the cluster within "
            f"--worker-timeout {timeout:g} s: start the same command there with its own TF_CONFIG task, "
            "or correct the address in TF_CONFIG"
        )


@contextlib.contextmanager
def _listening_on(address: str) -> Iterator[None]:
    """Answers the other tasks' probes on this task's port while it waits for them."""
    port = split_address(address)[1]
    family = socket.AF_INET6 if socket.has_dualstack_ipv6() else socket.AF_INET
    try:
        server = socket.create_server(("", port), family=family, dualstack_ipv6=family == socket.AF_INET6)
    except OSError as error:
        raise LabInputError(
            f"--distribute multiworker: this machine's task in TF_CONFIG has the address {address}, but its port "
            f"cannot be opened here ({error.strerror}): give this task a free port"
        ) from None
    stop = threading.Event()
    answering = threading.Thread(target=_answer_probes, args=(server, stop), daemon=True)
    with server:
        answering.start()
        try:
            yield
        finally:
            stop.set()
            answering.join()


def _answer_probes(server: socket.socket, stop: threading.Event) -> None:
    """Answers every probe with a SETTINGS frame, as an HTTP/2 server does, until `stop` is set."""
    server.settimeout(PROBE_INTERVAL)
    while not stop.is_set():
        try:
            connection, _ = server.accept()
        except TimeoutError:
            continue
        except OSError:
            return
        with connection, contextlib.suppress(OSError):
            # Read the probe before answering: closing on unread bytes resets the connection,
            # which can drop the answer on the other side.
            connection.settimeout(CONNECT_TIMEOUT)
            _received(connection, len(HTTP2_PREFACE))
            connection.sendall(SETTINGS_FRAME)
            connection.shutdown(socket.SHUT_WR)


def _connect_error(address: str) -> str | None:
    """Why `address` is not (yet) a task of the cluster, or None where it answers as one."""
    try:
        with socket.create_connection(split_address(address), timeout=CONNECT_TIMEOUT) as connection:
            connection.sendall(HTTP2_PREFACE)
            answer = _received(connection, len(SETTINGS_FRAME))
    except TimeoutError:
        return f"accepts connections but said nothing in {CONNECT_TIMEOUT:g} s: not a TensorFlow worker's port"
    except OSError as error:
        return error.strerror or str(error) or type(error).__name__
    if len(answer) < len(SETTINGS_FRAME) or answer[3] != FRAME_TYPE_SETTINGS:
        return "accepts connections but does not answer as TensorFlow's gRPC server (HTTP/2)"
    return None


def _received(connection: socket.socket, size: int) -> bytes:
    """Up to `size` bytes, fewer where the other side closes first."""
    received = b""
    while len(received) < size:
        chunk = connection.recv(size - len(received))
        if not chunk:
            break
        received += chunk
    return received


def use_multiworker_strategy(worker_timeout: float = DEFAULT_WORKER_TIMEOUT) -> tf.distribute.Strategy:
    """Makes MultiWorkerMirroredStrategy over TF_CONFIG's cluster the default from now on.

    Every worker runs the same program: the chief's initial weights are broadcast to all, and
    gradients are summed across all of them at each step, so their weights stay identical. Must
    run before TensorFlow initialises its devices.

    Raises:
        LabInputError: TF_CONFIG is unset or malformed, or another task did not answer within
            `worker_timeout` seconds.
    """
    wait_for_workers(check_multiworker_config(), worker_timeout)
    strategy = KerasMultiWorkerMirroredStrategy()
    tf.distribute.experimental_set_strategy(strategy)
    return strategy


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
    """How many replicas the current default strategy trains on, across every worker."""
    return tf.distribute.get_strategy().num_replicas_in_sync

"""Where each xdist worker runs: its host, its place among that host's workers, the stack it runs.

xdist's controller knows every gateway (`-n K` is K on this machine, `--tx ssh=HOST//...` one on
HOST) and tells each worker, through its `workerinput` in `pytest_configure_node`, which host it
is on, how many workers that host runs and which of them it is, so that a worker sizes its
thread pools to its own host's cores and pins its own host's GPU. Before a worker starts, the
controller asks its host's Python for its TensorFlow, Keras and lab commit, and refuses a host
whose stack differs from its own (`check_host_stack`). At the end
each worker sends back what its host is (device, versions) in its `workeroutput`, for the
report's header.
"""

from __future__ import annotations

import inspect
import os
from importlib import metadata

import pytest

from lab.report.results import HostInfo
from lab.runtime import environment

HOST, HOST_INDEX, HOST_WORKERS, SUMMARY = "lab_host", "lab_host_index", "lab_host_workers", "lab_host_summary"
# This machine, as a host name: the controller's own gateways (`-n K`, `--tx popen`).
LOCAL = "localhost"


def host_of(spec) -> str:
    """The host an execnet gateway spec runs on: an ssh spec's destination (the last word of its
    ssh arguments, without the user), a socket's address, or this machine."""
    if spec.ssh:
        destination = spec.ssh.split()[-1]
        return destination.rsplit("@", 1)[-1]
    if spec.socket:
        return spec.socket.rsplit(":", 1)[0]
    return LOCAL


def _version(*packages: str) -> str | None:
    for package in packages:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return None


# Run on a gateway before its worker starts (execnet's `remote_exec`): the stack that host would
# run, from its own Python and checkout. Plain Python: the host may lack everything else.
REMOTE_STACK = (
    "from __future__ import annotations\nimport subprocess\nfrom importlib import metadata\n\n"
    + inspect.getsource(_version)
) + """
try:
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
except OSError:
    commit = "unknown"
channel.send({"TensorFlow": _version("tensorflow", "tensorflow-cpu"), "Keras": _version("keras"),
              "lab commit": commit or "unknown"})
"""


def configure_node(node, root: str) -> None:
    """Tells a worker its host, its index among that host's workers, their number, and the
    controller's stack (`pytest_configure_node`), after checking that the host runs that stack."""
    specs = node.nodemanager.specs
    hosts = [host_of(spec) for spec in specs]
    host = host_of(node.gateway.spec)
    position = next((index for index, spec in enumerate(specs) if spec is node.gateway.spec), None)
    if position is None:
        position = int(node.gateway.id.removeprefix("gw"))
    expected = stack(root)
    check_host_stack(host, node.gateway, expected)
    node.workerinput.update({HOST: host, HOST_INDEX: hosts[:position].count(host), HOST_WORKERS: hosts.count(host)})


def check_host_stack(host: str, gateway, expected: dict[str, str]) -> None:
    """A usage error, before the host's worker starts, where its Python lacks the controller's
    TensorFlow or Keras, has other versions, or its checkout is at another commit."""
    there = gateway.remote_exec(REMOTE_STACK).receive(timeout=120)
    differing = [f"{name} {there.get(name) or 'not installed'} there, {value} on the controller"
                 for name, value in expected.items() if there.get(name) != value]
    if differing:
        raise pytest.UsageError(
            f"host {host}: {'; '.join(differing)}: install the same requirements and check out the same commit "
            "on every host"
        )


def place(config: pytest.Config) -> tuple[str, int, int]:
    """This worker's (host, index among its host's workers, that host's workers); a controller
    that did not say (an older one) is taken as one machine for every worker."""
    workerinput = config.workerinput
    if HOST in workerinput:
        return workerinput[HOST], workerinput[HOST_INDEX], workerinput[HOST_WORKERS]
    count = int(workerinput["workercount"])
    return LOCAL, int(workerinput["workerid"].removeprefix("gw")), count


def stack(root: str) -> dict[str, str]:
    """What must be the same on every host: TensorFlow, Keras and the lab's commit."""
    versions = {"TensorFlow": _version("tensorflow", "tensorflow-cpu"), "Keras": _version("keras")}
    # A dirty controller is a developer's checkout: its commit, not its edits, is what a host must match.
    versions["lab commit"] = environment.git_commit(root).removesuffix("+dirty")
    return versions


def summary(config: pytest.Config) -> dict:
    """What this worker's host is, for the controller's report (`workeroutput`)."""
    host, _, _ = place(config)
    return {"host": host, "worker": config.workerinput["workerid"], "device": environment.device_summary(),
            "versions": environment.versions(), "folder": os.getcwd()}


def hosts_of(summaries: list[dict], crashed: list[tuple[str, str]]) -> list[HostInfo]:
    """The report's hosts: each with its workers, its device and versions, from what the workers
    sent back (`summary`); a worker that died sent nothing, and is listed by its host alone."""
    hosts: dict[str, HostInfo] = {}
    for entry in summaries:
        info = hosts.setdefault(entry["host"], HostInfo(entry["host"], [], entry["device"], entry["versions"]))
        info.workers.append(entry["worker"])
    for host, worker in crashed:
        info = hosts.setdefault(host, HostInfo(host, [], {}, {}))
        info.workers.append(f"{worker} (died)")
    for info in hosts.values():
        info.workers.sort()
    return list(hosts.values())

"""Several machines, one report: a session over pytest-xdist's ssh gateways, on a real sshd on
loopback whose two "hosts" are two clones of this checkout.

The `sshd` fixture starts Debian's openssh-server (`.ci/run` installs it where it is missing) on a
free loopback port, with a host key and a user key made on the spot, and stops it by its
process at the end. Each host is an alias of an ssh_config file: `--tx ssh=lab-host-a//...`.
"""

import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import time

import pytest

from pytest_lab import cases, hosts

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SSHD = "/usr/sbin/sshd"
SELECTION = ("-m", "experiment", "-k", "base_model or (epoch_time and mobilenet_v2 and not cached)")
TINY = ("--subset", "32", "--epochs", "2", "--image-size", "32", "--weights", "none", "--data-source", "mock",
        "--deterministic", "-p", "no:cacheprovider")


def free_port() -> int:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        return listener.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory) -> pathlib.Path:
    """An sshd on a free loopback port that lets this user in with a key made here; returns the
    ssh_config file whose `lab-host-a` and `lab-host-b` (and `lab-host-dead`, a port where nothing
    listens) reach it."""
    if not os.path.exists(SSHD) or shutil.which("ssh-keygen") is None:
        pytest.skip(f"no {SSHD}: .ci/run installs openssh-server (as root) where it is missing")
    folder = tmp_path_factory.mktemp("sshd")
    for key in ("host_key", "user_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / key)], check=True)
    (folder / "authorized_keys").write_text((folder / "user_key.pub").read_text())
    port = free_port()
    (folder / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", "StrictModes no", "UsePAM no",
        f"PidFile {folder / 'sshd.pid'}", "PasswordAuthentication no", "PermitRootLogin prohibit-password",
        "AcceptEnv LANG", "",
    ]))
    os.makedirs("/run/sshd", exist_ok=True)
    server = subprocess.Popen([SSHD, "-D", "-e", "-f", str(folder / "sshd_config")], stderr=subprocess.PIPE)
    hosts_config = []
    for name, host_port in (("lab-host-a", port), ("lab-host-b", port), ("lab-host-dead", free_port())):
        hosts_config += [
            f"Host {name}", "  HostName 127.0.0.1", f"  Port {host_port}", f"  User {os.environ.get('USER', 'root')}",
            f"  IdentityFile {folder / 'user_key'}", "  StrictHostKeyChecking no", "  UserKnownHostsFile /dev/null",
            "  BatchMode yes", "  LogLevel ERROR", "  ConnectTimeout 10", "",
        ]
    (folder / "ssh_config").write_text("\n".join(hosts_config))
    deadline = time.monotonic() + 30
    while subprocess.run(["ssh", "-F", str(folder / "ssh_config"), "lab-host-a", "true"]).returncode != 0:
        assert server.poll() is None, f"sshd stopped: {server.stderr.read().decode()[-2000:]}"
        assert time.monotonic() < deadline, "sshd did not accept a connection in 30 s"
        time.sleep(0.2)
    yield folder / "ssh_config"
    server.terminate()
    server.wait(timeout=30)


def gateway(name: str, clone: pathlib.Path, ssh_config: pathlib.Path) -> str:
    return f"--tx=ssh={name}//python={sys.executable}//chdir={clone}//ssh_config={ssh_config}"


def results_of(report_dir: pathlib.Path) -> dict:
    (folder,) = [entry for entry in report_dir.iterdir() if entry.is_dir()]
    return json.loads((folder / "results.json").read_text())


def test_a_session_over_two_ssh_gateways_writes_one_report_with_its_hosts_and_epoch_times(sshd, tmp_path):
    clones = []
    for name in ("clone-a", "clone-b"):
        subprocess.run(["git", "clone", "-q", str(REPO_ROOT), str(tmp_path / name)], check=True)
        clones.append(tmp_path / name)
    environment = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    over_ssh = subprocess.Popen(
        [sys.executable, "-m", "pytest", *SELECTION, *TINY, f"--report-dir={tmp_path / 'ssh'}", "-d",
         gateway("lab-host-a", clones[0], sshd), gateway("lab-host-b", clones[1], sshd)],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )
    local = subprocess.Popen(
        [sys.executable, "-m", "pytest", *SELECTION, *TINY, f"--report-dir={tmp_path / 'local'}", "-n", "2"],
        cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment,
    )
    ssh_out, ssh_err = over_ssh.communicate(timeout=600)
    local_out, local_err = local.communicate(timeout=600)
    assert over_ssh.returncode == 0, ssh_out[-3000:] + ssh_err[-3000:]
    assert local.returncode == 0, local_out[-3000:] + local_err[-3000:]

    remote, parallel = results_of(tmp_path / "ssh"), results_of(tmp_path / "local")
    listed = {host["name"]: host for host in remote["run"]["hosts"]}
    assert set(listed) == {"lab-host-a", "lab-host-b"}
    assert all(len(host["workers"]) == 1 and host["device"]["cpu_cores"] for host in listed.values())
    markdown = (tmp_path / "ssh" / "latest-smoke.md").read_text()
    assert "| host lab-host-a" in markdown and "| host lab-host-b" in markdown
    assert {(b["backbone"], b["mode"]) for b in remote["benchmarks"]} == {
        ("mobilenet_v2", "frozen"), ("mobilenet_v2", "unfrozen")
    }
    assert "### Seconds per epoch" in markdown and "No epoch times" not in markdown

    def measured(results):
        return sorted((r["test"], r["row"].get("validation accuracy"), r["predictions"]) for r in results["records"])

    assert measured(remote) == measured(parallel)
    assert len(remote["outcomes"]) == len(parallel["outcomes"]) == 4


def test_a_gateway_where_nothing_listens_fails_naming_the_host_in_bounded_time(sshd, tmp_path):
    started = time.monotonic()
    process = subprocess.run(
        [sys.executable, "-m", "pytest", *SELECTION, *TINY, f"--report-dir={tmp_path}", "-d",
         gateway("lab-host-dead", tmp_path, sshd)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert process.returncode != 0
    assert "lab-host-dead" in process.stdout + process.stderr
    assert time.monotonic() - started < 240


def test_test_paths_with_ssh_gateways_are_refused_with_the_command_to_use(sshd, tmp_path):
    process = subprocess.run(
        [sys.executable, "-m", "pytest", "experiments", "-k", "freeze", "-d", gateway("lab-host-a", tmp_path, sshd)],
        cwd=REPO_ROOT, capture_output=True, text=True, timeout=300,
    )
    assert process.returncode == pytest.ExitCode.USAGE_ERROR, process.stdout[-2000:] + process.stderr[-2000:]
    assert "pytest -m experiment -k freeze -d --tx" in process.stderr


class Spec:
    """An execnet gateway spec's fields that `hosts.host_of` reads."""

    def __init__(self, ssh=None, socket=None):
        self.ssh, self.socket = ssh, socket


@pytest.mark.parametrize(("spec", "host"), [
    (Spec(ssh="gpu1"), "gpu1"), (Spec(ssh="-p 2222 alice@gpu2.lab"), "gpu2.lab"),
    (Spec(socket="10.0.0.5:8888"), "10.0.0.5"), (Spec(), hosts.LOCAL),
])
def test_a_gateway_s_host_is_its_ssh_destination_or_socket_address(spec, host):
    assert hosts.host_of(spec) == host


def test_loadgroup_s_suffix_is_taken_off_node_ids():
    assert cases.plain_nodeid("experiments/x.py::t[seed0-lab]@lab-cnn-seed0") == "experiments/x.py::t[seed0-lab]"
    assert cases.plain_nodeid("experiments/x.py::t[a@b]") == "experiments/x.py::t[a@b]"


# Loaded with -p: the host's Python answers with another Keras than the controller's.
OTHER_KERAS = """
import pytest
from pytest_lab import hosts

@pytest.hookimpl(tryfirst=True)
def pytest_configure_node(node):
    hosts.REMOTE_STACK = hosts.REMOTE_STACK.replace('"Keras": _version("keras")', '"Keras": "2.99.0"')
"""


def test_a_host_with_another_keras_is_refused_naming_it_before_its_worker_starts(start_pytest, tmp_path):
    process = start_pytest(
        tmp_path, "experiments", "-k", "base_model and lab", "-n", "1", "--data-source", "mock", "--weights", "none",
        "-p", "no:cacheprovider", plugins={"other_keras": OTHER_KERAS},
    ).finished()
    assert process.returncode == pytest.ExitCode.USAGE_ERROR, process.stdout[-2000:] + process.stderr[-2000:]
    assert "host localhost: Keras 2.99.0 there, 3.15.1 on the controller" in process.stdout + process.stderr
    assert "Traceback" not in process.stdout + process.stderr

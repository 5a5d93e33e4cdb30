"""What a report says about the machine and the software it ran on."""

from __future__ import annotations

import os
import platform
import re
import subprocess
from importlib import metadata


def versions() -> dict[str, str]:
    """Python and the versions of the lab's main packages."""
    packages = ("tensorflow", "tensorflow-cpu", "keras", "tensorflow-datasets", "numpy", "pytest", "pytest-benchmark")
    found = {"python": platform.python_version()}
    for package in packages:
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    return found


def cpu_model() -> str:
    """The CPU's model name, as the kernel reports it."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as stream:
            for line in stream:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def gpus() -> list[str]:
    """The names of the GPUs TensorFlow sees."""
    import tensorflow as tf

    names = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        names.append(details.get("device_name", device.name))
    return names


def device_summary() -> dict:
    """CPU model and core count, GPU names and count, and on a GPU the CUDA stack (`gpu_stack`)."""
    gpu_names = gpus()
    summary = {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "gpus": gpu_names, "gpu_count": len(gpu_names)}
    if gpu_names:
        summary["gpu_stack"] = gpu_stack()
    return summary


def gpu_stack() -> str:
    """The CUDA and cuDNN versions TensorFlow was built with, and the driver and memory of each GPU.

    The driver and memory come from `nvidia-smi`, which TensorFlow does not report; without it
    the text says so.
    """
    import tensorflow as tf

    build = tf.sysconfig.get_build_info()
    parts = [f"CUDA {build.get('cuda_version', '?')}, cuDNN {build.get('cudnn_version', '?')}"]
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=10, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return parts[0] + "; driver and memory unknown (no nvidia-smi)"
    for line in listed.strip().splitlines():
        driver, memory = (field.strip() for field in line.split(",", 1))
        parts.append(f"driver {driver}, {memory}")
    return "; ".join(parts)


def device_slug(device: dict) -> str:
    """A short file-name-safe name for the device: `cpu`, or `gpu-1xnvidia-h100...`."""
    if not device["gpu_count"]:
        return "cpu"
    name = re.sub(r"[^a-z0-9]+", "-", device["gpus"][0].lower()).strip("-")
    return f"gpu-{device['gpu_count']}x{name}"


def git_commit(directory: str) -> str:
    """The checked-out commit of `directory`, marked `+dirty` with uncommitted changes."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=directory, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory, capture_output=True, text=True
        ).stdout.strip()
        return commit + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


# Stands for the folders left out of a path that shares no folder but `/` with the project.
ELIDED = "\u2026"
# An absolute path inside free text: a "/" that does not continue a word, a relative path, a
# URL or a path already shortened (`s/epoch`, `./x`, `https://`, `…/x`), and its components up
# to a space, a quote, a bracket or punctuation that ends a path in a message.
_ABSOLUTE_PATH = re.compile(rf"(?<![\w.~/{ELIDED}-])(?:/[^\s/,;:()'\"\[\]<>|`]+)+")


def display_path(path: str, root: str | None = None) -> str:
    """How a report names `path` without telling where this machine keeps its files.

    One style for every path: as seen from the project's folder, `reports/run` inside it and
    `../shared/data/weights` beside it, so that paths of one tree read as one tree. A path that
    shares only `/` with the project (or any path, when `root` is unknown) would spell out its
    whole location that way: it keeps its last two components after `ELIDED` (`…/datasets/flowers`).

    Args:
        path: a file or folder; a relative one is taken from the working directory.
        root: the project's folder, or None where it is not known (a results file from elsewhere).
    """
    absolute = os.path.abspath(path)
    if root is not None:
        root = os.path.abspath(root)
        if os.path.commonpath([absolute, root]) != os.path.sep:
            return os.path.relpath(absolute, root)
    components = [part for part in absolute.split(os.path.sep) if part]
    return os.path.join(ELIDED, *components[-2:])


def display_paths_in(text: str, root: str | None = None) -> str:
    """`text` (a message, a table cell) with every absolute path in it as `display_path` names it."""

    def shorten(match: re.Match) -> str:
        # A path that ends a sentence keeps its full stop outside the shortened name.
        path = match.group(0)
        stripped = path.rstrip(".")
        return display_path(stripped, root) + path[len(stripped):]

    return _ABSOLUTE_PATH.sub(shorten, text)


def run_warnings(mixed_precision: bool, deterministic: bool, device: dict, run_eagerly: bool = False) -> list[str]:
    """What a reader of the run's figures must know about its settings on this machine."""
    warnings = []
    if mixed_precision and not device["gpu_count"]:
        warnings.append(
            "--mixed-precision without a GPU: float16 compute is emulated on the CPU, several "
            "times slower than float32; run without it here"
        )
    if deterministic:
        warnings.append("--deterministic: deterministic kernels are slower, so epoch times are not comparable")
    if run_eagerly:
        warnings.append(
            "--run-eagerly: training steps ran as plain Python, without a traced graph, so timings are not comparable"
        )
    return warnings


def training_step(
    adam: str, xla: str, device: dict, distribute: str = "default", deterministic: bool = False,
    run_eagerly: bool = False,
) -> str:
    """Which Adam and whether XLA compiled the training steps (`--adam`, `--xla`), as the header says it.

    XLA `auto` is Keras's own `jit_compile="auto"`: on for a GPU, off on a CPU, under op
    determinism, and with eager steps; Keras also leaves it off for a model with a layer XLA
    cannot compile.
    """
    if adam == "fused":
        optimizer = "Adam fused (lab/networks/adam.py: TensorFlow's one ApplyAdam kernel per weight)"
        if distribute != "default":
            optimizer = f"Adam fused, which takes Keras's own update under --distribute {distribute}"
    else:
        optimizer = "Adam of Keras (keras.optimizers.Adam)"
    if run_eagerly:
        compiled = "XLA off (--run-eagerly traces no graph)"
    elif xla == "auto":
        if not device.get("gpu_count"):
            compiled = "XLA auto (Keras's default): off, no GPU"
        elif deterministic:
            compiled = "XLA auto (Keras's default): off under --deterministic"
        else:
            compiled = "XLA auto (Keras's default): on the GPU, for models whose every layer XLA compiles"
    elif xla == "on" and deterministic:
        compiled = "XLA on, which Keras turns off under --deterministic"
    else:
        compiled = f"XLA {xla}"
    return f"{optimizer}; {compiled}"

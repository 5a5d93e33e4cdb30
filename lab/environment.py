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
    """CPU model and core count, GPU names and count."""
    gpu_names = gpus()
    return {"cpu": cpu_model(), "cpu_cores": os.cpu_count(), "gpus": gpu_names, "gpu_count": len(gpu_names)}


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

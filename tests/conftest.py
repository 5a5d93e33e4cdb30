"""Shared fixtures of the unit tests: synthetic image folders, an offline machine, subprocesses.

Every input here is tiny and made on the spot, so that the whole folder runs in about a minute
on two CPU cores. The only real files read are the two MobileNet weights files of the embedded
sample (lab/inputs/sample/weights), which every clone has.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from lab.inputs import data, image_cache, network, sample

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class ImageFolder:
    """A synthetic `--data-dir` and what was written into it.

    Attributes:
        data_dir: the folder to pass as `data_dir`.
        root: the dataset's own folder (`data_dir/flower_photos`).
        colours: every image file -> (class name, its solid RGB colour).
    """

    data_dir: str
    root: pathlib.Path
    colours: dict[str, tuple[str, tuple[int, int, int]]]

    def class_of(self, image: np.ndarray) -> str:
        """The class whose file has the colour nearest to a loaded (resized) image."""
        return self.colours[self.file_of(image)][0]

    def file_of(self, image: np.ndarray) -> str:
        """The file whose solid colour is nearest to a loaded image; fails if none is near."""
        mean = image.reshape(-1, 3).mean(axis=0)
        paths = list(self.colours)
        distances = [np.linalg.norm(mean - np.array(self.colours[path][1])) for path in paths]
        best = int(np.argmin(distances))
        # Colours are 24 apart per channel; JPEG moves a flat colour by a few levels at most.
        assert distances[best] < 8, f"loaded image matches no written file (off by {distances[best]:.1f})"
        return paths[best]


def colour_for(class_position: int, image_index: int) -> tuple[int, int, int]:
    """A colour unique to (class, image), far enough from every other to survive JPEG."""
    return (10 + 24 * class_position, 10 + 24 * image_index, 128)


@pytest.fixture(scope="session", autouse=True)
def image_cache_dir(tmp_path_factory) -> pathlib.Path:
    """The decoded-image cache of these tests and of the sessions they start, kept out of the user's home."""
    directory = tmp_path_factory.mktemp("image-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(image_cache.CACHE_DIR_VARIABLE, str(directory))
        yield directory


@pytest.fixture
def make_image_folder(tmp_path):
    """Writes a dataset folder in the `flower_photos` layout; returns an `ImageFolder`.

    `make_image_folder(dataset, counts, suffix, classes)`: `counts` maps class name -> number of
    images (default: 2 per class of the dataset); each image is a solid colour unique to its
    file, of a size that differs between files, so that resizing and labels can both be checked.
    `classes` gives a folder other class names than the lab dataset's (then `dataset` names the
    folder, `data_dir/<dataset>`).
    """
    created = 0

    def make(
        dataset: str = "tf_flowers",
        counts: dict[str, int] | None = None,
        suffix: str = ".jpg",
        classes: tuple[str, ...] | None = None,
    ):
        nonlocal created
        created += 1
        data_dir = tmp_path / f"data{created}"
        root = data_dir / (dataset if classes else data.FOLDER_NAMES[dataset])
        names = sorted(classes or data.CLASS_NAMES[dataset])
        counts = counts if counts is not None else {name: 2 for name in names}
        colours = {}
        for position, name in enumerate(names):
            folder = root / name
            folder.mkdir(parents=True)
            for index in range(counts.get(name, 0)):
                colour = colour_for(position, index)
                pixels = np.empty((20 + 3 * index, 24 + 2 * position, 3), np.uint8)
                pixels[:] = colour
                path = folder / f"{name}_{index}{suffix}"
                options = {"quality": 95} if suffix in (".jpg", ".jpeg") else {}
                Image.fromarray(pixels).save(path, **options)
                colours[str(path)] = (name, colour)
        return ImageFolder(str(data_dir), root, colours)

    return make


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """A machine with no network, no Keras cache and no prepared tensorflow-datasets data.

    Also makes any download attempt fail at once: without the lab's own check, tfds and
    keras would retry for minutes, and the test should fail instead of hanging.
    """
    import tensorflow_datasets as tfds

    monkeypatch.setattr(network, "can_reach", lambda *args, **kwargs: False)
    keras_home = tmp_path / "empty-keras-home"
    keras_home.mkdir()
    monkeypatch.setenv("KERAS_HOME", str(keras_home))
    tfds_dir = tmp_path / "empty-tfds"
    tfds_dir.mkdir()
    monkeypatch.setenv("TFDS_DATA_DIR", str(tfds_dir))
    # tensorflow-datasets reads TFDS_DATA_DIR once, at import.
    monkeypatch.setattr(tfds.core.constants, "DATA_DIR", str(tfds_dir))

    def no_download(*args, **kwargs):
        raise AssertionError("tried to download although the machine is offline")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", no_download)
    return {"keras_home": keras_home, "tfds_dir": tfds_dir}


@pytest.fixture
def no_network_calls(monkeypatch):
    """Fails a test that asks whether the download server can be reached."""

    def asked(*args, **kwargs):
        raise AssertionError("asked for the network although a local answer was at hand")

    monkeypatch.setattr(network, "can_reach", asked)


@pytest.fixture(scope="session")
def sample_weights_dir() -> pathlib.Path:
    """The folder of real MobileNet ImageNet weights files, checked against the sample's manifest."""
    sample.verified_root()
    return pathlib.Path(sample.ROOT) / sample.WEIGHTS_FOLDER


@pytest.fixture(scope="session")
def run_python():
    """Runs `python ARGS...` from the repository root: returns (CompletedProcess, seconds).

    The child gets this interpreter, so it sees the same virtual environment.
    """

    def run(*args: str, timeout: float = 120) -> tuple[subprocess.CompletedProcess, float]:
        started = time.perf_counter()
        completed = subprocess.run(
            [sys.executable, *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )
        return completed, time.perf_counter() - started

    return run


@dataclasses.dataclass
class PytestProcess:
    """A pytest session in a subprocess, running from the moment `start_pytest` started it."""

    directory: pathlib.Path
    process: subprocess.Popen

    @property
    def report_dir(self) -> pathlib.Path:
        return self.directory / "reports"

    def finished(self) -> subprocess.CompletedProcess:
        """Waits for the session to end: its exit status and output."""
        stdout, stderr = self.process.communicate(timeout=300)
        return subprocess.CompletedProcess(self.process.args, self.process.returncode, stdout, stderr)


@pytest.fixture(scope="session")
def start_pytest():
    """Starts `pytest ARGS` from the repository root without waiting for it, so that several run
    side by side (each spends most of its seconds importing TensorFlow).

    `start_pytest(directory, *args, plugins=None, **env)` -> `PytestProcess`: its report goes to
    `directory/reports`; `plugins` (module name -> source) are written to `directory` and loaded
    with -p; `env` adds environment variables.
    """

    def start(directory: pathlib.Path, *args: str, plugins: dict[str, str] | None = None, **env: str):
        plugins = plugins or {}
        for name, source in plugins.items():
            (directory / f"{name}.py").write_text(source)
        loaded = [option for name in plugins for option in ("-p", name)]
        process = subprocess.Popen(
            [sys.executable, "-m", "pytest", *loaded, *args, f"--report-dir={directory / 'reports'}"],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONPATH": f"{directory}{os.pathsep}{REPO_ROOT}", **env},
        )
        return PytestProcess(directory, process)

    return start

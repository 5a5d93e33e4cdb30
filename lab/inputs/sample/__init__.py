"""The embedded sample: real tf_flowers photos, CIFAR-10 images and MobileNet weights in the project.

It is laid out like `../shared/data` (`flower_photos/<class>/*.jpg`, `cifar10/<class>/*.png`,
`weights/<official file name>`), so the folder loader reads it, and `MANIFEST.csv` lists every
file with its sha256. `python -m lab.inputs.sample build --from ../shared/data` makes it.
"""

from __future__ import annotations

import csv
import functools
import os

from lab.errors import LabInputError
from lab.runtime.atomic import file_digest

ROOT = os.path.dirname(os.path.abspath(__file__))
MANIFEST = "MANIFEST.csv"
MANIFEST_COLUMNS = ("path", "sha256", "bytes")
# Folders that hold the sample's data; any file in them must be listed in the manifest.
DATA_FOLDERS = ("flower_photos", "cifar10", "weights")
WEIGHTS_FOLDER = "weights"
REBUILD_COMMAND = "python -m lab.inputs.sample build --from ../shared/data"
DESCRIPTION = "embedded sample (500 tf_flowers photos at <= 160 px, 2,500 CIFAR-10 images)"


def _broken(what: str) -> LabInputError:
    return LabInputError(
        f"embedded sample {what}: restore lab/inputs/sample from the repository, or rebuild it with "
        f"`{REBUILD_COMMAND}`"
    )


def read_manifest(root: str | None = None) -> dict[str, str]:
    """The manifest of the sample in `root` (default `ROOT`): relative path -> sha256."""
    path = os.path.join(root or ROOT, MANIFEST)
    try:
        with open(path, newline="", encoding="utf-8") as stream:
            return {row["path"]: row["sha256"] for row in csv.DictReader(stream)}
    except FileNotFoundError:
        raise _broken(f"manifest {path} is missing") from None
    except (KeyError, csv.Error, UnicodeDecodeError) as error:
        raise _broken(f"manifest {path} is not a manifest ({error})") from None


def _check_file(root: str, relative: str, expected: str) -> str:
    path = os.path.join(root, relative)
    if not os.path.isfile(path):
        raise _broken(f"file {path} is missing")
    if file_digest(path) != expected:
        raise _broken(f"file {path} was altered (its sha256 differs from {MANIFEST})")
    return path


def verified_root(root: str | None = None) -> str:
    """Checks every file of the sample against its manifest, once per process; returns its root.

    Args:
        root: the sample's folder (default `ROOT`).

    Raises:
        LabInputError: naming the first file that is missing, altered or not in the manifest,
            and how to rebuild the sample.
    """
    return _verified(root or ROOT)


@functools.cache
def _verified(root: str) -> str:
    manifest = read_manifest(root)
    for relative, expected in manifest.items():
        _check_file(root, relative, expected)
    for folder in DATA_FOLDERS:
        for directory, _, names in os.walk(os.path.join(root, folder)):
            for name in names:
                path = os.path.join(directory, name)
                if os.path.relpath(path, root).replace(os.sep, "/") not in manifest:
                    raise _broken(f"file {path} is not in {MANIFEST} (delete it)")
    return root


def embedded_weights(file_name: str, root: str | None = None) -> str | None:
    """The path of the weights file `file_name` in the sample (checked), or None if it has none.

    Args:
        file_name: Keras's official file name.
        root: the sample's folder (default `ROOT`).

    Raises:
        LabInputError: the manifest lists the file but it is missing or altered.
    """
    return _embedded_weights(file_name, root or ROOT)


@functools.cache
def _embedded_weights(file_name: str, root: str) -> str | None:
    relative = f"{WEIGHTS_FOLDER}/{file_name}"
    expected = read_manifest(root).get(relative)
    return None if expected is None else _check_file(root, relative, expected)

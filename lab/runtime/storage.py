"""Saved models: written whole or not at all, shared safely between processes, loaded safely."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable

import filelock
import keras

from lab.errors import LabInputError
from lab.runtime.atomic import atomic_write, atomic_write_text


def atomic_save_model(model: keras.Model, path: str) -> None:
    """Saves `model` as a `.keras` file that readers see either complete or not at all."""
    atomic_write(path, model.save, ".keras")


def load_model(path: str) -> keras.Model:
    """Loads a `.keras` file with Keras's safe mode on: no code from the file runs.

    Raises:
        LabInputError: the file is missing, truncated, not a Keras model file, has a malformed
            `config.json`, or holds code that safe mode refuses to run; each says which.
    """
    if not os.path.isfile(path):
        raise LabInputError(f"model file {path} does not exist: run the experiment that saves it first")
    retrain = "delete it so that the experiment that saves it trains it again"
    try:
        return keras.saving.load_model(path, safe_mode=True)
    except (TypeError, json.JSONDecodeError) as error:
        raise LabInputError(
            f"model file {path} has a malformed config.json ({_first_line(error)}): {retrain}"
        ) from None
    except ValueError as error:
        # Keras's refusals all point at `safe_mode=False`, which the lab never passes.
        if "safe_mode" in str(error):
            raise LabInputError(
                f"model file {path} holds Python code (a Lambda layer or a function) that Keras's safe mode "
                f"refused to run ({_first_line(error)}): the lab loads only models it saved itself; {retrain}"
            ) from None
        raise _truncated(path, error, retrain) from None
    except (OSError, KeyError) as error:
        raise _truncated(path, error, retrain) from None


def _truncated(path: str, error: Exception, retrain: str) -> LabInputError:
    return LabInputError(f"model file {path} is truncated or not a Keras model file ({_first_line(error)}): {retrain}")


def _first_line(error: Exception) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200]}"


def ensure_saved(path: str, create: Callable[[str], dict]) -> dict:
    """Creates the model file at `path` once across every process, and returns its metadata.

    The first process to take the lock calls `create(path)`, which must save the model
    (atomically) and return JSON-able metadata about it; that metadata is stored beside the
    model. Every other process waits for the lock and reads what the first one wrote.
    """
    metadata_path = path + ".json"
    with filelock.FileLock(path + ".lock"):
        if os.path.exists(path) and os.path.exists(metadata_path):
            with open(metadata_path, encoding="utf-8") as stream:
                return {**json.load(stream), "created_here": False}
        metadata = create(path)
        atomic_write_text(metadata_path, json.dumps(metadata, indent=2))
        return {**metadata, "created_here": True}


def weights_digest(model: keras.Model) -> str:
    """SHA-256 over every weight of `model`, in order: equal digests, byte-identical weights."""
    digest = hashlib.sha256()
    for weight in model.weights:
        digest.update(weight.numpy().tobytes())
    return digest.hexdigest()


def check_writable(folder: str, what: str, fix: str) -> None:
    """Checks that files can be written in `folder`, creating it if need be.

    Raises:
        LabInputError: saying that `what` cannot be written to `folder`, why, and `fix`.
    """
    try:
        os.makedirs(folder, exist_ok=True)
        probe = os.path.join(folder, f".write-check-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as error:
        raise LabInputError(f"cannot write {what} to {folder} ({error.strerror}): {fix}") from None

"""Epoch timing: a callback that records the wall time of every epoch."""

from __future__ import annotations

import time

import keras


class EpochTimes(keras.callbacks.Callback):
    """Records seconds per epoch; the first epoch after a compile() includes graph tracing."""

    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []
        self._started = 0.0

    def on_epoch_begin(self, epoch, logs=None):
        self._started = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._started)

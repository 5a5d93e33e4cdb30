"""A quick answer to "can this machine reach the download servers?"."""

from __future__ import annotations

import functools
import socket

# Both tensorflow-datasets and keras.applications download from Google Cloud Storage.
DOWNLOAD_HOST = "storage.googleapis.com"


@functools.cache
def can_reach(host: str = DOWNLOAD_HOST, port: int = 443, timeout: float = 3.0) -> bool:
    """Returns whether a TCP connection to `host` opens within `timeout` seconds.

    Asked once per process: download libraries retry for minutes where this answers in seconds.
    """
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False

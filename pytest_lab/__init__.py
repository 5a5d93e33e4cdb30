"""The lab's pytest plumbing: the session plugin that writes the report, and the key under
which the run's checked settings live in `config.stash`."""

import pytest

from lab.config import RunConfig

RUN_CONFIG = pytest.StashKey[RunConfig]()

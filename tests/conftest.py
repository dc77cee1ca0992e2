"""Fixtures shared by all tests."""

from __future__ import annotations

import contextlib
import os
import signal

import pytest

from helpers import worker_pids


@pytest.fixture
def kill_leftovers():
    """Markers (command-line substrings) of workers to kill after the test, pass or fail."""
    markers: list[str] = []
    yield markers
    for m in markers:
        for pid in worker_pids(m):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

"""Fixtures shared by all tests."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile

import pytest

from helpers import worker_pids

_RAY_TMP = pytest.StashKey[str]()


def pytest_configure(config: pytest.Config) -> None:
    """Ray keeps every session's logs and sockets under ``$RAY_TMPDIR/ray`` (else
    ``$TMPDIR/ray``, else ``/tmp/ray``) and never removes them: each run of the Ray tests
    left ~20 MB there. The tests' sessions go to a directory of their own, removed at the
    end (unless ``RAY_TMPDIR`` is set: then it is the caller's)."""
    if "RAY_TMPDIR" not in os.environ:
        where = tempfile.mkdtemp(prefix="qf-ray-tests-")  # short: Ray's socket paths
        os.environ["RAY_TMPDIR"] = where
        config.stash[_RAY_TMP] = where


def pytest_unconfigure(config: pytest.Config) -> None:
    where = config.stash.get(_RAY_TMP, None)
    if where is not None:
        os.environ.pop("RAY_TMPDIR", None)
        shutil.rmtree(where, ignore_errors=True)


@pytest.fixture
def kill_leftovers():
    """Markers (command-line substrings) of workers to kill after the test, pass or fail."""
    markers: list[str] = []
    yield markers
    for m in markers:
        for pid in worker_pids(m):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

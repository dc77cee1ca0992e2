"""Replica bookkeeping shared by the concrete backends (``local.py``, ``ray/backend.py``).

Both declare a start the same way (check the stage, number the replica, a ``STARTING``
``ReplicaInfo``), and treat a start that fails the same way: the replica is reported
``FAILED`` with the reason, the listener hears ``replica_start_failed``, and its stage
backs off 1 s, 2 s, 4 s, ... 30 s before the next start, so a broken stage does not spin;
a start that succeeds resets the count. What differs (a process or a Ray actor to clean
up) stays in each backend.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Protocol

from quartfaas.control.backend import ReplicaInfo, ReplicaState
from quartfaas.errors import BackendError
from quartfaas.spec import PipelineSpec

log = logging.getLogger("quartfaas.backends")

MAX_BACKOFF_S = 30.0


class StartFailedListener(Protocol):
    def replica_start_failed(self, info: ReplicaInfo) -> None: ...


class StartBook:
    """Replica ids and start back-off of one backend."""

    def __init__(self, spec: PipelineSpec, clock: Callable[[], float]) -> None:
        self.spec = spec
        self.clock = clock
        self._ids = itertools.count(1)
        self._backoff_until: dict[str, float] = {}
        self._failures: dict[str, int] = {}

    def declare(self, stage: str, *, closed: bool) -> ReplicaInfo:
        """A new replica of ``stage`` (``STARTING``), or ``BackendError`` saying why not."""
        if closed:
            raise BackendError("the backend is shut down")
        try:
            idx = self.spec.stage_index(stage)
        except KeyError:
            names = [s.name for s in self.spec.stages]
            raise BackendError(f"unknown stage {stage!r}; stages: {names}") from None
        return ReplicaInfo(
            replica_id=f"{stage}-{next(self._ids)}",
            stage=stage,
            state=ReplicaState.STARTING,
            requested_at=self.clock(),
            cpu=self.spec.stages[idx].cpu,
        )

    async def wait_backoff(self, stage: str) -> None:
        """Sleep out the stage's back-off, if its last starts failed."""
        wait_s = self._backoff_until.get(stage, 0.0) - self.clock()
        if wait_s > 0:
            await asyncio.sleep(wait_s)

    def started(self, stage: str) -> None:
        self._failures[stage] = 0

    def failed(self, info: ReplicaInfo, message: str, listener: StartFailedListener) -> ReplicaInfo:
        """Record a failed start: back off the stage, log, tell the listener; returns the
        replica's ``FAILED`` info (the caller drops the replica from its table)."""
        stage = info.stage
        n = self._failures.get(stage, 0) + 1
        self._failures[stage] = n
        self._backoff_until[stage] = self.clock() + min(MAX_BACKOFF_S, 2.0 ** (n - 1))
        msg = f"replica {info.replica_id} of stage {stage} failed to start: {message}"
        log.error("%s", msg)
        failed = replace(info, state=ReplicaState.FAILED, message=msg)
        listener.replica_start_failed(failed)
        return failed

"""The local backend: stage replicas as worker processes on this machine.

It implements ``control.backend.Backend`` (non-blocking declarations; readiness observed
later) on the gateway's event loop, and tells a ``ReplicaListener`` (the gateway, which
feeds its dispatcher) when a replica becomes ready, must be drained, or is gone.

How a replica process is made is a ``Launcher``'s business (``dataplane/launch.py``):
``ColdLauncher`` starts ``python -m quartfaas.dataplane.worker``; the parameter cache's
launcher (``dataplane/param_cache/``) forks one from a stage template holding the
weights. This module imports the data plane's launch seam, never the other way round.

Faults: a replica that exits while serving is marked FAILED, the listener retries its
in-flight requests elsewhere, and a replacement is started at once. A replica not ready
within ``replica_start_timeout_s`` is killed and reported with the tail of its log; its
stage backs off (1 s, 2 s, ... 30 s) before the next launch so a broken stage does not
spin. Every process gets a *lifeline* fd whose write end only this process holds: if
the gateway dies, workers see EOF and exit (no orphans).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

from quartfaas.backends.lifecycle import StartBook
from quartfaas.control.backend import CpuLever, PoolStatus, ReplicaInfo, ReplicaState
from quartfaas.dataplane.launch import ColdLauncher, Launched, Launcher, ReplicaFiles, read_tail
from quartfaas.errors import BackendError, ReplicaStartTimeout
from quartfaas.spec import PipelineSpec

log = logging.getLogger(__name__)

# Longest wait for a drained replica to exit on SIGTERM before SIGKILL.
TERM_GRACE_S = 5.0


class ReplicaListener(Protocol):
    """What the gateway does when replicas change (the dispatcher's membership)."""

    def replica_starting(self, info: ReplicaInfo) -> None: ...

    def replica_ready(self, info: ReplicaInfo) -> None: ...

    def replica_start_failed(self, info: ReplicaInfo) -> None: ...

    def replica_gone(self, info: ReplicaInfo) -> None: ...

    async def drain_replica(self, info: ReplicaInfo, timeout_s: float) -> bool: ...


@runtime_checkable
class _PoolLauncher(Protocol):
    """A launcher whose templates keep warmed children (``dataplane/param_cache/``)."""

    def set_pool(self, stage: str, depth: int) -> None: ...

    def pool_status(self, stage: str) -> PoolStatus | None: ...


@dataclass
class _Replica:
    info: ReplicaInfo
    launched: Launched | None = None
    task: asyncio.Task[None] | None = None
    stopping: bool = False


class LocalBackend:
    """Replicas as local processes; all methods are called on the gateway's event loop."""

    def __init__(
        self,
        spec: PipelineSpec,
        listener: ReplicaListener,
        *,
        files: ReplicaFiles | None = None,
        launcher: Launcher | None = None,
        clock: Callable[[], float] = time.monotonic,
        set_cpu: Callable[[ReplicaInfo, float], CpuLever] | None = None,
        on_ready: Callable[[ReplicaInfo], None] | None = None,
        on_exit: Callable[[ReplicaInfo], None] | None = None,
    ) -> None:
        self.spec = spec
        self.listener = listener
        self.files = files or ReplicaFiles(spec)
        self.launcher: Launcher = launcher or ColdLauncher(self.files)
        self.clock = clock
        self._set_cpu = set_cpu
        self._on_ready = on_ready
        self._on_exit = on_exit
        self._replicas: dict[str, _Replica] = {}
        self._book = StartBook(spec, clock)  # ids and start back-off (backends/lifecycle.py)
        self.closed = False

    # -- Backend protocol -----------------------------------------------------------

    def start_replica(self, stage: str) -> ReplicaInfo:
        info = self._book.declare(stage, closed=self.closed)
        rid = info.replica_id
        rep = _Replica(info)
        self._replicas[rid] = rep
        self.listener.replica_starting(info)
        rep.task = asyncio.get_running_loop().create_task(self._run(rep), name=f"replica {rid}")
        return info

    def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        rep = self._replicas.get(replica_id)
        if rep is None or rep.stopping:
            return
        rep.stopping = True
        was_ready = rep.info.state is ReplicaState.READY
        self._set(rep, state=ReplicaState.DRAINING)
        asyncio.get_running_loop().create_task(self._stop(rep, drain and was_ready))

    def list_replicas(self, stage: str | None = None) -> list[ReplicaInfo]:
        return [
            r.info
            for r in self._replicas.values()
            if (stage is None or r.info.stage == stage) and r.info.state is not ReplicaState.STOPPED
        ]

    def set_cpu(self, replica_id: str, cpus: float) -> CpuLever:
        rep = self._replicas.get(replica_id)
        if rep is None:
            raise BackendError(f"no replica {replica_id}")
        if self._set_cpu is None:
            raise BackendError("no CPU lever is configured for the local backend")
        lever = self._set_cpu(rep.info, cpus)
        self._set(rep, cpu=cpus)
        return lever

    # -- pre-fork pool (control.backend.PoolScalable) ----------------------------------

    def set_pool(self, stage: str, depth: int) -> None:
        """Keep ``depth`` warmed children of ``stage``; a no-op for a launcher without a pool."""
        if isinstance(self.launcher, _PoolLauncher):
            self.launcher.set_pool(stage, depth)

    def pool_status(self, stage: str) -> PoolStatus | None:
        if isinstance(self.launcher, _PoolLauncher):
            return self.launcher.pool_status(stage)
        return None

    # -- lifecycle ------------------------------------------------------------------

    def _set(self, rep: _Replica, **changes: object) -> None:
        rep.info = replace(rep.info, **changes)  # type: ignore[arg-type]

    async def _run(self, rep: _Replica) -> None:
        stage = rep.info.stage
        timeout = self.spec.gateway.replica_start_timeout_s
        await self._book.wait_backoff(stage)  # a stage whose starts keep failing backs off
        if rep.stopping:
            self._finish(rep, ReplicaState.STOPPED)
            return
        t_launch = self.clock()
        try:
            launched, tier = await asyncio.wait_for(
                self.launcher.launch(stage, rep.info.replica_id), timeout
            )
        except TimeoutError:
            self._start_failed(
                rep, f"not launched within {timeout:.0f} s (replica_start_timeout_s)"
            )
            return
        except Exception as exc:  # launch itself failed (fork refused, no memory, ...)
            self._start_failed(rep, f"could not launch: {exc}")
            return
        timeout = max(0.1, timeout - (self.clock() - t_launch))
        rep.launched = launched
        self._set(rep, pid=launched.pid, tier=tier)
        if rep.stopping:  # stopped while launching: _stop() left the process to us
            await self._terminate(launched)
            self._finish(rep, ReplicaState.STOPPED)
            return
        try:
            port = await asyncio.wait_for(self._await_ready(rep, launched), timeout)
        except (TimeoutError, ReplicaStartTimeout) as exc:
            if rep.stopping:
                return  # _stop() signalled it and finishes the bookkeeping
            launched.signal(signal.SIGKILL)
            tail = read_tail(launched.log_path)
            why = str(exc) or f"not ready within {timeout:.0f} s (replica_start_timeout_s)"
            self._start_failed(rep, why + (f"; log tail:\n{tail}" if tail else ""))
            await launched.wait()
            self.launcher.released(stage, rep.info.replica_id)
            return
        now = self.clock()
        self._book.started(stage)
        self._set(
            rep,
            state=ReplicaState.READY,
            address=f"http://127.0.0.1:{port}",
            ready_at=now,
        )
        if self._on_ready is not None:
            self._on_ready(rep.info)  # e.g. put the process in its CPU group
        if not rep.stopping:
            self.listener.replica_ready(rep.info)
        code = await launched.wait()
        if rep.stopping:
            return  # _stop() finishes the bookkeeping
        # Exited while serving: a crash. Start the replacement *first*, so the requests
        # queued behind this replica see one coming and wait for it, then report it gone
        # (its in-flight requests are retried elsewhere by the gateway).
        tail = read_tail(launched.log_path, 4)
        log.warning("replica %s exited with code %s while serving", rep.info.replica_id, code)
        if not self.closed:
            self.start_replica(stage)
        self._finish(rep, ReplicaState.FAILED, f"exited with code {code}: {tail}")

    async def _await_ready(self, rep: _Replica, launched: Launched) -> int:
        port: int | None = None
        async for event in launched.events():
            kind = event.get("event")
            if kind == "listening":
                port = int(str(event["port"]))
            elif kind == "failed":
                raise ReplicaStartTimeout(f"worker failed to load: {event.get('message')}")
            elif kind == "ready" and port is not None:
                return port
        code = await launched.wait()
        raise ReplicaStartTimeout(f"worker exited with code {code} before it was ready")

    def _start_failed(self, rep: _Replica, message: str) -> None:
        rep.info = self._book.failed(rep.info, message, self.listener)
        self._replicas.pop(rep.info.replica_id, None)

    def _finish(self, rep: _Replica, state: ReplicaState, message: str = "") -> None:
        if rep.info.state in (ReplicaState.STOPPED, ReplicaState.FAILED):
            return  # already finished (a stop racing a crash or a failed start)
        self._set(rep, state=state, message=message)
        self.listener.replica_gone(rep.info)
        self._replicas.pop(rep.info.replica_id, None)
        if rep.launched is not None:
            self.launcher.released(rep.info.stage, rep.info.replica_id)
            if self._on_exit is not None:
                self._on_exit(rep.info)

    async def _stop(self, rep: _Replica, drain: bool) -> None:
        if drain:
            drained = await self.listener.drain_replica(rep.info, self.spec.gateway.drain_timeout_s)
            if not drained:
                log.warning("replica %s did not drain in time", rep.info.replica_id)
        if rep.launched is None:
            return  # still launching: _run() sees `stopping` and stops the process
        await self._terminate(rep.launched)
        self._finish(rep, ReplicaState.STOPPED)

    async def _terminate(self, launched: Launched, grace_s: float | None = None) -> int:
        """SIGTERM, a bounded wait, then SIGKILL: a process that ignores or never sees the
        SIGTERM (one signalled right after its fork) still goes. The wait is short: the
        replica has been drained, so it has nothing left to finish."""
        grace = min(TERM_GRACE_S, self.spec.gateway.drain_timeout_s) if grace_s is None else grace_s
        launched.signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(asyncio.shield(launched.wait()), max(0.1, grace))
        except TimeoutError:
            log.warning("pid %s ignored SIGTERM for %.1f s: SIGKILL", launched.pid, grace)
            launched.signal(signal.SIGKILL)
            return await launched.wait()

    async def close(self, grace_s: float = 5.0) -> None:
        """Stop every replica (no drain: the gateway has stopped taking requests).

        SIGTERM to all, up to ``grace_s`` for them to exit, then SIGKILL; each replica is
        then finished as on any stop, so its CPU group is released (``on_exit``)."""
        self.closed = True
        reps = list(self._replicas.values())
        for rep in reps:
            rep.stopping = True
        await asyncio.gather(*(self._close_one(rep, grace_s) for rep in reps))
        self._replicas.clear()
        await self.launcher.close()
        self.files.close()

    async def _close_one(self, rep: _Replica, grace_s: float) -> None:
        if rep.launched is not None:
            await self._terminate(rep.launched, grace_s)
        if rep.task is not None and not rep.task.done():
            rep.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await rep.task
        if rep.launched is not None:
            self._finish(rep, ReplicaState.STOPPED)

"""The embedded runtime: gateway + local backend (+ controller) in one process.

``EmbeddedRuntime`` is the composition root: it wires a ``Gateway`` (HTTP API and
dispatch, ``dataplane/gateway/``), a ``LocalBackend`` (worker processes,
``backends/local.py``) and, when enabled, the control loop, on one asyncio event loop.
It sits above both: the local backend imports the data plane's launch seam, the data
plane imports neither (import-linter contracts in ``pyproject.toml``).

It starts each stage's ``min_replicas``, waits (with a deadline) until the pipeline can
serve, and shuts everything down cleanly: stop taking requests, let in-flight requests
finish for a grace period, stop the workers, leave no processes behind.

With ``cache.enabled`` replicas start through the parameter cache
(``dataplane/param_cache/``: fork from a stage template); otherwise each replica is a
fresh process. Stages with ``min_replicas: 0`` get their template loaded at start, so a
first request forks a replica at once; an idle reaper takes them back to zero after
``cache.idle_to_zero_s`` without arrivals. Replicas are put in their own CPU group with
the stage's ``cpu`` quota where a cgroup lever exists (``backends/cpu.py``), which is also
how the CPU compensator resizes them in place.

``quartfaas serve`` runs one until Ctrl-C; tests and benchmarks use ``async with``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from quartfaas.backends.cpu import CpuActuator
from quartfaas.backends.local import LocalBackend
from quartfaas.clock import Clock, MonotonicClock
from quartfaas.control.backend import ReplicaInfo, ReplicaState, reconcile
from quartfaas.control.loop import ControlLoop, run_live
from quartfaas.dataplane.gateway import Gateway
from quartfaas.dataplane.launch import Launcher, ReplicaFiles
from quartfaas.errors import BackendError
from quartfaas.metrics.proc_cpu import ProcessCpuMeter
from quartfaas.spec import PipelineSpec

log = logging.getLogger("quartfaas.runtime")


class EmbeddedRuntime:
    """Gateway, replicas and controller of one pipeline on this machine."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        host: str | None = None,
        port: int | None = None,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        launcher_factory: Callable[[ReplicaFiles], Launcher] | None = None,
        controller: bool | None = None,
        base_dir: Path | None = None,
        decision_log: Path | None = None,
    ) -> None:
        self.spec = spec
        self.host = host or spec.gateway.host
        self.port = spec.gateway.port if port is None else port
        self.clock = clock or MonotonicClock()
        self.environ = dict(os.environ if environ is None else environ)
        self.gateway = Gateway(spec, clock=self.clock, environ=self.environ)
        self.files = ReplicaFiles(spec, base_dir)
        if launcher_factory is not None:
            launcher: Launcher | None = launcher_factory(self.files)
        elif spec.cache.enabled:
            from quartfaas.dataplane.param_cache import ParamCacheLauncher

            launcher = ParamCacheLauncher(self.files, clock=self.clock.now)
        else:
            launcher = None
        self.cpu = CpuActuator.detect(environ=self.environ)
        self.backend = LocalBackend(
            spec,
            self.gateway.replicas,
            files=self.files,
            launcher=launcher,
            clock=self.clock.now,
            set_cpu=self.cpu.set_cpu,
            on_ready=self._replica_ready,
            on_exit=self._replica_exit,
        )
        self.gateway.backend = self.backend
        self.gateway.on_failed_replica = self._replica_failed
        self.controller_enabled = spec.controller.enabled if controller is None else controller
        self.decision_log = decision_log
        self.loop: ControlLoop | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self._started_at = self.clock.now()
        self._cpu_meters: dict[str, ProcessCpuMeter] = {}
        self.url = ""

    async def __aenter__(self) -> EmbeddedRuntime:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(self, *, wait_ready: bool = True) -> str:
        self._runner = web.AppRunner(self.gateway.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.url = f"http://{self.host}:{port}"
        log.info("%s", self.cpu.report.describe())
        for stage in self.spec.stages:
            if stage.min_replicas == 0:
                await self.backend.launcher.prewarm(stage.name)
            reconcile(self.backend, stage.name, stage.min_replicas)
        if any(s.min_replicas == 0 for s in self.spec.stages):
            self.add_task(self._idle_reaper(), "idle-reaper")
        if wait_ready:
            try:
                await self.wait_ready()
            except BaseException:
                await self.stop()
                raise
        if self.controller_enabled:
            self.start_controller()
        return self.url

    def start_controller(self) -> ControlLoop:
        """The control loop on this event loop: in-process snapshots, this backend."""
        from quartfaas.control.registry import make_policy
        from quartfaas.control.sinks import DecisionMetrics, HoldLogger, JsonlDecisionLog
        from quartfaas.metrics.collector import InProcessCollector

        cfg = self.spec.controller
        sinks: list[Any] = [DecisionMetrics(self.gateway.metrics.registry), HoldLogger()]
        if self.decision_log is not None:
            sinks.append(JsonlDecisionLog(self.decision_log))
        self.loop = ControlLoop(make_policy(cfg.policy, cfg), self.backend, sinks)
        collector = InProcessCollector(self.gateway, cpu_utilisation=self._cpu_utilisation)
        self.add_task(
            run_live(self.loop, collector.collect, self.clock, cfg.interval_s, self._stop),
            "controller",
        )
        log.info("controller: policy %s every %.1f s", cfg.policy, cfg.interval_s)
        return self.loop

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every stage has min_replicas ready; a start failure raises at once."""
        timeout_s = timeout_s or self.spec.gateway.replica_start_timeout_s + 5.0
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            missing = []
            for stage in self.spec.stages:
                pool = self.gateway.pools[stage.name]
                if pool.ready_replicas < stage.min_replicas:
                    if pool.last_start_error:
                        raise BackendError(pool.last_start_error)
                    missing.append(f"{stage.name} ({pool.ready_replicas}/{stage.min_replicas})")
            if not missing:
                return
            if loop.time() > deadline:
                raise BackendError(f"stages not ready after {timeout_s:.0f} s: {missing}")
            await asyncio.sleep(0.01)

    def _cpu_utilisation(self, stage: str, now: float) -> float | None:
        """Mean over ready replicas of (cores used / CPU share) since the last tick."""
        reps = [r for r in self.backend.list_replicas(stage) if r.state is ReplicaState.READY]
        pids = [r.pid for r in reps if r.pid is not None]
        used = self._cpu_meters.setdefault(stage, ProcessCpuMeter()).sample(pids, now)
        share = max((r.cpu or 0.0 for r in reps), default=0.0)
        if not used or share <= 0:
            return None
        return sum(used) / len(used) / share

    def _replica_ready(self, info: ReplicaInfo) -> None:
        """Give a new replica its stage's CPU share in place (where a cgroup lever exists)."""
        if self.cpu.cgroup is None or info.pid is None:
            return
        stage = self.spec.stages[self.spec.stage_index(info.stage)]
        done = self.cpu.apply(info.replica_id, stage.cpu, pid=info.pid)
        if not done.ok:
            log.warning("replica %s: no CPU quota: %s", info.replica_id, "; ".join(done.notes))

    def _replica_exit(self, info: ReplicaInfo) -> None:
        if self.cpu.cgroup is not None:
            self.cpu.release(info.replica_id)

    async def _idle_reaper(self) -> None:
        """Stages that may scale to zero go there after ``idle_to_zero_s`` without arrivals."""
        idle_s = self.spec.cache.idle_to_zero_s
        while True:
            await asyncio.sleep(min(1.0, idle_s / 4))
            now = self.clock.now()
            for stage in self.spec.stages:
                if stage.min_replicas > 0:
                    continue
                pool = self.gateway.pools[stage.name]
                last = self.gateway.metrics.stages[stage.name].last_at or self._started_at
                if pool.inflight or pool.queue_len or now - last < idle_s:
                    continue
                if self.backend.list_replicas(stage.name):
                    log.info("stage %s idle for %.0f s: scaling to zero", stage.name, idle_s)
                    reconcile(self.backend, stage.name, 0)

    def _replica_failed(self, replica_id: str, why: str) -> None:
        """A replica failed a request: if its process still lives, kill it (replaced)."""
        for info in self.backend.list_replicas():
            if info.replica_id == replica_id and info.state is ReplicaState.READY and info.pid:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(info.pid, signal.SIGKILL)

    def add_task(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def stop(self, grace_s: float = 5.0) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._runner is not None:
            # Stop accepting, give in-flight requests a grace period, then stop workers.
            await self._runner.shutdown()
            await asyncio.sleep(0)
            await self._runner.cleanup()
            self._runner = None
        await self.backend.close()
        await self.gateway.close()
        self.files.close()

    async def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM, then stop cleanly."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stop.set)
        try:
            await self._stop.wait()
        finally:
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(sig)
            await self.stop()

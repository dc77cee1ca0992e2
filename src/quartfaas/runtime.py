"""The embedded runtime: gateway + local backend (+ controller) in one process.

``EmbeddedRuntime`` is the composition root: it wires a ``Gateway`` (HTTP API and
dispatch, ``dataplane/gateway/``), a ``LocalBackend`` (worker processes,
``backends/local.py``) and, when enabled, the control loop, on one asyncio event loop.
It sits above both: the local backend imports the data plane's launch seam, the data
plane imports neither (import-linter contracts in ``pyproject.toml``).

It listens first (``/healthz`` is liveness; ``/readyz`` turns 200 once every stage has
its ``min_replicas`` in rotation; a request sent before then waits for its stage's first
replica), starts each stage's ``min_replicas`` and templates concurrently, waits (with a
deadline) until the pipeline can serve, and shuts everything down cleanly (``stop``):
stop accepting, answer every accepted request within ``grace_s``, then stop the workers
(SIGTERM, then SIGKILL), release their CPU groups and remove the runtime folder; a second
SIGINT/SIGTERM skips the wait. At start it sweeps what dead gateways (kill -9) left:
runtime folders, tmpfs weight copies and CPU groups, each recognised by its owner's pid.

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
from quartfaas.control.loop import ControlLoop
from quartfaas.dataplane.gateway import Gateway
from quartfaas.dataplane.gateway.routes import server_options
from quartfaas.dataplane.launch import Launcher, ReplicaFiles, pid_alive, sweep_stale_dirs
from quartfaas.live_control import live_controller
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
        sweep_stale_dirs(base_dir)
        self.files = ReplicaFiles(spec, base_dir)
        if launcher_factory is not None:
            launcher: Launcher | None = launcher_factory(self.files)
        elif spec.cache.enabled:
            from quartfaas.dataplane.param_cache import ParamCacheLauncher

            launcher = ParamCacheLauncher(self.files, clock=self.clock.now)
        else:
            launcher = None
        self.cpu = CpuActuator.detect(environ=self.environ)
        if self.cpu.cgroup is not None:
            self.cpu.cgroup.own_prefix(spec.name, os.getpid())
            swept = self.cpu.cgroup.sweep_stale(pid_alive)
            if swept:
                log.info("removed %d CPU group(s) of dead gateways", len(swept))
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
        self._hurry = asyncio.Event()  # a second SIGINT/SIGTERM: no more waiting
        self._started_at = self.clock.now()
        self._cpu_meters: dict[str, ProcessCpuMeter] = {}
        self.url = ""

    async def __aenter__(self) -> EmbeddedRuntime:
        await self.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.stop()

    async def start(
        self, *, wait_ready: bool = True, on_listening: Callable[[str], None] | None = None
    ) -> str:
        """Listen, start every stage's replicas (templates in parallel), and with
        ``wait_ready`` wait until ``/readyz`` would answer 200. ``on_listening(url)`` is
        called as soon as the port is bound (requests sent from then on wait for their
        stage's first replica)."""
        self._runner = web.AppRunner(
            self.gateway.app(),
            shutdown_timeout=self.spec.gateway.drain_timeout_s,
            **server_options(self.spec),
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.host, self.port, backlog=1024)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        port = sockets[0].getsockname()[1] if sockets else self.port
        self.url = f"http://{self.host}:{port}"
        if on_listening is not None:
            on_listening(self.url)
        log.info("%s", self.cpu.report.describe())
        for stage in self.spec.stages:
            reconcile(self.backend, stage.name, stage.min_replicas)
        self.add_task(self.gateway.replicas.probe_forever(), "outlier-probes")
        # Templates of stages that may scale from zero load now, together (their loads
        # and the replicas' templates above overlap instead of queueing).
        zero = [s.name for s in self.spec.stages if s.min_replicas == 0]
        if zero:
            try:
                await asyncio.gather(*(self.backend.launcher.prewarm(name) for name in zero))
            except BaseException:
                await self.stop()
                raise
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
        from quartfaas.hostcores import host_cores

        cfg = self.spec.controller
        if cfg.host_cores is None:  # the replicas run here: the CPU compensator's cap
            cfg = cfg.model_copy(update={"host_cores": host_cores()})
        self.loop, run = live_controller(
            cfg, self.gateway, self.backend, self.clock, self._stop,
            decision_log=self.decision_log, cpu_utilisation=self._cpu_utilisation,
        )  # fmt: skip
        self.add_task(run, "controller")
        return self.loop

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every stage has min_replicas ready; a start failure raises at once."""
        timeout_s = timeout_s or self.spec.gateway.replica_start_timeout_s + 5.0
        await self.gateway.replicas.wait_ready(timeout_s)

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

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop accepting, answer every accepted request within ``grace_s`` (default
        ``gateway.drain_timeout_s``), then stop the workers. A second SIGINT/SIGTERM
        (``serve_forever``) cuts the wait short."""
        grace = self.spec.gateway.drain_timeout_s if grace_s is None else grace_s
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._runner is not None:
            runner, self._runner = self._runner, None
            for site in list(runner.sites):
                await site.stop()  # no new connections; accepted ones go on
            await asyncio.sleep(0)  # requests already read start their handlers
            loop = asyncio.get_running_loop()
            t0 = loop.time()
            drained = await self._drain(grace)
            if not drained:
                log.warning("requests still in flight after %.1f s: closing them", grace)
            # aiohttp waits for handlers still running (new keep-alive requests) at most
            # the rest of the grace period, not its 60 s default (and 0 means no limit).
            left = 0.01 if self._hurry.is_set() else max(0.1, grace - (loop.time() - t0))
            runner._shutdown_timeout = left
            await runner.cleanup()
        await self.backend.close(0.1 if self._hurry.is_set() else 5.0)
        await self.gateway.close()
        self.files.close()
        if self.cpu.cgroup is not None:
            self.cpu.cgroup.remove_parent()  # only if empty: other gateways may use it

    async def _drain(self, grace_s: float) -> bool:
        """Until no request is in the gateway, ``grace_s`` passes, or a second signal."""
        pipeline = self.gateway.pipeline
        hurry = asyncio.ensure_future(self._hurry.wait())
        idle = asyncio.ensure_future(pipeline.idle.wait())
        try:
            await asyncio.wait({hurry, idle}, timeout=grace_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            hurry.cancel()
            idle.cancel()
        return pipeline.active == 0

    async def serve_forever(self) -> None:
        """Run until SIGINT/SIGTERM, then stop cleanly; a second signal stops at once."""
        loop = asyncio.get_running_loop()

        def on_signal() -> None:
            if self._stop.is_set():
                log.warning("second signal: stopping now")
                self._hurry.set()
            else:
                log.info("stopping: answering the requests in flight (Ctrl-C again: at once)")
                self._stop.set()

        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal)
        try:
            await self._stop.wait()
        finally:
            try:
                await self.stop()
            finally:
                for sig in (signal.SIGINT, signal.SIGTERM):
                    loop.remove_signal_handler(sig)

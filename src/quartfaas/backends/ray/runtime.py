"""The Ray runtime: the unchanged gateway and control loop over the Ray backend.

``RayRuntime`` wires what ``quartfaas.runtime.EmbeddedRuntime`` wires for the local
backend, with Ray in its place: the same ``Gateway`` (OpenFaaS REST API, dispatcher
queues, metrics, errors), a ``RayBackend`` told about through the gateway's
``replicas`` listener, and the same ``ControlLoop`` / ``InProcessCollector`` / policy.
The one difference in the data plane: each pool's endpoint client is a
``RayEndpointClient`` on the replica's actor (``dispatch.StagePool.client_factory``), so
a stage's output is an ``ObjectRef`` passed to the next stage as is and fetched only
after the last one (``gateway/pipeline.materialise``). User input is parsed by the
gateway into a tensor frame (bytes); nothing the user sent is unpickled.

Warm standbys: the control loop's pool decision (``control/placement/prefork.py``, as for
the local backend's pre-fork pools) sets how many each stage keeps
(``RayBackend.set_pool``; the floor ``standbys`` until it decides), and ``StandbyKeeper``
applies ``standby.plan_standbys`` every ``every_s`` (where the weights are cached and
slots are free), so a start placed there takes a standby (object-store hit in ~0.2 s) and
the pool is refilled after each handover.

The Ray connection (``cluster.RayConnection``) belongs to the caller, or to the runtime
when it is given ``connection=`` (closed at ``stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiohttp import web

from quartfaas.backends.ray.backend import RayBackend
from quartfaas.backends.ray.client import RayEndpointClient
from quartfaas.backends.ray.cluster import RayConnection
from quartfaas.backends.ray.standby import StandbyStage, plan_standbys
from quartfaas.clock import Clock, MonotonicClock
from quartfaas.control.backend import ReplicaState, reconcile
from quartfaas.control.loop import ControlLoop
from quartfaas.dataplane.gateway import Gateway
from quartfaas.errors import BackendError
from quartfaas.live_control import live_controller
from quartfaas.spec import PipelineSpec

log = logging.getLogger("quartfaas.ray.runtime")


class StandbyKeeper:
    """Applies the standby rule on the runtime's loop (the one place standbys change).

    How many per stage: ``RayBackend.pool_depth`` (the control loop's pool decision,
    ``control/placement/prefork.py``, or the floor); where: ``standby.plan_standbys``."""

    def __init__(self, rt: RayRuntime, *, every_s: float = 1.0) -> None:
        self.rt = rt
        self.every_s = every_s
        self._busy: set[tuple[str, str]] = set()
        self.started = 0
        self.notes: tuple[str, ...] = ()

    def inputs(self) -> list[StandbyStage]:
        backend = self.rt.backend
        waiting = backend.standbys()
        decided = self.rt.loop is not None and self.rt.loop.last_decision is not None
        why = "the controller's pool decision" if decided else "the floor: no decision yet"
        out = []
        for st in self.rt.spec.stages:
            live = sum(
                r.state in (ReplicaState.READY, ReplicaState.STARTING)
                for r in backend.list_replicas(st.name)
            )
            out.append(StandbyStage(
                st.name, live, st.max_replicas, backend.pool_depth(st.name), why,
                tuple(backend.cache.holders(st.name)),
                {node: n for (stage, node), n in waiting.items() if stage == st.name},
            ))  # fmt: skip
        return out

    def tick(self) -> None:
        backend = self.rt.backend
        free = backend.free_slots()
        for _stage, node in self._busy:  # a prewarm under way holds its slot already
            free[node] = max(0, free.get(node, 0) - 1)
        plan = plan_standbys(self.inputs(), free, suspect=backend.suspect_nodes())
        self.notes = plan.notes
        backend.pool_waiting = {n.split(":", 1)[0]: n for n in plan.notes}
        for a in plan.actions:
            key = (a.stage, a.node_id)
            if a.count < 0:
                backend.retire_standby(a.stage, a.node_id, -a.count)
                log.info("standby %s", a.reason)
            elif key not in self._busy:
                self._busy.add(key)
                self.rt.add_task(self._prewarm(a.stage, a.node_id, a.count, a.reason), "prewarm")

    async def _prewarm(self, stage: str, node: str, count: int, reason: str) -> None:
        try:
            await self.rt.backend.prewarm(stage, node, count)
            self.started += count
            log.info("standby x%d for %s on %s: %s", count, stage, node[:8], reason)
        except BackendError as exc:
            log.warning("%s", exc)
        finally:
            self._busy.discard((stage, node))

    async def run(self) -> None:
        while True:
            with contextlib.suppress(BackendError):
                self.tick()
            await asyncio.sleep(self.every_s)


LOCAL_ACCELERATOR = "accel"  # the custom resource of the clusters started here


def connect(
    spec: PipelineSpec, address: str | None = None, *, local_nodes: int = 0
) -> tuple[RayConnection, str | None]:
    """Attach to ``address``, or start a local cluster sized for ``spec``: every node can
    hold every stage's ``max_replicas`` plus standbys (logical CPUs and ``accel`` units;
    the head holds none). Returns the connection and the accelerator resource to use
    (None when attached: GPUs for CUDA stages, whole CPUs otherwise)."""
    if address:
        return RayConnection(address), None
    units = sum(s.max_replicas for s in spec.stages) + 2 * len(spec.stages)
    conn = RayConnection(local_nodes=local_nodes, node_cpus=units,
                         accelerator=LOCAL_ACCELERATOR, accelerator_units=units)  # fmt: skip
    return conn, LOCAL_ACCELERATOR


class RayRuntime:
    """Gateway, Ray replicas and controller of one pipeline (``async with`` or start/stop)."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        host: str | None = None,
        port: int | None = None,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
        controller: bool | None = None,
        decision_log: Path | None = None,
        placer: str = "quart",
        accelerator_resource: str | None = None,
        standbys: int = 1,
        max_standbys: int = 2,
        connection: RayConnection | None = None,
    ) -> None:
        self.spec = spec
        self.host = host or spec.gateway.host
        self.port = spec.gateway.port if port is None else port
        self.clock = clock or MonotonicClock()
        self.connection = connection
        self.gateway = Gateway(spec, clock=self.clock, environ=environ)
        self.backend = RayBackend(spec, self.gateway.replicas, placer=placer,
                                  accelerator_resource=accelerator_resource,
                                  clock=self.clock.now)  # fmt: skip
        for pool in self.gateway.pools.values():
            pool.client_factory = self._client
        self.gateway.backend = self.backend
        self.controller_enabled = spec.controller.enabled if controller is None else controller
        self.decision_log = decision_log
        self.keeper: StandbyKeeper | None = None
        if standbys > 0:  # the pool decision moves the depth in standbys..max_standbys
            self.backend.enable_pool(standbys, max(standbys, max_standbys))
            self.keeper = StandbyKeeper(self)
        self.loop: ControlLoop | None = None
        self._runner: web.AppRunner | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._stop = asyncio.Event()
        self.url = ""

    def _client(self, replica_id: str, url: str) -> RayEndpointClient:
        actor = self.backend.actor(replica_id)
        if actor is None:
            raise BackendError(f"replica {replica_id} ({url}) has no actor")
        return RayEndpointClient(actor)

    async def __aenter__(self) -> RayRuntime:
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
        for stage in self.spec.stages:
            reconcile(self.backend, stage.name, stage.min_replicas)
        if wait_ready:
            try:
                await self.wait_ready()
            except BaseException:
                await self.stop()
                raise
        if self.keeper is not None:
            self.add_task(self.keeper.run(), "standby-keeper")
        if self.controller_enabled:
            self.start_controller()
        return self.url

    def start_controller(self) -> ControlLoop:
        """The same control loop as the local runtime (``live_control.py``), on this
        backend; its pool decision sets the standbys' depth (``RayBackend.set_pool``)."""
        self.loop, run = live_controller(
            self.spec.controller, self.gateway, self.backend, self.clock, self._stop,
            decision_log=self.decision_log, label=" (Ray backend)",
        )  # fmt: skip
        self.add_task(run, "controller")
        return self.loop

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Until every stage has min_replicas ready; a start failure raises at once."""
        timeout_s = timeout_s or self.spec.gateway.replica_start_timeout_s + 5.0
        await self.gateway.replicas.wait_ready(timeout_s)

    def add_task(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.get_running_loop().create_task(coro, name=name))

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks.clear()
        if self._runner is not None:
            await self._runner.shutdown()
            await asyncio.sleep(0)
            await self._runner.cleanup()
            self._runner = None
        await self.backend.close()
        await self.gateway.close()
        if self.connection is not None:
            self.connection.close()
            self.connection = None

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

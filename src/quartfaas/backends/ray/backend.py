"""The Ray backend: stage replicas as Ray actors on a (multi-node) Ray cluster.

It implements ``control.backend.Backend`` the way ``backends/local.py`` does: calls are
non-blocking declarations made on the caller's asyncio loop, readiness is observed (the
actor's ``ready()`` answers), and a ``ReplicaListener`` (``backends/local.py``; here the
data-plane client of ``client.py``, later the gateway's dispatcher) hears about every
change. This module is the one place that makes Ray API calls for replicas.

A start: choose a node (``nodes.choose_node`` with a placer from
``control/placement/``, applied as ``NodeAffinitySchedulingStrategy(node, soft=False)``;
``placer="ray"`` lets Ray's scheduler choose, the baseline), create the actor with the
stage's resources (``num_cpus`` = the stage's ``cpu``; ``num_gpus=1`` for a CUDA stage, or
one unit of ``accelerator_resource`` on CPU-only test clusters), ask the node's weights
for it (``weights.ObjectStoreCache``: object-store hit, remote pull or cold file; the
tier is recorded on the replica), ``load`` them, and wait for ``ready()``.

Faults: the backend awaits each replica's ``lifeline()``; when Ray raises there (actor
crash or node death) the replica is marked FAILED, the listener drops it (its in-flight
calls are retried by the client), a dead node's cache entries are forgotten, and a
replacement is started (placed on a live node, and off the dead replica's node while
another node has room: that node may be dying without Ray knowing yet,
``nodes.placement_rounds``). A start that fails or times out
(``gateway.replica_start_timeout_s``) is reported with Ray's error and its stage backs
off 1 s, 2 s, ... 30 s, like the local backend; a failed replacement is started again
after the backoff (one placed on a node that was dying but not yet declared dead fails
with it, and nothing else would restore the count).

Stop with drain: the listener stops routing to the replica and waits for its calls, the
actor's own ``drain`` confirms none is in flight, then the actor is killed.

Over 400 lines because the lifecycle, the warm pool (``prewarm``, ``standbys``,
``free_slots``, and the pool depth the control loop sets: ``control.backend.PoolScalable``)
and the fault path all share one replica table and its Ray handles.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import ray
from ray.exceptions import RayActorError, RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from quartfaas.backends.lifecycle import StartBook
from quartfaas.backends.local import ReplicaListener
from quartfaas.backends.ray.actor import StageReplica
from quartfaas.backends.ray.nodes import (
    SUSPECT_S,
    LiveReplica,
    NodeInfo,
    choose_node,
    cluster_nodes,
    placement_rounds,
    slots_of,
)
from quartfaas.backends.ray.weights import ObjectStoreCache
from quartfaas.control.backend import (
    CpuLever,
    PoolStatus,
    ReplicaInfo,
    ReplicaState,
    StartTier,
)
from quartfaas.control.placement import StageReq, get_placer
from quartfaas.control.placement.keys_manager import GIB
from quartfaas.errors import BackendError
from quartfaas.models.layout import stage_param_bytes
from quartfaas.spec import PipelineSpec

log = logging.getLogger(__name__)
WATCH_PERIOD_S = 0.5  # how often a suspect node's liveness is read (Ray's node table)


@dataclass
class _Replica:
    info: ReplicaInfo
    actor: Any = None
    slot: str = ""
    task: asyncio.Task[None] | None = None
    stopping: bool = False
    replacement: bool = False  # started for a replica that died: retried until it starts


class RayBackend:
    """Replicas as Ray actors. Needs ``ray.init`` done by the caller (attach or local)."""

    def __init__(
        self,
        spec: PipelineSpec,
        listener: ReplicaListener,
        *,
        placer: str = "quart",
        accelerator_resource: str | None = None,
        accelerator_memory_bytes: int = 16 * GIB,
        clock: Callable[[], float] = time.monotonic,
        suspect_s: float = SUSPECT_S,
    ) -> None:
        if not ray.is_initialized():
            raise BackendError("the Ray backend needs a Ray connection: call ray.init first")
        self.spec = spec
        self.listener = listener
        self.clock = clock
        self.accelerator = accelerator_resource
        self.accelerator_memory_bytes = accelerator_memory_bytes
        self.placer = None if placer == "ray" else get_placer(placer)
        self.cache = ObjectStoreCache(spec)
        self._spec_json = spec.model_dump_json()
        self._replicas: dict[str, _Replica] = {}
        self._book = StartBook(spec, clock)  # ids and start back-off (backends/lifecycle.py)
        self.starts: list[ReplicaInfo] = []  # every READY start, with its tier (reports)
        # what each replica's ready() said: node, pid, load seconds, RSS/PSS/private KiB
        self.ready_info: dict[str, dict[str, Any]] = {}
        self.closed = False
        # actors started ahead of demand, per (stage, node): torch imported, no weights
        # (actor, slot): a standby holds a slot, which the placer sees as taken
        self._standby: dict[tuple[str, str], list[tuple[Any, str]]] = {}
        # how many standbys each stage keeps (control.backend.PoolScalable): None until
        # enable_pool; then the floor, or what the control loop's pool decision set
        self.pool_limits: tuple[int, int] | None = None  # (floor, max depth)
        self._pool_depth: dict[str, int] = {}
        # node id -> clock time until which new replicas go elsewhere first: a replica
        # died there unasked, and its node may be dying (nodes.placement_rounds)
        self.suspect_s = suspect_s
        self.suspects: dict[str, float] = {}
        self._watchers: dict[str, asyncio.Task[None]] = {}  # a suspect node's watch
        self.pool_waiting: dict[str, str] = {}  # stage -> why a standby is not placed
        self._reqs = tuple(
            StageReq(s.name, stage_param_bytes(spec, i) if spec.model.kind != "synthetic" else 0,
                     pipeline=spec.name, cpu_cores=s.cpu)
            for i, s in enumerate(spec.stages)
        )  # fmt: skip

    # -- Backend protocol -----------------------------------------------------------

    def start_replica(self, stage: str, *, node_id: str | None = None) -> ReplicaInfo:
        """``node_id`` (not in the protocol) pins the replica to a node, bypassing the
        placer (operators, benchmarks)."""
        info = self._book.declare(stage, closed=self.closed)
        rid = info.replica_id
        rep = _Replica(info)
        self._replicas[rid] = rep
        self.listener.replica_starting(info)
        rep.task = asyncio.get_running_loop().create_task(
            self._run(rep, node_id), name=f"replica {rid}"
        )
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
        """Ray cannot resize an actor's CPUs in place; its torch threads follow ``cpus``."""
        rep = self._replicas.get(replica_id)
        if rep is None:
            raise BackendError(f"no replica {replica_id}")
        if rep.info.state is ReplicaState.READY and rep.actor is not None:
            rep.actor.set_threads.remote(max(1, int(cpus)))
        self._set(rep, cpu=cpus)  # a starting replica gets it once ready (_run)
        return CpuLever.THREADS

    # -- helpers --------------------------------------------------------------------

    def actor(self, replica_id: str) -> Any:
        """The actor handle of a replica (the data plane calls it)."""
        rep = self._replicas.get(replica_id)
        return None if rep is None else rep.actor

    def _set(self, rep: _Replica, **changes: object) -> None:
        rep.info = replace(rep.info, **changes)  # type: ignore[arg-type]

    def _live(self) -> list[LiveReplica]:
        """Replicas and standbys holding a slot (what the placer sees as taken)."""
        out = [
            LiveReplica(r.info.stage, r.info.host, r.slot, r.info.cpu or 0.0, r.info.replica_id)
            for r in self._replicas.values()
            if r.slot and r.info.state in (ReplicaState.STARTING, ReplicaState.READY)
        ]
        for (stage, node), pool in self._standby.items():
            cpu = self.spec.stages[self.spec.stage_index(stage)].cpu
            out.extend(LiveReplica(stage, node, slot, cpu, f"{stage}-standby") for _, slot in pool)
        return out

    def _free_slot(self, node: str, extra: set[str] | None = None) -> str:
        used = {r.slot for r in self._live() if r.node_id == node} | (extra or set())
        return next(f"slot{i}" for i in range(len(used) + 1) if f"slot{i}" not in used)

    def _nodes(self) -> list[NodeInfo]:
        nodes = cluster_nodes()
        for n in nodes:
            self.cache.add_node(n.node_id, n.object_store_bytes)
        return nodes

    def _options(self, stage_index: int, node: str | None) -> dict[str, Any]:
        st = self.spec.stages[stage_index]
        opts: dict[str, Any] = {
            "num_cpus": st.cpu,
            "max_concurrency": max(4, st.max_concurrency + 3),  # calls + ready/drain/lifeline
            "max_restarts": 0,
        }
        if st.device.startswith("cuda"):
            opts["num_gpus"] = 1
        elif self.accelerator is not None:
            opts["resources"] = {self.accelerator: 1}
        if node is not None:
            opts["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node, soft=False)
        return opts

    # -- warm pool ------------------------------------------------------------------

    def enable_pool(self, floor: int, max_depth: int) -> None:
        """Keep standbys (``runtime.StandbyKeeper`` places them): at least ``floor`` and
        at most ``max_depth`` per stage, the depth between them set by ``set_pool``."""
        if not 0 <= floor <= max_depth:
            raise BackendError(f"standbys: floor ({floor}) must be in 0..max ({max_depth})")
        self.pool_limits = (floor, max_depth)

    def set_pool(self, stage: str, depth: int) -> None:
        """The pool decision's depth for ``stage`` (``control.backend.PoolScalable``; the
        loop calls it from ``control/placement/prefork.py``); a no-op without a pool."""
        if self.pool_limits is not None:
            self._pool_depth[stage] = max(0, min(depth, self.pool_limits[1]))

    def pool_depth(self, stage: str) -> int:
        """Standbys ``stage`` should keep: the last depth set, else the floor (0: no pool)."""
        if self.pool_limits is None:
            return 0
        return self._pool_depth.get(stage, self.pool_limits[0])

    def pool_status(self, stage: str) -> PoolStatus | None:
        """The stage's standbys as the pool decision reads them. No memory figures: a
        standby costs a slot, not cache memory, and slots bound where they wait
        (``standby.plan_standbys``), not how many are asked for."""
        if self.pool_limits is None:
            return None
        floor, most = self.pool_limits
        waiting = sum(n for (st, _), n in self.standbys().items() if st == stage)
        return PoolStatus(stage, self.pool_depth(stage), idle=waiting, warm=waiting,
                          waiting=self.pool_waiting.get(stage, ""), floor=floor,
                          max_depth=most)  # fmt: skip

    async def prewarm(self, stage: str, node_id: str, count: int = 1) -> int:
        """Start ``count`` standby actors of ``stage`` on ``node_id`` (they hold the
        stage's resources while idle); a later start placed on that node takes one and
        only maps the weights and warms up. Returns the standbys now waiting there."""
        idx = self.spec.stage_index(stage)
        slots: set[str] = set()
        for _ in range(count):
            slots.add(self._free_slot(node_id, slots))
        new: list[Any] = [
            ray.remote(StageReplica)
            .options(**self._options(idx, node_id))
            .remote(self._spec_json, idx, f"{stage}-standby")
            for _ in range(count)
        ]
        try:  # constructed: the process and its imports are up
            await asyncio.wait_for(
                asyncio.gather(*(a.node_id.remote() for a in new)),
                self.spec.gateway.replica_start_timeout_s,
            )
        except Exception as exc:  # no room on the node (Ray would queue it forever), ...
            for actor in new:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
            raise BackendError(
                f"standby actors of {stage} on node {node_id[:8]} did not start: "
                f"{type(exc).__name__}: {exc} (does the node have free resources?)"
            ) from None
        pool = self._standby.setdefault((stage, node_id), [])
        pool.extend(zip(new, sorted(slots), strict=True))
        return len(pool)

    def standbys(self) -> dict[tuple[str, str], int]:
        """Standby actors waiting, per (stage, node)."""
        return {k: len(v) for k, v in self._standby.items() if v}

    def retire_standby(self, stage: str, node_id: str, count: int = 1) -> int:
        """Kill up to ``count`` standbys of ``stage`` on ``node_id``; returns how many."""
        pool = self._standby.get((stage, node_id), [])
        done = 0
        while pool and done < count:
            with contextlib.suppress(Exception):
                ray.kill(pool.pop()[0])
            done += 1
        return done

    def free_slots(self) -> dict[str, int]:
        """Per alive node: slots (accelerator units, or whole CPUs) not taken by a live
        replica or a standby, as the placer counts them."""
        nodes = self._nodes()
        alive = {n.node_id for n in nodes}
        for (_, node), pool in self._standby.items():
            if node not in alive:
                for actor, _slot in pool:  # died with its node
                    with contextlib.suppress(Exception):
                        ray.kill(actor)
                pool.clear()
        taken: dict[str, int] = {}
        for r in self._live():  # replicas and standbys
            taken[r.node_id] = taken.get(r.node_id, 0) + 1
        return {
            n.node_id: max(0, slots_of(n, self.accelerator) - taken.get(n.node_id, 0))
            for n in nodes
        }

    def _take_standby(self, stage: str, node_id: str | None) -> tuple[Any, str] | None:
        pool = self._standby.get((stage, node_id or ""), [])
        return pool.pop() if pool else None

    def _any_standby(self, stage: str, alive: set[str]) -> tuple[str, Any, str] | None:
        """A standby of ``stage`` on an alive node under no suspicion (a standby on a
        dying node would die with it: the placer's cold start elsewhere is the better
        bet), nodes holding the weights first."""
        holders = set(self.cache.holders(stage))
        usable = alive - self._suspected()
        keys = [k for k, pool in self._standby.items() if k[0] == stage and pool and k[1] in usable]
        for key in sorted(keys, key=lambda k: k[1] not in holders):
            actor, slot = self._standby[key].pop()
            return key[1], actor, slot
        return None

    # -- lifecycle ------------------------------------------------------------------

    async def _run(self, rep: _Replica, pinned: str | None = None) -> None:
        stage = rep.info.stage
        idx = self.spec.stage_index(stage)
        await self._book.wait_backoff(stage)
        if rep.stopping:
            self._finish(rep, ReplicaState.STOPPED)
            return
        timeout = self.spec.gateway.replica_start_timeout_s
        node: str | None = None
        standby: Any = None
        try:
            nodes = self._nodes()
            if pinned is not None:
                if pinned not in {n.node_id for n in nodes}:
                    raise BackendError(f"no alive node {pinned}")
                used = {r.slot for r in self._live() if r.node_id == pinned}
                node, rep.slot = (
                    pinned,
                    next(f"slot{i}" for i in range(len(used) + 1) if f"slot{i}" not in used),
                )
                self._set(rep, host=node, message="pinned to the node by the caller")
            elif (warm := self._any_standby(stage, {n.node_id for n in nodes})) is not None:
                # the controller put it where the weights are (standby.plan_standbys)
                node, standby, rep.slot = warm
                self._set(rep, host=node, message="warm standby on a node holding the weights")
            elif self.placer is not None:
                choice: tuple[str, str, str] | str = "no alive node"
                for group in placement_rounds(nodes, self.suspects, self.clock()):
                    choice = choose_node(
                        self.placer, stage=self._reqs[idx], stages=self._reqs, nodes=group,
                        replicas=self._live(), caches=self.cache.views(),
                        accelerator=self.accelerator,
                        accelerator_memory_bytes=self.accelerator_memory_bytes,
                    )  # fmt: skip
                    if not isinstance(choice, str):
                        break
                if isinstance(choice, str):
                    raise BackendError(choice)
                node, rep.slot, why = choice
                if node in self._suspected():
                    why += "; on a suspect node (no other node fits)"
                self._set(rep, host=node, message=why)
            if standby is None and (taken := self._take_standby(stage, node)) is not None:
                standby, rep.slot = taken
                self._set(rep, message=f"{rep.info.message}; warm standby actor")
            actor: Any = standby
            if actor is None:
                actor = (
                    ray.remote(StageReplica)
                    .options(**self._options(idx, node))
                    .remote(self._spec_json, idx, rep.info.replica_id)
                )
            rep.actor = actor
            ready = await asyncio.wait_for(self._load(rep, actor), timeout)
        except Exception as exc:  # placement, Ray, load or timeout: reported, then backoff
            if isinstance(exc, TimeoutError):
                exc = BackendError(f"not ready within {timeout:.0f} s (replica_start_timeout_s)")
            if rep.stopping:
                self._finish(rep, ReplicaState.STOPPED)
            else:
                self._start_failed(rep, str(exc))
                if rep.replacement and not self.closed:
                    # A replacement placed on a node that was dying but not yet declared
                    # dead fails with it; nothing else would restore the count (without
                    # a controller, nothing at all). Try again, after the stage's backoff.
                    self._node_check()
                    self._replace(stage)
            return
        self._book.started(stage)
        self.suspects.pop(str(ready["node_id"]), None)  # it serves: not dying after all
        self.ready_info[rep.info.replica_id] = ready
        self._set(
            rep, state=ReplicaState.READY, ready_at=self.clock(), pid=int(ready["pid"]),
            address=f"ray://{ready['node_id']}/{rep.info.replica_id}",
        )  # fmt: skip
        self.starts.append(rep.info)
        if rep.info.cpu is not None and rep.info.cpu != self.spec.stages[idx].cpu:
            actor.set_threads.remote(max(1, int(rep.info.cpu)))  # set while it started
        if rep.stopping:  # stopped while starting: it never served
            with contextlib.suppress(Exception):
                ray.kill(actor)
            self._finish(rep, ReplicaState.STOPPED)
            return
        self.listener.replica_ready(rep.info)
        try:
            await actor.lifeline.remote()
        except RayActorError as exc:
            if rep.stopping:
                return  # _stop killed it and finishes the bookkeeping
            log.warning("replica %s died: %s", rep.info.replica_id, exc)
            if rep.info.host in self._node_check():
                self._suspect(rep.info.host)
            self._finish(rep, ReplicaState.FAILED, f"actor died: {type(exc).__name__}")
            if not self.closed:
                self._replace(stage)

    def _replace(self, stage: str) -> None:
        """Start a replacement for a replica of ``stage`` that died (retried until one
        starts, each try after the stage's backoff)."""
        info = self.start_replica(stage)
        self._replicas[info.replica_id].replacement = True

    async def _load(self, rep: _Replica, actor: Any) -> dict[str, Any]:
        node = rep.info.host if rep.slot else await actor.node_id.remote()
        if not rep.slot:
            self._set(rep, host=node)
        tier, refs = await self.cache.acquire(rep.info.stage, node, self._suspected())
        self._set(rep, tier=tier)
        await actor.load.remote(refs)
        ready: dict[str, Any] = await actor.ready.remote()
        if ready["node_id"] != node:
            raise BackendError(f"replica landed on {ready['node_id']}, not on {node}")
        return ready

    def _node_check(self) -> set[str]:
        """Forget the cached weights of nodes Ray no longer lists as alive; returns the
        alive node ids."""
        alive = {n.node_id for n in cluster_nodes()}
        for node in list(self.cache.views()):
            if node not in alive:
                log.warning("node %s is gone; forgetting its cached weights", node[:8])
                self.cache.forget_node(node)
        for node in [n for n in self.suspects if n not in alive]:
            del self.suspects[node]
        return alive

    def _suspected(self) -> set[str]:
        """The nodes under suspicion now; a suspicion that ran out is dropped here (the
        node outlived it), so ``suspects`` holds only live ones."""
        now = self.clock()
        for node in [n for n, until in self.suspects.items() if until <= now]:
            del self.suspects[node]
        return set(self.suspects)

    def suspect_nodes(self) -> frozenset[str]:
        """The nodes under suspicion now (the standby keeper places none there)."""
        return frozenset(self._suspected())

    def _suspect(self, node: str) -> None:
        if self.suspect_s <= 0:
            return
        self.suspects[node] = self.clock() + self.suspect_s
        log.warning(
            "node %s is suspect for %.0f s: a replica died there unasked; new replicas "
            "go to other nodes first", node[:8], self.suspect_s,
        )  # fmt: skip
        if node not in self._watchers:
            self._watchers[node] = asyncio.get_running_loop().create_task(
                self._watch(node), name=f"watch node {node[:8]}"
            )

    async def _watch(self, node: str) -> None:
        """While ``node`` is suspect, read Ray's node table every ``WATCH_PERIOD_S``:
        once Ray declares it dead, its cached weights are forgotten then, not at the next
        failure (a replacement placed elsewhere does not fail, so nothing else would)."""
        try:
            while not self.closed and node in self._suspected():
                await asyncio.sleep(WATCH_PERIOD_S)
                if node not in self._node_check():
                    return
        finally:
            self._watchers.pop(node, None)

    def _start_failed(self, rep: _Replica, message: str) -> None:
        if rep.actor is not None:
            with contextlib.suppress(Exception):
                ray.kill(rep.actor)
        self._release(rep)
        rep.info = self._book.failed(rep.info, message, self.listener)
        self._replicas.pop(rep.info.replica_id, None)

    def _release(self, rep: _Replica) -> None:
        if rep.info.tier not in (None, StartTier.NONE):
            self.cache.release(rep.info.stage, rep.info.host)

    def _finish(self, rep: _Replica, state: ReplicaState, message: str = "") -> None:
        if rep.info.state in (ReplicaState.STOPPED, ReplicaState.FAILED):
            return
        self._set(rep, state=state, message=message)
        self._release(rep)
        self.listener.replica_gone(rep.info)
        self._replicas.pop(rep.info.replica_id, None)

    async def _stop(self, rep: _Replica, drain: bool) -> None:
        timeout = self.spec.gateway.drain_timeout_s
        if drain:
            if not await self.listener.drain_replica(rep.info, timeout):
                log.warning("replica %s did not drain in time", rep.info.replica_id)
            if rep.actor is not None:
                with contextlib.suppress(RayError):
                    await rep.actor.drain.remote(timeout)
        if rep.actor is None:
            return  # still being placed: _run sees `stopping`
        with contextlib.suppress(Exception):
            ray.kill(rep.actor)
        self._finish(rep, ReplicaState.STOPPED)

    async def close(self) -> None:
        """Kill every replica and the weight owners (no drain)."""
        self.closed = True
        for watcher in list(self._watchers.values()):
            watcher.cancel()
        for rep in list(self._replicas.values()):
            rep.stopping = True
            if rep.actor is not None:
                with contextlib.suppress(Exception):
                    ray.kill(rep.actor)
            if rep.task is not None and not rep.task.done():
                rep.task.cancel()
        self._replicas.clear()
        for pool in self._standby.values():
            for actor, _slot in pool:
                with contextlib.suppress(Exception):
                    ray.kill(actor)
        self._standby.clear()
        self.cache.close()

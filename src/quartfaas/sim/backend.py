"""The simulator's ``Backend``: replicas on a simulated GPU cluster, served by the engine.

``ControlLoop`` calls this backend exactly as it calls the local one. ``start_replica``
asks a ``Placer`` (``sim/placement.py``) for a GPU, picks the start tier from that
server's host-memory cache (one ``control/keys_manager.KeysManager`` per server: a hit is
a FORK start, a miss COLD; the started stage is then admitted and pinned while it has
replicas there), and adds the replica's slots to the engine with
``ready_at = now + StartDelays.seconds(tier, ...)``. ``stop_replica`` drains it: the
engine gives it no new work and tells when its last visit ends; the GPU is released then.

The service-time multiplier of a replica is ``(1 - cpu_frac) / gpu.speed +
cpu_frac x stage.cpus / cpus``, so ``set_cpu`` changes the speed of later visits.

Accelerators are exclusive (``ClusterSpec.sharing``, default ``exclusive``): a replica of a
GPU stage holds one whole GPU, and a start that finds no free GPU is refused
(``InsufficientMemory``, which ``ControlLoop`` counts as a refused action). With sharing
(``time-slice``/``mps``) several replicas may hold one GPU, and each one's multiplier is
multiplied by ``sim/cluster.sharing_multiplier(sharing, tenants)`` (bandwidth-bound
processor sharing, all tenants busy: the worst case), updated as tenants come and go.
``gpu_seconds`` is GPU occupancy (GPUs held x time, from the first start call on a GPU to
the last replica leaving it, starting and draining included); ``replica_seconds`` is the
plain sum of replica lifetimes, equal to it on an exclusive cluster.
Time is read from the ``Clock`` the driver (``sim/run.py``) advances; nothing here sleeps.

Over 400 lines because the Backend protocol, GPU exclusivity and sharing, occupancy
accounting and the incremental counts all read and write one replica table (``_live``,
``_by_stage``, the GPUs' tenants); split, each part would reach into the others' state.

Limitation: ``stop_replica(drain=False)`` also drains - the engine has already committed
the visits a replica started and cannot abort them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from quartfaas.clock import Clock
from quartfaas.control.backend import CpuLever, PoolStatus, ReplicaInfo, ReplicaState, StartTier
from quartfaas.control.placement.keys_manager import GIB, KeysManager
from quartfaas.errors import BackendError, InsufficientMemory
from quartfaas.sim.cluster import ClusterSpec, GpuSharing, ServerSpec, sharing_multiplier
from quartfaas.sim.engine import Engine
from quartfaas.sim.gpu_accounting import gpu_occupancy_seconds, replica_seconds
from quartfaas.sim.pipelines import SimPipeline, SimStage
from quartfaas.sim.placement import (
    ClusterView,
    FirstFitPlacer,
    GpuView,
    PlacedReplica,
    Placer,
    PlaceRequest,
    ServerView,
    explain_no_fit,
)
from quartfaas.sim.prefork_pool import PreforkPools


@dataclass(frozen=True, slots=True)
class ReplicaEvent:
    """One replica life-cycle event, for reports: start, initial, drain, leave."""

    time: float
    stage: str
    replica_id: str
    kind: Literal["initial", "start", "drain", "leave"]
    tier: StartTier | None = None
    server: str = ""
    seconds: float = 0.0  # start: start delay; leave: time spent draining
    handle: int = -1  # the engine's replica handle (``SimResult.served_by`` values)


@dataclass(slots=True)
class _Gpu:
    server: int
    index: int
    free_gib: float
    tenants: dict[str, str] = field(default_factory=dict)  # replica id -> affinity key
    reps: dict[str, _Replica] = field(default_factory=dict)  # GPU-stage replicas held here


@dataclass(slots=True)
class _Replica:
    rid: str
    stage: SimStage
    handle: int
    gpu: _Gpu
    tier: StartTier | None
    requested_at: float
    ready_at: float
    cpus: float
    pinned: bool = False  # this replica holds a pin on its server's cache entry
    drained_at: float | None = None
    leaves_at: float | None = None


class SimBackend:
    """``Backend`` over a ``ClusterSpec`` and an ``Engine``."""

    def __init__(
        self,
        cluster: ClusterSpec,
        pipeline: SimPipeline,
        engine: Engine,
        clock: Clock,
        placer: Placer | None = None,
    ) -> None:
        self.cluster = cluster
        self.pipeline = pipeline
        self.engine = engine
        self.clock = clock
        self.placer: Placer = placer or FirstFitPlacer()
        self._stages = {s.name: s for s in pipeline.stages}
        self._servers: list[ServerSpec] = list(cluster.servers)
        self._free_cpus = [float(s.cpu_cores) for s in self._servers]
        self.caches = [
            KeysManager(int(s.host_memory_gib * GIB), cluster.cache_threshold_frac)
            for s in self._servers
        ]
        self._gpus = [
            _Gpu(i, g, s.gpu.memory_gib) for i, s in enumerate(self._servers) for g in range(s.gpus)
        ]
        self._live: dict[str, _Replica] = {}
        self._by_stage: dict[str, dict[str, _Replica]] = {s.name: {} for s in pipeline.stages}
        self._next_leave = math.inf  # earliest leaves_at among draining replicas
        # (GPU key or None for a CPU-only stage, requested_at, leaves_at) of gone replicas
        self._ended: list[tuple[tuple[int, int] | None, float, float]] = []
        self._exclusive = cluster.sharing is GpuSharing.EXCLUSIVE
        self._counter = 0
        self.events: list[ReplicaEvent] = []
        self.pools = PreforkPools()  # the templates' pre-fork pools (sim/prefork_pool.py)
        # Counts kept incrementally (read per stage at every tick): non-draining replicas,
        # draining ones, and the starting ones' ready times.
        names = [s.name for s in pipeline.stages]
        self._n_active = dict.fromkeys(names, 0)
        self._n_draining = dict.fromkeys(names, 0)
        self._starting: dict[str, dict[str, float]] = {n: {} for n in names}

    # -- Backend protocol -------------------------------------------------------------

    def start_replica(self, stage: str) -> ReplicaInfo:
        return self._info(self._start(stage, initial=False))

    def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        now = self.clock.now()
        self._reap(now)
        rep = self._live.get(replica_id)
        if rep is None:
            raise BackendError(f"unknown or stopped replica {replica_id!r}")
        if rep.drained_at is not None:
            return
        rep.drained_at = now
        name = rep.stage.name
        self._n_active[name] -= 1
        self._n_draining[name] += 1
        self._starting[name].pop(rep.rid, None)
        rep.leaves_at = self.engine.drain_replica(rep.handle)
        self._next_leave = min(self._next_leave, rep.leaves_at)
        self.events.append(
            ReplicaEvent(now, rep.stage.name, rep.rid, "drain", rep.tier, handle=rep.handle)
        )
        self._reap(now)

    def list_replicas(self, stage: str | None = None) -> list[ReplicaInfo]:
        self._reap(self.clock.now())
        reps = self._live.values() if stage is None else self._by_stage.get(stage, {}).values()
        return [self._info(r) for r in reps]

    def set_cpu(self, replica_id: str, cpus: float) -> CpuLever:
        rep = self._live.get(replica_id)
        if rep is None:
            raise BackendError(f"unknown or stopped replica {replica_id!r}")
        if cpus <= 0:
            raise BackendError(f"cpus must be > 0, got {cpus}")
        server = rep.gpu.server
        extra = cpus - rep.cpus
        if extra > self._free_cpus[server] + 1e-9:
            raise BackendError(
                f"server {self._servers[server].name} has {self._free_cpus[server]:g} free "
                f"CPUs; replica {replica_id} asked for {extra:g} more"
            )
        self._free_cpus[server] -= extra
        rep.cpus = cpus
        self.engine.set_multiplier(rep.handle, self._shared(rep))
        return CpuLever.SIMULATED

    def set_pool(self, stage: str, depth: int) -> None:  # control.backend.PoolScalable
        self.pools.set_depth(stage, depth, self.clock.now())

    def pool_status(self, stage: str) -> PoolStatus | None:
        return self.pools.status(stage, self.clock.now())

    # -- simulator API ----------------------------------------------------------------

    def deploy_initial(self, stage: str) -> ReplicaInfo:
        """A replica that is ready now (deployed before the run; weights cached)."""
        return self._info(self._start(stage, initial=True))

    def counts(self, stage: str) -> tuple[int, int, int]:
        """(ready, starting, draining) replicas of ``stage`` now."""
        now = self.clock.now()
        self._reap(now)
        pending = self._starting[stage]
        if pending:
            for rid in [rid for rid, at in pending.items() if at <= now]:
                del pending[rid]
        starting = len(pending)
        return self._n_active[stage] - starting, starting, self._n_draining[stage]

    def live_count(self, stage: str) -> int:
        """Starting + ready replicas of ``stage`` (``control/backend.reconcile``'s fast path)."""
        self._reap(self.clock.now())
        if stage not in self._n_active:
            raise BackendError(f"unknown stage {stage!r}; stages: {', '.join(self._stages)}")
        return self._n_active[stage]

    def cpus_per_replica(self, stage: str) -> float:
        cpus = [r.cpus for r in self._by_stage[stage].values()]
        return sum(cpus) / len(cpus) if cpus else self._stages[stage].cpus

    def _holds(self, until: float) -> list[tuple[tuple[int, int] | None, float, float]]:
        holds = list(self._ended)
        for r in self._live.values():
            end = until if r.leaves_at is None else min(r.leaves_at, until)
            key = (r.gpu.server, r.gpu.index) if r.stage.gpu_memory_gib > 0 else None
            holds.append((key, r.requested_at, max(end, r.requested_at)))
        return holds

    def gpu_seconds(self, until: float) -> float:
        """GPU occupancy up to ``until``: GPUs held x time (a shared GPU counts once)."""
        holds = [h for h in self._holds(until) if h[0] is not None]
        return gpu_occupancy_seconds(holds, until)

    def replica_seconds(self, until: float) -> float:
        """Sum of replica lifetimes (start call to leaving) up to ``until``, CPU stages too."""
        return replica_seconds(self._holds(until), until)

    def view(self, stage: SimStage) -> ClusterView:
        """The frozen picture a ``Placer`` decides on."""
        servers = tuple(
            ServerView(s.name, s.host_memory_gib, self._free_cpus[j], self.caches[j].view())
            for j, s in enumerate(self._servers)
        )
        live = tuple(
            PlacedReplica(r.rid, r.stage.name, r.gpu.server, r.gpu.index)
            for r in self._live.values()
            if r.drained_at is None
        )
        return ClusterView(tuple(self._gpu_views(stage)), servers, live, self._exclusive)

    def _gpu_views(self, stage: SimStage) -> list[GpuView]:
        return [
            GpuView(
                server=self._servers[g.server].name,
                server_index=g.server,
                gpu_index=g.index,
                gpu=self._servers[g.server].gpu,
                free_gib=g.free_gib,
                tenants=frozenset(g.tenants.values()),
                server_free_cpus=self._free_cpus[g.server],
                cached=stage.name in self.caches[g.server],
                occupants=len(g.reps),
            )
            for g in self._gpus
        ]

    # -- internals --------------------------------------------------------------------

    def _affinity_key(self, stage: SimStage) -> str:
        if stage.gpu_memory_gib <= 0:
            return ""  # a CPU-only stage takes no GPU
        return self.pipeline.model if self.pipeline.anti_affinity == "model" else stage.name

    def _multiplier(self, stage: SimStage, gpu: _Gpu, cpus: float) -> float:
        speed = self._servers[gpu.server].gpu.speed if stage.gpu_memory_gib > 0 else 1.0
        return (1.0 - stage.cpu_frac) / speed + stage.cpu_frac * stage.cpus / cpus

    def _shared(self, rep: _Replica) -> float:
        """``rep``'s multiplier with its GPU's current number of sharers."""
        mult = self._multiplier(rep.stage, rep.gpu, rep.cpus)
        tenants = len(rep.gpu.reps)
        if self._exclusive or tenants <= 1 or rep.stage.gpu_memory_gib <= 0:
            return mult
        return mult * sharing_multiplier(self.cluster.sharing, tenants)

    def _reshare(self, gpu: _Gpu) -> None:
        if not self._exclusive:
            for r in gpu.reps.values():
                self.engine.set_multiplier(r.handle, self._shared(r))

    def _start(self, name: str, *, initial: bool) -> _Replica:
        now = self.clock.now()
        self._reap(now)
        stage = self._stages.get(name)
        if stage is None:
            raise BackendError(f"unknown stage {name!r}; stages: {', '.join(self._stages)}")
        uses_gpu = stage.gpu_memory_gib > 0
        req = PlaceRequest(
            stage.name,
            self._affinity_key(stage),
            stage.gpu_memory_gib,
            stage.cpus,
            exclusive=self._exclusive and uses_gpu,
        )
        view = self.view(stage)
        choice = self.placer.place(req, view)
        if choice is None:
            raise InsufficientMemory(
                f"no GPU for a new replica ({self.placer.name}): {explain_no_fit(req, view)}"
            )
        if (
            choice.free_gib + 1e-9 < stage.gpu_memory_gib
            or choice.server_free_cpus + 1e-9 < stage.cpus
        ):
            raise BackendError(
                f"placer {self.placer.name} chose {choice.server}/{choice.gpu_index} for "
                f"{stage.name}, which lacks the GPU memory ({choice.free_gib:.2f} < "
                f"{stage.gpu_memory_gib:.2f} GiB) or CPUs ({choice.server_free_cpus:g} < "
                f"{stage.cpus:g})"
            )
        gpu = next(
            g for g in self._gpus if (g.server, g.index) == (choice.server_index, choice.gpu_index)
        )
        if req.exclusive and gpu.reps:
            raise BackendError(
                f"placer {self.placer.name} chose {choice.server}/{choice.gpu_index} for "
                f"{stage.name}, which already holds {len(gpu.reps)} replica(s) on an "
                "exclusive cluster"
            )
        server = self._servers[gpu.server]
        cache = self.caches[gpu.server]
        tier: StartTier | None
        pinned = False
        if stage.size_gib <= 0:
            tier = StartTier.NONE
        else:
            tier = StartTier.FORK if cache.lookup(stage.name, now) is not None else StartTier.COLD
            # The started stage's weights become the server's template (if they fit);
            # pinned while it has replicas there, so live stages are never evicted.
            if cache.admit(stage.name, int(stage.size_gib * GIB), now).admitted:
                pinned = cache.pin(stage.name)
        mult = self._multiplier(stage, gpu, stage.cpus)
        if initial:
            delay, tier = 0.0, None
        else:
            assert tier is not None
            delay = self.cluster.delays.seconds(
                tier, stage.size_gib, server.gpu, warmup_s=stage.service_s * mult
            )
        if pinned:  # the server has the stage's template: its pre-fork pool (prefork_pool.py)
            tier, delay = self.pools.on_start(
                stage.name, gpu.server, now, tier=tier, delay_s=delay, delays=self.cluster.delays,
                size_gib=stage.size_gib, gpu=server.gpu, warmup_s=stage.service_s * mult,
            )  # fmt: skip
        self._counter += 1
        rid = f"{stage.name}-r{self._counter}"
        handle = self.engine.add_replica(stage.index, stage.max_concurrency, now + delay, mult)
        gpu.free_gib -= stage.gpu_memory_gib
        if req.affinity_key:
            gpu.tenants[rid] = req.affinity_key
        self._free_cpus[gpu.server] -= stage.cpus
        rep = _Replica(rid, stage, handle, gpu, tier, now, now + delay, stage.cpus, pinned)
        if uses_gpu:
            gpu.reps[rid] = rep
            self._reshare(gpu)
        self._live[rid] = rep
        self._by_stage[stage.name][rid] = rep
        self._n_active[stage.name] += 1
        if now + delay > now:
            self._starting[stage.name][rid] = now + delay
        kind: Literal["initial", "start"] = "initial" if initial else "start"
        self.events.append(
            ReplicaEvent(now, stage.name, rid, kind, tier, server.name, delay, handle)
        )
        return rep

    def _reap(self, now: float) -> None:
        if now < self._next_leave:
            return
        gone = [r for r in self._live.values() if r.leaves_at is not None and r.leaves_at <= now]
        for r in gone:
            del self._live[r.rid]
            del self._by_stage[r.stage.name][r.rid]
            self._n_draining[r.stage.name] -= 1
            r.gpu.free_gib += r.stage.gpu_memory_gib
            r.gpu.tenants.pop(r.rid, None)
            if r.gpu.reps.pop(r.rid, None) is not None:
                self._reshare(r.gpu)
            self._free_cpus[r.gpu.server] += r.cpus
            if r.pinned:
                self.caches[r.gpu.server].unpin(r.stage.name)
            assert r.leaves_at is not None and r.drained_at is not None
            key = (r.gpu.server, r.gpu.index) if r.stage.gpu_memory_gib > 0 else None
            self._ended.append((key, r.requested_at, r.leaves_at))
            self.events.append(
                ReplicaEvent(
                    r.leaves_at,
                    r.stage.name,
                    r.rid,
                    "leave",
                    r.tier,
                    self._servers[r.gpu.server].name,
                    r.leaves_at - r.drained_at,
                    r.handle,
                )
            )
        self._next_leave = min(
            (r.leaves_at for r in self._live.values() if r.leaves_at is not None),
            default=math.inf,
        )

    def _info(self, r: _Replica) -> ReplicaInfo:
        now = self.clock.now()
        if r.drained_at is not None:
            state = ReplicaState.DRAINING
        elif r.ready_at > now:
            state = ReplicaState.STARTING
        else:
            state = ReplicaState.READY
        return ReplicaInfo(
            replica_id=r.rid,
            stage=r.stage.name,
            state=state,
            host=self._servers[r.gpu.server].name,
            tier=r.tier,
            requested_at=r.requested_at,
            ready_at=r.ready_at if r.ready_at <= now else None,
            cpu=r.cpus,
            message=f"gpu {self._servers[r.gpu.server].name}/{r.gpu.index} "
            f"({self._servers[r.gpu.server].gpu.name})",
        )

"""The simulator's placement seam: which GPU a new replica goes to.

``sim/backend.py`` asks a ``Placer`` for one GPU per ``start_replica`` call, passing a
frozen ``ClusterView``: every GPU (free memory, the anti-affinity keys of its tenants, the
server's free CPU, whether the stage's weights are in that server's host-memory cache),
each server's cache (``control/keys_manager.CacheView``) and the live replicas.

Accelerators are exclusive unless the cluster says otherwise (``ClusterSpec.sharing``):
the backend then asks for an ``exclusive`` GPU (``PlaceRequest.exclusive``), which only a
GPU without a replica satisfies (``GpuView.occupants == 0``), and ``server_states`` shows
an occupied GPU to ``control/placement/`` placers with no free memory, so no placer can
stack two replicas on one GPU.

- ``FirstFitPlacer`` (default): the first GPU in server order that fits, with the
  prototype's anti-affinity (reference section 1.4): replicas with the same key never
  share a GPU; the key is the model for ``-me-`` pipelines and the stage otherwise.
- ``CacheFirstPlacer``: the same, preferring servers that cache the stage (fork start).
- ``LeastAllocatedPlacer``: what a Kubernetes scheduler does for a pod asking for one
  GPU (``NodeResourcesFit`` with the ``LeastAllocated`` scoring strategy, the default): the
  server with the largest free share of its GPUs (then of its CPUs) among those that fit,
  its first free GPU; no notion of cached weights. The default for the baselines that run
  on Kubernetes (OpenFaaS, Knative, HPA).
- ``RayDefaultPlacer``: Ray's default (``DEFAULT``/hybrid) scheduling strategy: servers in
  a fixed order, the first whose GPU utilisation stays at or below 50% after the placement
  (packing), else the least utilised one (spreading); Ray docs, "Scheduling" ->
  "DEFAULT": "Ray ... packs tasks onto nodes until the utilization ... exceeds 0.5, then
  spreads". The default for ``ray``.
- ``ControlPlacer``: any ``control/placement/`` placer (Quart's cache-aware solver or a
  baseline) asked for one start. It applies that module's own hard rules (GPU memory,
  CPU, one replica per stage per GPU, cache room) and its *soft* pipeline spreading, so
  the model-level anti-affinity above does not bind it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from quartfaas.control.placement import GPU, PlacementRequest, Replica, ServerState, StageReq
from quartfaas.control.placement import Placer as PlanPlacer
from quartfaas.control.placement.keys_manager import GIB, CacheView
from quartfaas.sim.cluster import GpuType
from quartfaas.sim.pipelines import SimPipeline


@dataclass(frozen=True, slots=True)
class GpuView:
    """One GPU at decision time."""

    server: str
    server_index: int
    gpu_index: int
    gpu: GpuType
    free_gib: float
    tenants: frozenset[str]  # anti-affinity keys of the replicas on this GPU
    server_free_cpus: float
    cached: bool  # the requested stage's weights are in this server's host cache
    occupants: int = 0  # replicas of GPU stages on this GPU now (draining included)


@dataclass(frozen=True, slots=True)
class PlacedReplica:
    replica_id: str
    stage: str
    server_index: int
    gpu_index: int


@dataclass(frozen=True, slots=True)
class ServerView:
    name: str
    host_memory_gib: float
    free_cpus: float
    cache: CacheView


@dataclass(frozen=True, slots=True)
class ClusterView:
    """The cluster at decision time, as the backend sees it."""

    gpus: tuple[GpuView, ...]
    servers: tuple[ServerView, ...]
    replicas: tuple[PlacedReplica, ...]
    exclusive: bool = False  # a GPU holds at most one replica (GpuSharing.EXCLUSIVE)


@dataclass(frozen=True, slots=True)
class PlaceRequest:
    stage: str
    affinity_key: str  # replicas with the same non-empty key never share a GPU
    gpu_memory_gib: float
    cpus: float
    exclusive: bool = False  # the replica needs a whole GPU (exclusive cluster, GPU stage)


def fits(request: PlaceRequest, view: GpuView) -> bool:
    """Hard constraints: GPU memory, server CPU, exclusivity, anti-affinity."""
    if request.exclusive and view.occupants > 0:
        return False
    if view.free_gib + 1e-9 < request.gpu_memory_gib:
        return False
    if view.server_free_cpus + 1e-9 < request.cpus:
        return False
    return not (request.affinity_key and request.affinity_key in view.tenants)


@runtime_checkable
class Placer(Protocol):
    name: str

    def place(self, request: PlaceRequest, cluster: ClusterView) -> GpuView | None:
        """The GPU for one new replica, or None when none fits."""
        ...


class FirstFitPlacer:
    """The first GPU, in server then GPU order, that satisfies the hard constraints."""

    name = "first-fit"

    def place(self, request: PlaceRequest, cluster: ClusterView) -> GpuView | None:
        for view in cluster.gpus:
            if fits(request, view):
                return view
        return None


class CacheFirstPlacer:
    """First fit among servers caching the stage (fork start), then among the rest."""

    name = "cache-first"

    def place(self, request: PlaceRequest, cluster: ClusterView) -> GpuView | None:
        ok = [v for v in cluster.gpus if fits(request, v)]
        for view in ok:
            if view.cached:
                return view
        return ok[0] if ok else None


def _free_gpu_share(cluster: ClusterView) -> dict[int, float]:
    """Per server index: the share of its GPUs without a replica."""
    free: dict[int, int] = {}
    total: dict[int, int] = {}
    for g in cluster.gpus:
        total[g.server_index] = total.get(g.server_index, 0) + 1
        free[g.server_index] = free.get(g.server_index, 0) + (g.occupants == 0)
    return {j: free[j] / total[j] for j in total}


class LeastAllocatedPlacer:
    """Kubernetes-style least-allocated: the emptiest server that fits (see module doc)."""

    name = "least-allocated"

    def place(self, request: PlaceRequest, cluster: ClusterView) -> GpuView | None:
        ok = [v for v in cluster.gpus if fits(request, v)]
        if not ok:
            return None
        shares = _free_gpu_share(cluster)
        # max() keeps the first of equals: server order breaks ties, then GPU order
        best = max(ok, key=lambda v: (shares[v.server_index], v.server_free_cpus))
        return next(v for v in ok if v.server_index == best.server_index)


class RayDefaultPlacer:
    """Ray's default hybrid strategy: pack to 50% GPU utilisation, then spread."""

    name = "ray-default"
    threshold = 0.5

    def place(self, request: PlaceRequest, cluster: ClusterView) -> GpuView | None:
        ok = [v for v in cluster.gpus if fits(request, v)]
        if not ok:
            return None
        used: dict[int, int] = {}
        total: dict[int, int] = {}
        for g in cluster.gpus:
            total[g.server_index] = total.get(g.server_index, 0) + 1
            used[g.server_index] = used.get(g.server_index, 0) + (g.occupants > 0)
        for v in ok:  # servers in order: the first that stays under the threshold
            j = v.server_index
            if (used[j] + 1) / total[j] <= self.threshold:
                return v
        return min(ok, key=lambda v: used[v.server_index] / total[v.server_index])


class ControlPlacer:
    """A ``control/placement/`` placer (e.g. ``get_placer("quart")``) asked for one start."""

    def __init__(self, placer: PlanPlacer, pipeline: SimPipeline) -> None:
        self.inner = placer
        self.name = f"control:{placer.name}"
        self.stages = tuple(
            StageReq(
                key=s.name,
                size_bytes=int(s.size_gib * GIB),
                pipeline=pipeline.name,
                cpu_cores=s.cpus,
                gpu_memory_bytes=int(s.gpu_memory_gib * GIB),
            )
            for s in pipeline.stages
        )
        self.last_reason = ""

    def place(self, request: PlaceRequest, cluster: ClusterView) -> GpuView | None:
        servers = server_states(cluster)
        live = tuple(
            Replica(
                r.stage, cluster.servers[r.server_index].name, f"gpu{r.gpu_index}", r.replica_id
            )
            for r in cluster.replicas
        )
        plan = self.inner.place(
            PlacementRequest(tuple(servers), self.stages, live, start={request.stage: 1})
        )
        if not plan.placements:
            self.last_reason = "; ".join(i.reason for i in plan.infeasible)
            return None
        chosen = plan.placements[0]
        self.last_reason = chosen.reason
        for view in cluster.gpus:
            if view.server == chosen.server and f"gpu{view.gpu_index}" == chosen.gpu:
                return view
        raise ValueError(f"placer {self.inner.name} chose unknown {chosen.server}/{chosen.gpu}")


def server_states(cluster: ClusterView) -> list[ServerState]:
    """The cluster as ``control/placement/`` and ``control/placement/cache_plan.py`` see it."""
    servers = []
    for j, sv in enumerate(cluster.servers):
        gpus = tuple(
            GPU(
                f"gpu{g.gpu_index}",
                int(g.gpu.memory_gib * GIB),
                # An exclusive GPU with a replica on it has no room for another.
                0 if cluster.exclusive and g.occupants else max(0, int(g.free_gib * GIB)),
                g.gpu.speed,
            )
            for g in cluster.gpus
            if g.server_index == j
        )
        host = int(sv.host_memory_gib * GIB)
        servers.append(
            ServerState(sv.name, gpus, sv.cache, host - sv.cache.used_bytes, sv.free_cpus)
        )
    return servers


def explain_no_fit(request: PlaceRequest, cluster: ClusterView) -> str:
    """Why no GPU fits, with the numbers (for errors)."""
    gpus = cluster.gpus
    if request.exclusive:
        gpus = tuple(v for v in gpus if v.occupants == 0)
    mem_ok = [v for v in gpus if v.free_gib + 1e-9 >= request.gpu_memory_gib]
    cpu_ok = [v for v in mem_ok if v.server_free_cpus + 1e-9 >= request.cpus]
    aff_ok = [v for v in cpu_ok if not (request.affinity_key and request.affinity_key in v.tenants)]
    most = max((v.free_gib for v in gpus), default=0.0)
    return (
        f"stage {request.stage!r} needs {request.gpu_memory_gib:.2f} GiB of GPU memory and "
        f"{request.cpus:g} CPUs: {len(mem_ok)} of {len(gpus)} "
        f"{'unoccupied (exclusive) ' if request.exclusive else ''}GPUs have the memory "
        f"(most free: {most:.2f} GiB), {len(cpu_ok)} of those have the CPUs, "
        f"{len(aff_ok)} of those are free of anti-affinity key {request.affinity_key!r}"
    )

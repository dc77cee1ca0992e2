"""The ``Backend`` protocol: the one adapter that owns every replica side effect.

Implementations: ``backends/local.py`` (worker processes on this machine, started by fork
from a stage template or as fresh processes), ``sim/backend.py`` (the simulator's
cluster) and, later, Kubernetes. The gateway's scale API and the control loop both call
a backend; nothing else starts, stops or resizes replicas.

Calls are *non-blocking declarations*, like a Kubernetes API: ``start_replica`` returns
at once with a replica in state ``STARTING``; readiness is observed later through
``list_replicas`` (or a listener the backend was built with). ``reconcile`` turns a
desired count into starts and stops.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol, runtime_checkable


class ReplicaState(StrEnum):
    STARTING = "starting"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class StartTier(StrEnum):
    """How a replica got its weights (the parameter-cache hierarchy, fastest first)."""

    FORK = "fork"  # forked from a live stage template (host-memory hit)
    PREFORK = "prefork"  # a child forked and warmed in advance, handed over
    MMAP = "mmap"  # new template mapping the stage file from tmpfs / page cache
    COLD = "cold"  # a fresh process reading weights from disk
    OBJECT_STORE = "object-store"  # Ray: weights already in this node's object store
    REMOTE = "remote"  # Ray: weights pulled from another node's object store
    NONE = "none"  # the stage has no weights (synthetic)


class CpuLever(StrEnum):
    """How a CPU allocation is applied in place (no restart)."""

    CGROUP_V2 = "cgroup-v2"
    CGROUP_V1 = "cgroup-v1"
    THREADS = "threads"
    K8S_RESIZE = "k8s-resize"
    SIMULATED = "simulated"
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ReplicaInfo:
    replica_id: str
    stage: str
    state: ReplicaState
    address: str | None = None  # base URL, e.g. http://127.0.0.1:40123
    host: str = "local"
    tier: StartTier | None = None
    requested_at: float = 0.0
    ready_at: float | None = None
    cpu: float | None = None
    pid: int | None = None
    message: str = ""

    @property
    def start_seconds(self) -> float | None:
        return None if self.ready_at is None else self.ready_at - self.requested_at


@runtime_checkable
class Backend(Protocol):
    def start_replica(self, stage: str) -> ReplicaInfo:
        """Begin starting one replica of ``stage``; returns it in state STARTING."""
        ...

    def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        """Stop a replica; with ``drain`` it first finishes its in-flight work."""
        ...

    def list_replicas(self, stage: str | None = None) -> list[ReplicaInfo]:
        """Replicas not yet stopped (STARTING, READY, DRAINING; FAILED until replaced)."""
        ...

    def set_cpu(self, replica_id: str, cpus: float) -> CpuLever:
        """Give a running replica ``cpus`` cores in place; returns the lever used."""
        ...


@dataclass(frozen=True, slots=True)
class PoolStatus:
    """A stage's pre-fork pool as its backend last saw it (``PoolScalable``)."""

    stage: str
    depth: int  # warmed children the template is asked to keep
    idle: int = 0  # children forked in advance (warm or still warming)
    warm: int = 0
    child_private_bytes: int | None = None  # measured private memory of one warmed child
    cache_free_bytes: int | None = None  # room left under the cache's memory threshold
    waiting: str = ""  # why the refill waits now ("" when it does not)
    floor: int = 1  # least depth (the spec's cache.prefork)
    max_depth: int = 16  # most depth (cache.prefork_max)


@runtime_checkable
class PoolScalable(Protocol):
    """A backend whose stage templates keep a pool of warmed children (the local backend's
    parameter cache; the simulator's model of it). The depth is decided by
    ``control/placement/prefork.py`` and applied by the loop; backends without a pool do
    not implement this, and ``set_pool`` is then a no-op."""

    def set_pool(self, stage: str, depth: int) -> None: ...

    def pool_status(self, stage: str) -> PoolStatus | None: ...


def set_pool(backend: Backend, stage: str, depth: int) -> bool:
    """Ask ``backend`` to keep ``depth`` warmed children of ``stage``; False (a no-op)
    where it has no pool."""
    if depth < 0:
        raise ValueError(f"pool depth must be >= 0, got {depth}")
    if not isinstance(backend, PoolScalable):
        return False
    backend.set_pool(stage, depth)
    return True


@dataclass(frozen=True, slots=True)
class ReconcilePlan:
    start: int
    stop: tuple[str, ...]


def plan_reconcile(replicas: Sequence[ReplicaInfo], desired: int) -> ReconcilePlan:
    """Starts/stops that move the live (STARTING + READY) replicas to ``desired``.

    Scale-down stops replicas that are still starting first (they serve nothing yet),
    then the most recently ready ones (the oldest have the warmest caches).
    """
    if desired < 0:
        raise ValueError(f"desired replicas must be >= 0, got {desired}")
    live = [r for r in replicas if r.state in (ReplicaState.STARTING, ReplicaState.READY)]
    if desired >= len(live):
        return ReconcilePlan(start=desired - len(live), stop=())

    def order(r: ReplicaInfo) -> tuple[int, float]:
        starting = r.state is ReplicaState.STARTING
        return (0 if starting else 1, -(r.ready_at or r.requested_at))

    victims = sorted(live, key=order)[: len(live) - desired]
    return ReconcilePlan(start=0, stop=tuple(r.replica_id for r in victims))


@runtime_checkable
class CountScalable(Protocol):
    """A backend that sets a replica *count* in one call (e.g. a remote gateway's API)."""

    def scale_to(self, stage: str, replicas: int) -> ReconcilePlan: ...


def reconcile(backend: Backend, stage: str, desired: int) -> ReconcilePlan:
    """Apply ``plan_reconcile`` for one stage through ``backend``.

    Called for every stage at every tick, so it avoids work when nothing changes: a backend
    with a ``live_count(stage)`` method (starting + ready replicas, kept incrementally; the
    simulator's) answers "already there" without listing replicas, and ``CountScalable`` is
    detected by its method, not by ``isinstance`` against a runtime-checkable Protocol
    (which inspects every member on each call).
    """
    live_count = getattr(backend, "live_count", None)
    if live_count is not None and live_count(stage) == desired:
        return ReconcilePlan(start=0, stop=())
    if callable(getattr(backend, "scale_to", None)):
        live = [
            r for r in backend.list_replicas(stage)
            if r.state in (ReplicaState.STARTING, ReplicaState.READY)
        ]  # fmt: skip
        if len(live) == desired:
            return ReconcilePlan(start=0, stop=())
        return backend.scale_to(stage, desired)  # type: ignore[attr-defined]
    plan = plan_reconcile(backend.list_replicas(stage), desired)
    for _ in range(plan.start):
        backend.start_replica(stage)
    for rid in plan.stop:
        backend.stop_replica(rid, drain=True)
    return plan

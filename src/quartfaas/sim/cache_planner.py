"""Cache management across the simulated cluster: pre-warm where demand is coming.

After each controller tick (a ``DecisionSink`` on the shared ``ControlLoop``), the
planner turns the decision into predicted demand per stage and asks
``control/cache_plan.plan_cache`` which stages to keep or load into which servers' host
memory; it then applies the plan to the ``SimBackend``'s per-server ``KeysManager``:

- demand of a stage: the decision's target as ``expected_replicas`` and its current count,
  ``critical`` from the decision, and a burst probability from the stage's measured
  inter-arrival CV (``(cv - 1) / 3`` clipped to [0, 1]: Poisson-like arrivals need no
  spare copies, CV 4 and above always want one);
- an eviction happens at once; a pre-warm is a load from disk or remote storage, so its
  entry is admitted only when that read would finish (size / the cluster's read
  bandwidth), at the first tick after it.

The pure decision is ``plan_cache``; this module only carries it out in simulated time.
"""

from __future__ import annotations

from dataclasses import dataclass

from quartfaas.control.loop import Applied
from quartfaas.control.placement.cache_plan import CachePlanConfig, StageDemand, plan_cache
from quartfaas.control.policy import Decision
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.sim.backend import GIB, SimBackend
from quartfaas.sim.cluster import WeightSource
from quartfaas.sim.placement import server_states


@dataclass(frozen=True, slots=True)
class _Pending:
    ready_at: float
    server: int
    key: str
    size_bytes: int


def burst_probability(cv: float | None) -> float:
    if cv is None:
        return 0.0
    return min(1.0, max(0.0, (cv - 1.0) / 3.0))


class CachePlanner:
    """Applies ``plan_cache`` to a ``SimBackend`` after every controller tick."""

    def __init__(self, backend: SimBackend, config: CachePlanConfig | None = None) -> None:
        self.backend = backend
        self.config = config or CachePlanConfig()
        self._pending: list[_Pending] = []
        self._index = {s.name: j for j, s in enumerate(backend.cluster.servers)}
        self.prewarms = 0
        self.evictions = 0
        delays = backend.cluster.delays
        local = delays.source is WeightSource.LOCAL_DISK
        self._read_gib_per_s = delays.disk_gib_per_s if local else delays.remote_gib_per_s

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        now = snapshot.now
        self._admit_due(now)
        if decision.hold or not snapshot.stages:
            return
        stages = {s.name: s for s in self.backend.pipeline.stages}
        measured = {s.name: s for s in snapshot.stages}
        demand = {}
        for d in decision.stages:
            st = stages.get(d.stage)
            if st is None or st.size_gib <= 0:
                continue
            snap = measured.get(d.stage)
            demand[d.stage] = StageDemand(
                key=d.stage,
                size_bytes=int(st.size_gib * GIB),
                expected_replicas=float(d.replicas),
                current_replicas=d.current,
                burst_prob=burst_probability(snap.arrival_cv if snap else None),
                critical=d.critical,
                gpu_memory_bytes=int(st.gpu_memory_gib * GIB),
            )
        if not demand:
            return
        view = self.backend.view(self.backend.pipeline.stages[0])
        plan = plan_cache(server_states(view), demand, self.config)
        pending = {(p.server, p.key) for p in self._pending}
        for ev in plan.evict:
            j = self._index[ev.server]
            if self.backend.caches[j].evict(ev.key).evicted:
                self.evictions += 1
        for pw in plan.prewarm:
            j = self._index[pw.server]
            if (j, pw.key) in pending or pw.key in self.backend.caches[j]:
                continue
            load_s = pw.size_bytes / GIB / self._read_gib_per_s
            self._pending.append(_Pending(now + load_s, j, pw.key, pw.size_bytes))

    def _admit_due(self, now: float) -> None:
        due = [p for p in self._pending if p.ready_at <= now]
        if not due:
            return
        self._pending = [p for p in self._pending if p.ready_at > now]
        for p in due:
            if self.backend.caches[p.server].admit(p.key, p.size_bytes, now).admitted:
                self.prewarms += 1

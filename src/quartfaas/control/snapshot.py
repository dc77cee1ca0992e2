"""Snapshots: what the controller knows about a pipeline at one instant ``now``.

A snapshot is plain frozen data. Collectors build it (``metrics/collector.py`` from the
gateway's own registry and windows, ``metrics/prometheus.py`` from PromQL, the simulator
from its queues); policies read it; nothing in ``control/`` reads a clock or does I/O.
Missing measurements are ``None`` (never 0), so a policy can tell "idle" from "unknown".

``make_stage``/``make_snapshot`` are builders for tests and for the simulator.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from quartfaas.frozen import copier, fast_init


@fast_init
@dataclass(frozen=True, slots=True)
class LatencyStats:
    """Latency over the measurement window, seconds. ``None`` where there were no samples."""

    count: int = 0
    mean_s: float | None = None
    p50_s: float | None = None
    p95_s: float | None = None
    p99_s: float | None = None

    def quantile(self, q: float) -> float | None:
        """The nearest stored quantile at or above ``q`` (p50/p95/p99)."""
        if q <= 0.5:
            return self.p50_s
        if q <= 0.95:
            return self.p95_s
        return self.p99_s


@fast_init
@dataclass(frozen=True, slots=True)
class StageSnapshot:
    """One stage at ``PipelineSnapshot.now``.

    Rates and CVs are over the snapshot's window; ``arrivals``, ``rejected`` and ``errors``
    are counts within that window; queue, in-flight and replica counts are instantaneous.
    ``service_mean_s``/``service_scv`` are *measured* from completed requests (worker
    compute time, without queueing); ``latency`` is time in the stage (queue + service);
    ``wait`` is the part of it spent waiting for a replica slot (empty where the collector
    cannot see it).
    ``cpu_utilisation`` is cores used per replica divided by ``cpu_per_replica`` (the
    CPU Compensator's CPU-bound signal), ``None`` where it cannot be measured.
    """

    name: str
    index: int
    min_replicas: int = 1
    max_replicas: int = 1
    max_concurrency: int = 1
    ready_replicas: int = 0
    starting_replicas: int = 0
    draining_replicas: int = 0
    queue_len: int = 0
    in_flight: int = 0
    arrival_rate: float | None = None
    arrival_cv: float | None = None
    departure_rate: float | None = None
    departure_cv: float | None = None
    service_mean_s: float | None = None
    service_scv: float | None = None
    latency: LatencyStats = field(default_factory=LatencyStats)
    wait: LatencyStats = field(default_factory=LatencyStats)
    arrivals: int = 0
    rejected: int = 0
    errors: int = 0
    cpu_per_replica: float = 1.0
    cpu_utilisation: float | None = None

    def with_service(
        self, service_mean_s: float | None, service_scv: float | None
    ) -> StageSnapshot:
        """This stage with another service mean and SCV: ``dataclasses.replace`` without
        its keyword handling and validation (``frozen.copier``; the corrector's service
        memory makes one per stage and tick). ``test_with_service_is_replace`` compares."""
        return _with_service(self, service_mean_s, service_scv)

    @property
    def replicas(self) -> int:
        """Replicas that count as capacity now or soon (ready + starting)."""
        return self.ready_replicas + self.starting_replicas

    @property
    def servers(self) -> int:
        """Concurrent service slots of the ready replicas."""
        return self.ready_replicas * self.max_concurrency

    @property
    def utilisation(self) -> float | None:
        """Offered load per ready service slot, λ·E[S]/c (may exceed 1 when overloaded)."""
        if self.arrival_rate is None or self.service_mean_s is None or self.servers == 0:
            return None
        return self.arrival_rate * self.service_mean_s / self.servers


_with_service = copier(StageSnapshot, "service_mean_s", "service_scv")


@fast_init
@dataclass(frozen=True, slots=True)
class PipelineSnapshot:
    """A pipeline at time ``now`` (seconds on the collector's monotonic clock).

    ``data_age_s`` is ``None`` when the collector could not read any measurement; a
    non-empty ``note`` says the data is degraded and why (``unreachable: ...``,
    ``stale: ...``), which the decision log and metrics report.
    """

    now: float
    pipeline: str
    slo_p99_s: float
    stages: tuple[StageSnapshot, ...]
    e2e: LatencyStats = field(default_factory=LatencyStats)
    window_s: float = 10.0
    data_age_s: float | None = 0.0
    source: str = "unknown"
    note: str = ""

    @property
    def has_data(self) -> bool:
        """False when the collector could not read any measurement."""
        return self.data_age_s is not None

    def stage(self, name: str) -> StageSnapshot:
        for s in self.stages:
            if s.name == name:
                return s
        raise KeyError(name)


def make_stage(name: str = "s0", index: int = 0, **kw: object) -> StageSnapshot:
    """Test/simulator builder: ``make_stage(queue_len=40, arrival_rate=12.0)``."""
    return replace(StageSnapshot(name=name, index=index), **kw)  # type: ignore[arg-type]


def make_snapshot(
    n_stages: int = 3,
    now: float = 0.0,
    slo_p99_s: float = 1.0,
    pipeline: str = "p",
    stages: tuple[StageSnapshot, ...] | None = None,
    **stage_kw: object,
) -> PipelineSnapshot:
    """Test builder: ``n_stages`` alike stages (``stage_kw`` applied to each)."""
    if stages is None:
        stages = tuple(make_stage(f"s{i}", i, **stage_kw) for i in range(n_stages))
    return PipelineSnapshot(
        now=now, pipeline=pipeline, slo_p99_s=slo_p99_s, stages=stages, source="test"
    )

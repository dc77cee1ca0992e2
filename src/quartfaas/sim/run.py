"""Run a policy against a simulated pipeline: the live control loop on simulated time.

``simulate`` wires the pieces the same way ``quartfaas serve`` does, with the simulated
ones swapped in: a ``FakeClock`` for the clock, ``SimCollector`` for the metrics collector,
``SimBackend`` for the backend, and the unchanged ``control/loop.ControlLoop`` with the
policy under test. At every tick ``t = i x interval_s`` it advances the engine to ``t``,
sets the clock, builds the snapshot and calls ``loop.step``, which applies the decision
through the backend. It stops once every request has completed or been rejected, or
``drain_limit_s`` after the last arrival (the rest are reported as unfinished), but not
before ``run_until_s`` when given.

Work per visit is drawn up front from ``seed`` (gamma with the stage's mean and SCV,
constant when SCV = 0), so a run is a deterministic function of its arguments.
Neighbours: ``sim/report.py`` turns ``SimResult`` into tables and plots; workloads
(``workload/``) produce the arrival array.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from quartfaas.clock import FakeClock
from quartfaas.control.config import ControllerConfig
from quartfaas.control.loop import Applied, ControlLoop, DecisionSink
from quartfaas.control.placement.cache_plan import CachePlanConfig
from quartfaas.control.policy import Action, Decision, Policy
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.errors import InsufficientMemory, SimulationError
from quartfaas.sim.backend import ReplicaEvent, SimBackend
from quartfaas.sim.cluster import ClusterSpec
from quartfaas.sim.collector import SimCollector
from quartfaas.sim.engine import Engine
from quartfaas.sim.pipelines import SimPipeline
from quartfaas.sim.placement import Placer

# Records cost ~28 bytes per stage visit (start, finish, work, order); 50M visits ~ 1.4 GB.
MAX_STAGE_VISITS = 50_000_000

ProgressFn = Callable[[float, int, int], None]  # (sim time, requests done, total requests)


@dataclass(frozen=True, slots=True)
class ScaleEvent:
    """A non-hold decision for one stage and what applying it did."""

    time: float
    stage: str
    current: int
    target: int
    action: str
    reason: str
    started: int = 0
    stopped: int = 0
    error: str = ""


@dataclass(frozen=True, eq=False)
class SimResult:
    policy: str
    pipeline: SimPipeline
    cluster: str
    seed: int
    interval_s: float
    end_s: float
    arrivals: np.ndarray
    latency_s: np.ndarray  # end-to-end, NaN unless completed
    rejected_at: np.ndarray  # stage index that rejected the request, -1 if none
    stage_start: np.ndarray  # (stages, requests), NaN where not started
    stage_finish: np.ndarray
    served_by: np.ndarray | None  # engine replica handle per visit (record_servers)
    tick_times: np.ndarray
    ready: np.ndarray  # (ticks, stages) replicas after each tick's decision
    starting: np.ndarray
    draining: np.ndarray
    gpu_seconds: float  # GPU occupancy: GPUs held x time (sim/gpu_accounting.py)
    replica_seconds: float  # sum of replica lifetimes
    refused_initial: int  # replicas asked for up front (beyond min_replicas) that found no GPU
    scale_events: tuple[ScaleEvent, ...]
    replica_events: tuple[ReplicaEvent, ...]
    snapshots_taken: int
    wall_s: float = field(compare=False)

    @property
    def n_requests(self) -> int:
        return int(self.arrivals.size)

    @property
    def completed(self) -> int:
        return int(np.count_nonzero(~np.isnan(self.latency_s)))

    @property
    def rejected(self) -> int:
        return int(np.count_nonzero(self.rejected_at >= 0))

    @property
    def unfinished(self) -> int:
        return self.n_requests - self.completed - self.rejected

    @property
    def rejected_by_stage(self) -> tuple[int, ...]:
        counts = np.bincount(
            self.rejected_at[self.rejected_at >= 0], minlength=len(self.pipeline.stages)
        )
        return tuple(int(c) for c in counts)

    @property
    def starts_by_tier(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for ev in self.replica_events:
            if ev.kind == "start" and ev.tier is not None:
                out[ev.tier.value] = out.get(ev.tier.value, 0) + 1
        return dict(sorted(out.items()))

    def slo_attainment(self, slo_s: float | None = None) -> float:
        """Share of all requests completed within the SLO (rejected/unfinished miss it)."""
        slo = self.pipeline.slo_p99_s if slo_s is None else slo_s
        if self.n_requests == 0:
            return float("nan")
        ok = np.count_nonzero(self.latency_s <= slo)  # NaN compares False
        return ok / self.n_requests


class _Recorder:
    """DecisionSink that keeps scale events and replica counts per tick."""

    def __init__(self, backend: SimBackend, stages: Sequence[str]) -> None:
        self.backend = backend
        self.stages = list(stages)
        self.events: list[ScaleEvent] = []
        self.rows: list[tuple[float, list[tuple[int, int, int]]]] = []

    def sample(self, now: float) -> None:
        self.rows.append((now, [self.backend.counts(s) for s in self.stages]))

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        for d in decision.stages:
            if d.action is Action.HOLD and d.stage not in applied.errors:
                continue
            self.events.append(
                ScaleEvent(
                    time=snapshot.now,
                    stage=d.stage,
                    current=d.current,
                    target=d.replicas,
                    action=d.action.value,
                    reason=d.reason,
                    started=applied.started.get(d.stage, 0),
                    stopped=applied.stopped.get(d.stage, 0),
                    error=applied.errors.get(d.stage, ""),
                )
            )


def sample_work(pipeline: SimPipeline, n: int, seed: int) -> np.ndarray:
    """Reference-GPU seconds per visit, shape (stages, n)."""
    rng = np.random.default_rng(seed)
    work = np.empty((pipeline.num_stages, n))
    for k, st in enumerate(pipeline.stages):
        if st.service_scv <= 0:
            work[k] = st.service_s
        else:
            work[k] = rng.gamma(1.0 / st.service_scv, st.service_s * st.service_scv, n)
    return work


def simulate(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    policy: Policy,
    arrivals: np.ndarray,
    *,
    seed: int = 0,
    controller: ControllerConfig | None = None,
    placer: Placer | None = None,
    initial_replicas: Mapping[str, int] | None = None,
    drain_limit_s: float = 600.0,
    max_stage_visits: int = MAX_STAGE_VISITS,
    record_servers: bool = False,
    progress: ProgressFn | None = None,
    sinks: Sequence[DecisionSink] = (),
    cache_planning: CachePlanConfig | None = None,
    run_until_s: float | None = None,
    observe: Callable[[PipelineSnapshot], PipelineSnapshot] | None = None,
) -> SimResult:
    """Serve ``arrivals`` (sorted seconds from 0) through ``pipeline`` on ``cluster``.

    ``run_until_s``: keep ticking until this time even once every request is done (the
    controller's scale-down after the load; ``sim/fidelity_control.py`` compares it live).
    ``observe``: applied to every snapshot before the controller sees it (what a live
    collector would report of the same measurements; ``sim/fidelity_control.live_view``).
    """
    wall0 = time.perf_counter()
    cfg = controller or ControllerConfig.model_validate({})
    arr = np.asarray(arrivals, dtype=np.float64)
    n, k = int(arr.size), pipeline.num_stages
    if n * k > max_stage_visits:
        raise SimulationError(
            f"{n} requests x {k} stages = {n * k:,} stage visits exceeds max_stage_visits="
            f"{max_stage_visits:,} (records take ~{28 * n * k / 1e9:.1f} GB); shorten the "
            "workload, lower its rate, or raise max_stage_visits"
        )
    engine = Engine(
        arr,
        sample_work(pipeline, n, seed),
        [s.queue_bound for s in pipeline.stages],
        record_servers=record_servers,
    )
    clock = FakeClock(0.0)
    backend = SimBackend(cluster, pipeline, engine, clock, placer)
    wanted = {s.name: s.min_replicas for s in pipeline.stages}
    wanted.update(initial_replicas or {})
    refused_initial = 0
    # Every stage's min_replicas first (a cluster that cannot hold those is an error), then
    # the rest round-robin so a deployment too large for the cluster is refused evenly.
    for st in pipeline.stages:
        for i in range(min(st.min_replicas, wanted[st.name])):
            try:
                backend.deploy_initial(st.name)
            except InsufficientMemory as exc:
                total = sum(wanted.values())
                raise SimulationError(
                    f"cluster {cluster.describe()} cannot hold pipeline {pipeline.name!r} "
                    f"({k} stages, {total} initial replicas, anti-affinity "
                    f"{pipeline.anti_affinity!r}): replica {i + 1} of {wanted[st.name]}: {exc}"
                ) from None
    extra_wanted = {
        s.name: wanted[s.name] - min(s.min_replicas, wanted[s.name]) for s in pipeline.stages
    }
    while any(extra_wanted.values()):
        for st in pipeline.stages:
            if extra_wanted[st.name] > 0:
                extra_wanted[st.name] -= 1
                try:
                    backend.deploy_initial(st.name)
                except InsufficientMemory:
                    refused_initial += 1
    recorder = _Recorder(backend, [s.name for s in pipeline.stages])
    recorder.sample(0.0)
    collector = SimCollector(engine, backend, pipeline, cfg.window_s)
    extra: list[DecisionSink] = []
    if cache_planning is not None:  # pre-warm host memory where demand is coming
        from quartfaas.sim.cache_planner import CachePlanner

        extra.append(CachePlanner(backend, cache_planning))
    loop = ControlLoop(policy, backend, sinks=[recorder, *sinks, *extra])
    end_limit = (float(arr[-1]) if n else 0.0) + drain_limit_s
    tick = 0
    now = 0.0
    until = -np.inf if run_until_s is None else run_until_s
    while (not engine.idle or now < until) and now < max(end_limit, until):
        tick += 1
        now = tick * cfg.interval_s  # multiply, not accumulate: tick times stay exact
        engine.advance(now)
        clock.set(now)
        snapshot = collector.collect(now)
        loop.step(snapshot if observe is None else observe(snapshot))
        recorder.sample(now)
        if progress is not None:
            progress(now, engine.completed + engine.rejected, n)
    return _result(
        pipeline=pipeline,
        cluster=cluster,
        policy=policy,
        seed=seed,
        cfg=cfg,
        engine=engine,
        backend=backend,
        recorder=recorder,
        ticks=tick,
        end=now,
        wall0=wall0,
        refused_initial=refused_initial,
    )


def _result(
    *,
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    policy: Policy,
    seed: int,
    cfg: ControllerConfig,
    engine: Engine,
    backend: SimBackend,
    recorder: _Recorder,
    ticks: int,
    end: float,
    wall0: float,
    refused_initial: int = 0,
) -> SimResult:
    k = engine.n_stages
    latency = np.full(engine.n_requests, np.nan)
    done = engine.seq[k, : engine.cnt[k]]
    latency[done] = engine.finish[k - 1, done] - engine.arrivals[done]
    counts = np.array([row for _, row in recorder.rows], dtype=np.int64).reshape(-1, k, 3)
    return SimResult(
        policy=policy.name,
        pipeline=pipeline,
        cluster=cluster.name,
        seed=seed,
        interval_s=cfg.interval_s,
        end_s=end,
        arrivals=engine.arrivals,
        latency_s=latency,
        rejected_at=engine.rejected_at,
        stage_start=engine.start,
        stage_finish=engine.finish,
        served_by=engine.served_by if engine.record_servers else None,
        tick_times=np.array([t for t, _ in recorder.rows]),
        ready=counts[:, :, 0],
        starting=counts[:, :, 1],
        draining=counts[:, :, 2],
        gpu_seconds=backend.gpu_seconds(end),
        replica_seconds=backend.replica_seconds(end),
        refused_initial=refused_initial,
        scale_events=tuple(recorder.events),
        replica_events=tuple(sorted(backend.events, key=lambda e: e.time)),
        snapshots_taken=ticks,
        wall_s=time.perf_counter() - wall0,
    )

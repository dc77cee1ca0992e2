"""Closed-loop simulations: ControlLoop + SimBackend + SimCollector on simulated time."""

from __future__ import annotations

import math
from dataclasses import replace

import numpy as np
import pytest

from quartfaas.control.backend import StartTier
from quartfaas.control.config import ControllerConfig
from quartfaas.control.loop import Applied
from quartfaas.control.placement import get_placer
from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.errors import SimulationError
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import SimPipeline, SimStage, pipeline_preset
from quartfaas.sim.placement import CacheFirstPlacer, ControlPlacer
from quartfaas.sim.prefork_pool import HANDOVER_S
from quartfaas.sim.report import summary_table
from quartfaas.sim.run import simulate

# -- test-only policies (the Policy protocol: name, initial_state, decide) -------------


class Hold:
    name = "hold"

    def initial_state(self, snapshot: PipelineSnapshot) -> None:
        return None

    def decide(self, snapshot: PipelineSnapshot, state: None) -> tuple[Decision, None]:
        return hold_all(snapshot, self.name, "static"), state


class Schedule:
    """Every stage gets ``n`` replicas from time ``t`` on, for each ``(t, n)``."""

    name = "schedule"

    def __init__(self, steps: list[tuple[float, int]]) -> None:
        self.steps = steps

    def initial_state(self, snapshot: PipelineSnapshot) -> None:
        return None

    def decide(self, snapshot: PipelineSnapshot, state: None) -> tuple[Decision, None]:
        n = [n for t, n in self.steps if t <= snapshot.now][-1]
        out = tuple(
            StageDecision(s.name, s.replicas, n, f"schedule: {n} from the table")
            for s in snapshot.stages
        )
        return Decision(snapshot.now, self.name, out), state


class RateRule:
    """replicas = ceil(rate x service / (0.7 x concurrency)), within bounds."""

    name = "rate-rule"

    def initial_state(self, snapshot: PipelineSnapshot) -> None:
        return None

    def decide(self, snapshot: PipelineSnapshot, state: None) -> tuple[Decision, None]:
        out = []
        for s in snapshot.stages:
            if s.arrival_rate is None or s.service_mean_s is None:
                out.append(StageDecision(s.name, s.replicas, s.replicas, "no-data"))
                continue
            want = math.ceil(s.arrival_rate * s.service_mean_s / (0.7 * s.max_concurrency))
            want = max(s.min_replicas, min(s.max_replicas, want))
            out.append(StageDecision(s.name, s.replicas, want, f"rate {s.arrival_rate:.1f}/s"))
        return Decision(snapshot.now, self.name, tuple(out)), state


class Snapshots:
    """A DecisionSink keeping every snapshot."""

    def __init__(self) -> None:
        self.seen: list[PipelineSnapshot] = []

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        self.seen.append(snapshot)


def poisson(rate: float, n: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))


def cfg(interval_s: float = 1.0, window_s: float = 10.0) -> ControllerConfig:
    return ControllerConfig(interval_s=interval_s, window_s=window_s)


# -- tests ------------------------------------------------------------------------------


def test_same_seed_same_results_and_byte_identical_table() -> None:
    pipe = pipeline_preset("llama-7b-me-5", service_scv=0.5)
    cluster = cluster_preset("paper")
    arr = np.concatenate([poisson(150, 6000, 1), 40 + poisson(500, 6000, 2)])

    def run(seed: int):  # type: ignore[no-untyped-def]
        return simulate(pipe, cluster, RateRule(), arr, seed=seed, controller=cfg())

    a, b, c = run(7), run(7), run(8)
    assert summary_table([a]).encode() == summary_table([b]).encode()
    np.testing.assert_array_equal(a.latency_s, b.latency_s)
    np.testing.assert_array_equal(a.ready, b.ready)
    assert a.scale_events == b.scale_events and len(a.scale_events) > 0
    assert a.replica_events == b.replica_events
    assert summary_table([a]) != summary_table([c])  # the seed matters


def test_every_request_completes_or_is_rejected() -> None:
    pipe = pipeline_preset("whisper-time-3", queue_bound=5, max_replicas=1)
    arr = poisson(120.0, 4000, 3)  # ~2x the capacity of one replica per stage
    r = simulate(pipe, cluster_preset("small"), Hold(), arr, controller=cfg(0.5, 5.0))
    assert r.rejected > 0 and r.completed > 0
    assert r.unfinished == 0
    assert r.completed + r.rejected == r.n_requests
    assert sum(r.rejected_by_stage) == r.rejected
    assert np.all(np.isnan(r.latency_s[r.rejected_at >= 0]))


def test_littles_law_from_snapshot_counts() -> None:
    pipe = pipeline_preset("whisper-time-3", service_scv=1.0)
    n = 40_000
    arr = poisson(45.0, n, 5)  # one replica x 2 slots per stage: utilisation ~0.67
    sink = Snapshots()
    r = simulate(pipe, cluster_preset("small"), Hold(), arr, controller=cfg(0.5, 5.0), sinks=[sink])
    assert r.completed == n
    horizon = arr[-1]
    lam = n / horizon
    w = float(np.nanmean(r.latency_s))
    in_system = [
        sum(s.queue_len + s.in_flight for s in snap.stages)
        for snap in sink.seen
        if snap.now <= horizon
    ]
    assert np.mean(in_system) == pytest.approx(lam * w, rel=0.05)
    # The collector's rates agree with the workload too.
    rates = [snap.stages[0].arrival_rate for snap in sink.seen if 10 < snap.now <= horizon]
    assert np.mean(rates) == pytest.approx(lam, rel=0.03)


def test_replicas_added_at_a_tick_serve_only_after_their_start_delay() -> None:
    pipe = pipeline_preset("llama-7b-me-5")
    cluster = cluster_preset("paper")
    arr = poisson(400.0, 8000, 9)  # overloads one replica per stage: queues build
    r = simulate(
        pipe,
        cluster,
        Schedule([(0.0, 1), (5.0, 2)]),
        arr,
        controller=cfg(),
        record_servers=True,
    )
    starts = [e for e in r.replica_events if e.kind == "start"]
    assert len(starts) == 5
    assert all(e.time == 5.0 for e in starts)
    # Initial replicas cached every stage on the first server, which has room for three
    # more (8 GPUs, one llama stage per GPU): three starts there, two cold ones elsewhere.
    # The first server's templates each keep one warmed child (sim/prefork_pool.py): the
    # three are handed over (prefork).
    assert r.starts_by_tier == {"cold": 2, "prefork": 3}
    assert r.served_by is not None
    for ev in starts:
        stage = next(s for s in pipe.stages if s.name == ev.stage)
        gpu = next(s.gpu for s in cluster.servers if s.name == ev.server)
        assert ev.tier is not None
        expect = cluster.delays.seconds(ev.tier, stage.size_gib, gpu, stage.service_s / gpu.speed)
        if ev.tier is StartTier.PREFORK:  # a warmed child: the handover and the h2d copy
            expect = HANDOVER_S + stage.size_gib / gpu.h2d_gib_per_s
        assert ev.seconds == pytest.approx(expect)
        mine = r.served_by[stage.index] == ev.handle
        assert mine.any()
        first = float(np.nanmin(r.stage_start[stage.index, mine]))
        assert first >= 5.0 + ev.seconds - 1e-12
    stage0 = pipe.stages[0]
    ev0 = next(e for e in starts if e.stage == stage0.name)
    first0 = np.nanmin(r.stage_start[0, r.served_by[0] == ev0.handle])
    assert first0 == pytest.approx(5.0 + ev0.seconds)  # a queue was waiting for it


def _slow_stage_pipeline() -> SimPipeline:
    stage = SimStage(
        name="slow", index=0, service_s=2.0, max_concurrency=1, min_replicas=2, max_replicas=2
    )
    return SimPipeline("slow-pipe", "synthetic", "TEST-1", (stage,), slo_p99_s=10.0)


def test_scale_down_drains_in_flight_work() -> None:
    arr = np.arange(0.0, 12.0, 0.5)
    r = simulate(
        _slow_stage_pipeline(),
        cluster_preset("small"),
        Schedule([(0.0, 2), (5.0, 1)]),
        arr,
        controller=cfg(),
        record_servers=True,
    )
    drains = [e for e in r.replica_events if e.kind == "drain"]
    leaves = [e for e in r.replica_events if e.kind == "leave"]
    assert len(drains) == 1 and drains[0].time == 5.0
    assert len(leaves) == 1 and leaves[0].handle == drains[0].handle
    assert r.served_by is not None
    mine = r.served_by[0] == drains[0].handle
    assert np.all(r.stage_start[0, mine] < 5.0)  # nothing new after the drain
    last = float(np.nanmax(r.stage_finish[0, mine]))
    assert last > 5.0  # it had a visit in flight at the drain...
    assert leaves[0].time == pytest.approx(last)  # ...and left when that visit finished
    assert r.completed == arr.size
    # Replica time: two replicas to the drained one's exit, one to the end; a CPU-only
    # stage holds no GPU.
    assert r.replica_seconds == pytest.approx(last + r.end_s)
    assert r.gpu_seconds == 0.0


def test_cluster_that_cannot_hold_the_pipeline_is_refused_with_numbers() -> None:
    pipe = pipeline_preset("bert-21b-me-21")
    with pytest.raises(SimulationError) as exc:
        simulate(pipe, cluster_preset("small"), Hold(), poisson(10, 100, 1))
    msg = str(exc.value)
    assert "8 GPUs" in msg and "21 stages" in msg and "anti-affinity" in msg
    assert "GiB" in msg


def test_runs_that_are_too_large_are_refused_before_starting() -> None:
    pipe = pipeline_preset("bert-21b-me-21")
    with pytest.raises(SimulationError, match=r"1000 requests x 21 stages = 21,000"):
        simulate(pipe, cluster_preset("paper"), Hold(), np.arange(1000.0), max_stage_visits=20_000)


def test_progress_callback_reports_advancing_time() -> None:
    calls: list[tuple[float, int, int]] = []
    pipe = pipeline_preset("whisper-time-3")
    arr = poisson(20.0, 500, 4)
    r = simulate(
        pipe,
        cluster_preset("small"),
        Hold(),
        arr,
        progress=lambda t, done, total: calls.append((t, done, total)),
    )
    assert len(calls) == r.snapshots_taken
    times = [c[0] for c in calls]
    assert times == sorted(times) and calls[-1][1:] == (500, 500)


def test_policy_scaling_out_lowers_latency_under_overload() -> None:
    pipe = replace(pipeline_preset("whisper-time-3"), slo_p99_s=0.5)
    arr = poisson(150.0, 9000, 6)  # needs ~2-3 replicas per stage
    small = cluster_preset("small")  # 8 exclusive GPUs: too few for ~9 replicas
    roomy = replace(small, servers=tuple(replace(s, gpus=8) for s in small.servers))
    held = simulate(pipe, roomy, Hold(), arr, controller=cfg())
    scaled = simulate(pipe, roomy, RateRule(), arr, controller=cfg())
    assert scaled.slo_attainment() > held.slo_attainment() + 0.2
    assert scaled.gpu_seconds > held.gpu_seconds
    assert scaled.starts_by_tier.get("fork", 0) > 0
    assert scaled.replica_events[0].tier is None  # initial replicas are not starts
    assert StartTier.FORK.value in summary_table([scaled])


def test_quart_placer_plugs_in_and_prefers_fork_starts() -> None:
    pipe = pipeline_preset("llama-7b-me-5")
    arr = poisson(400.0, 4000, 9)
    policy = Schedule([(0.0, 1), (5.0, 2)])
    placer = ControlPlacer(get_placer("quart"), pipe)
    r = simulate(pipe, cluster_preset("paper"), policy, arr, controller=cfg(), placer=placer)
    # First fit runs out of GPUs on the caching server after three starts (see above);
    # the cache-aware placer shares GPUs there instead of loading cold elsewhere.
    # (each template's one warmed child is handed over; the second start of a stage on a
    # server takes the refill child, still warming: a fork)
    assert set(r.starts_by_tier) <= {"prefork", "fork"} and r.starts_by_tier.get("prefork")
    assert all(e.error == "" for e in r.scale_events)
    cache_first = simulate(
        pipe, cluster_preset("paper"), policy, arr, controller=cfg(), placer=CacheFirstPlacer()
    )
    assert cache_first.starts_by_tier == {"cold": 2, "prefork": 3}  # anti-affinity still binds

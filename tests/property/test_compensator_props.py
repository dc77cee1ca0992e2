"""Invariants of the CPU Compensator over random tick sequences (Hypothesis)."""

from __future__ import annotations

from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.control.compensator import (
    CompensatorConfig,
    CompensatorState,
    CpuCompensator,
    Phase,
    StageCpuState,
    compensate,
)
from quartfaas.control.policy import Decision, StageDecision
from quartfaas.control.snapshot import LatencyStats, make_snapshot, make_stage


@dataclass(frozen=True)
class Tick:
    dt: float
    replicas: int
    p99: float | None
    util: float | None


ticks = st.lists(
    st.builds(
        Tick,
        dt=st.floats(0.0, 40.0),
        replicas=st.integers(0, 8),
        p99=st.none() | st.floats(0.01, 5.0),
        util=st.none() | st.floats(0.0, 1.3),
    ),
    min_size=1,
    max_size=60,
)
configs = st.builds(
    CompensatorConfig,
    min_cpu=st.sampled_from([0.5, 1.0, 2.0]),
    max_cpu=st.sampled_from([2.0, 4.0, 16.0]),
    host_cores=st.none() | st.sampled_from([2.0, 8.0, 64.0]),
    settle_s=st.sampled_from([1.0, 10.0, 30.0]),
    max_steps=st.integers(1, 6),
    release_after_s=st.sampled_from([0.0, 20.0, 60.0]),
    stop_increment=st.sampled_from([0.0, 0.1]),
)


@settings(max_examples=300, deadline=None)
@given(cfg=configs, seq=ticks, budget=st.none() | st.floats(0.05, 2.0))
def test_state_machine_invariants(
    cfg: CompensatorConfig, seq: list[Tick], budget: float | None
) -> None:
    now, replicas, cpu = 0.0, 4, 1.0
    state = StageCpuState()
    last_raise_at: float | None = None
    for t in seq:
        now += t.dt
        lat = LatencyStats(count=50, p50_s=t.p99, p95_s=t.p99, p99_s=t.p99) if t.p99 else None
        snap = make_stage(
            ready_replicas=replicas,
            cpu_per_replica=cpu,
            cpu_utilisation=t.util,
            latency=lat or LatencyStats(),
        )
        before = state
        target, why, state = compensate(
            snap, budget, replicas, state, now, cfg, new_replicas=t.replicas
        )
        # Bounds: never outside [min_cpu, min(max_cpu, host cores)] ...
        if target is not None:
            assert cfg.min_cpu - 1e-9 <= target <= cfg.cap_cpu + 1e-9
        # ... a reason on every change ...
        if target is not None and abs(target - cpu) > 1e-12:
            assert why
        # ... at most max_steps raises per episode ...
        assert state.steps <= cfg.max_steps
        # ... and a raise within an episode only after the previous one settled.
        raised_again = (
            before.phase is Phase.RAISING
            and state.phase is Phase.RAISING
            and state.steps == before.steps + 1
        )
        if raised_again:
            assert last_raise_at is not None and now - last_raise_at >= cfg.settle_s - 1e-9
        if state.phase is Phase.RAISING and state.since == now:
            last_raise_at = now
        if state.phase is Phase.IDLE:
            assert state == StageCpuState() or state is before
        if target is not None:
            cpu = target
        replicas = t.replicas


@settings(max_examples=100, deadline=None)
@given(
    max_steps=st.integers(1, 8),
    gains=st.lists(st.floats(0.06, 0.5), min_size=10, max_size=10),
)
def test_raising_stops_after_max_steps(max_steps: int, gains: list[float]) -> None:
    cfg = CompensatorConfig(max_cpu=1024, host_cores=None, max_steps=max_steps, stop_increment=0)
    latency, now = 10.0, 0.0
    lat = LatencyStats(count=50, p99_s=latency)
    snap = make_stage(ready_replicas=8, latency=lat)
    target, _, state = compensate(snap, 0.01, 8, StageCpuState(), now, cfg, new_replicas=1)
    raises = 1
    for g in gains:
        now += cfg.settle_s
        latency *= 1 - g  # every raise pays more than 5 %; the budget is never met
        snap = make_stage(
            ready_replicas=1,
            cpu_per_replica=target or 1.0,
            latency=LatencyStats(count=50, p99_s=latency),
        )
        new, _, state = compensate(snap, 0.01, 1, state, now, cfg)
        if new is not None and target is not None and new > target:
            raises += 1
        target = new
    assert raises == max_steps
    assert state.phase is Phase.HOLDING and state.outcome == "max-steps"


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(
        st.tuples(st.integers(0, 8), st.integers(0, 8), st.none() | st.floats(0.01, 3.0)),
        min_size=3,
        max_size=3,
    ),
    utils=st.lists(st.none() | st.floats(0, 1.2), min_size=3, max_size=3),
    hold=st.booleans(),
    now=st.floats(0, 1e4),
)
def test_apply_never_changes_replica_counts(
    rows: list[tuple[int, int, float | None]], utils: list[float | None], hold: bool, now: float
) -> None:
    stages = tuple(
        make_stage(
            f"s{i}",
            i,
            ready_replicas=cur,
            cpu_utilisation=u,
            latency=LatencyStats(count=50, p99_s=p) if p else LatencyStats(),
        )
        for i, ((cur, _, p), u) in enumerate(zip(rows, utils, strict=True))
    )
    snap = make_snapshot(now=now, stages=stages)
    decision = Decision(
        now=now,
        policy="x",
        hold=hold,
        stages=tuple(StageDecision(f"s{i}", cur, new, "r") for i, (cur, new, _) in enumerate(rows)),
    )
    comp = CpuCompensator(CompensatorConfig(host_cores=8))
    out, state = comp.apply(decision, snap, {"s0": 0.2, "s1": 0.5}, CompensatorState())
    assert [(d.stage, d.current, d.replicas) for d in out.stages] == [
        (d.stage, d.current, d.replicas) for d in decision.stages
    ]
    assert out.hold == decision.hold and out.now == decision.now
    for d in out.stages:
        if d.cpu_per_replica is not None:
            assert 1.0 <= d.cpu_per_replica <= 8.0
            assert d.reason != "r"
    assert isinstance(state, CompensatorState)

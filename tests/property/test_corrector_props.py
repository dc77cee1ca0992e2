"""Invariants of the Replica Corrector (control/corrector/corrector.py), checked with Hypothesis.

Random pipelines of 1-4 stages, a random history tick to give the corrector state, then:
targets stay within each stage's bounds; more load (arrival rate or queue) or a slower
tail never gives fewer replicas from the same state; no-data always holds; cooldowns and
the downscale delay are measured in seconds; a restart never scales down on its first tick.
"""

from __future__ import annotations

from dataclasses import replace

from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import CorrectorState, ReplicaCorrector
from quartfaas.control.policy import Action
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, StageSnapshot, make_stage

CFG = ControllerConfig.model_validate({})
COR = ReplicaCorrector(CFG)

opt_pos = st.none() | st.floats(min_value=0.001, max_value=2.0)


@st.composite
def stages(draw: st.DrawFn, index: int) -> StageSnapshot:
    lo = draw(st.integers(min_value=0, max_value=4))
    hi = draw(st.integers(min_value=max(lo, 1), max_value=32))
    p99 = draw(st.none() | st.floats(min_value=0.001, max_value=20.0))
    return make_stage(
        f"s{index}",
        index,
        min_replicas=lo,
        max_replicas=hi,
        max_concurrency=draw(st.integers(min_value=1, max_value=4)),
        ready_replicas=draw(st.integers(min_value=0, max_value=40)),
        starting_replicas=draw(st.integers(min_value=0, max_value=3)),
        queue_len=draw(st.integers(min_value=0, max_value=200)),
        in_flight=draw(st.integers(min_value=0, max_value=8)),
        arrival_rate=draw(st.floats(min_value=0.0, max_value=500.0)),
        arrival_cv=draw(st.none() | st.floats(min_value=0.0, max_value=3.0)),
        departure_rate=draw(st.none() | st.floats(min_value=0.0, max_value=500.0)),
        service_mean_s=draw(opt_pos),
        service_scv=draw(st.none() | st.floats(min_value=0.0, max_value=4.0)),
        latency=LatencyStats() if p99 is None else LatencyStats(count=100, p99_s=p99),
    )


@st.composite
def pipelines(draw: st.DrawFn) -> PipelineSnapshot:
    n = draw(st.integers(min_value=1, max_value=4))
    return PipelineSnapshot(
        now=draw(st.floats(min_value=0.0, max_value=1e5)),
        pipeline="p",
        slo_p99_s=draw(st.floats(min_value=0.05, max_value=20.0)),
        stages=tuple(draw(stages(i)) for i in range(n)),
        source="test",
    )


@st.composite
def histories(draw: st.DrawFn) -> tuple[PipelineSnapshot, CorrectorState]:
    """A snapshot at ``now`` and the state after one earlier tick (or a restart)."""
    before = draw(pipelines())
    state = COR.initial_state(before) if draw(st.booleans()) else CorrectorState()
    _, state = COR.decide(before, state)
    now = before.now + draw(st.floats(min_value=0.0, max_value=120.0))
    current = draw(pipelines())
    current = replace(
        current,
        now=now,
        stages=tuple(
            replace(s, name=b.name) for s, b in zip(current.stages, before.stages, strict=False)
        ),
    )
    return current, state


@settings(max_examples=150, deadline=None)
@given(histories())
def test_targets_stay_within_stage_bounds(case: tuple[PipelineSnapshot, CorrectorState]) -> None:
    snap, state = case
    decision, _ = COR.decide(snap, state)
    assert not decision.hold
    for s, d in zip(snap.stages, decision.stages, strict=True):
        assert d.reason
        assert s.min_replicas <= d.replicas <= max(s.min_replicas, s.max_replicas), d.reason


@settings(max_examples=150, deadline=None)
@given(
    histories(),
    st.floats(min_value=0.0, max_value=500.0),
    st.integers(min_value=0, max_value=200),
    st.none() | st.floats(min_value=0.001, max_value=20.0),
)
def test_more_load_or_a_slower_tail_never_gives_fewer_replicas(
    case: tuple[PipelineSnapshot, CorrectorState],
    extra_lam: float,
    extra_q: int,
    slower: float | None,
) -> None:
    snap, state = case
    heavier = []
    for s in snap.stages:
        p99 = s.latency.p99_s
        if p99 is not None and slower is not None:
            p99 += slower
        heavier.append(
            replace(
                s,
                arrival_rate=(s.arrival_rate or 0.0) + extra_lam,
                queue_len=s.queue_len + extra_q,
                latency=replace(s.latency, p99_s=p99),
            )
        )
    light, _ = COR.decide(snap, state)
    heavy, _ = COR.decide(replace(snap, stages=tuple(heavier)), state)
    for a, b in zip(light.stages, heavy.stages, strict=True):
        assert a.replicas <= b.replicas, (a.reason, b.reason)


@settings(max_examples=100, deadline=None)
@given(histories(), st.booleans(), st.floats(min_value=0.001, max_value=1e4))
def test_no_data_always_holds(
    case: tuple[PipelineSnapshot, CorrectorState], missing: bool, extra_age: float
) -> None:
    snap, state = case
    age = None if missing else CFG.stale_after_s + extra_age
    decision, nxt = COR.decide(replace(snap, data_age_s=age), state)
    assert decision.hold and decision.reason.startswith("no-data")
    assert all(d.replicas == d.current for d in decision.stages)
    # Only the downscale delays restart (time without data is not "low load" time).
    assert [s.pid for s in nxt.stages] == [s.pid for s in state.stages]
    assert all(s.guard.below_since_s is None for s in nxt.stages)


@settings(max_examples=150, deadline=None)
@given(histories(), st.floats(min_value=0.0, max_value=200.0))
def test_cooldowns_are_durations(case: tuple[PipelineSnapshot, CorrectorState], gap: float) -> None:
    snap, state = case
    first, state = COR.decide(snap, state)
    later = replace(snap, now=snap.now + gap)
    # The backend did what was asked: the next snapshot shows the new counts as starting.
    applied = tuple(
        replace(s, ready_replicas=0, starting_replicas=d.replicas)
        for s, d in zip(snap.stages, first.stages, strict=True)
    )
    second, _ = COR.decide(replace(later, stages=applied), state)
    for s, a, b in zip(snap.stages, first.stages, second.stages, strict=True):
        inside = s.min_replicas <= b.current <= max(s.min_replicas, s.max_replicas)
        if a.action is Action.UP and gap < CFG.up_cooldown_s and inside:
            assert b.action is not Action.UP, b.reason
        if a.action is not Action.HOLD and gap < CFG.down_cooldown_s and inside:
            assert b.action is not Action.DOWN, b.reason


@settings(max_examples=150, deadline=None)
@given(pipelines())
def test_a_restart_never_scales_down_on_its_first_tick(snap: PipelineSnapshot) -> None:
    decision, _ = COR.decide(snap, COR.initial_state(snap))
    for s, d in zip(snap.stages, decision.stages, strict=True):
        if d.current <= max(s.min_replicas, s.max_replicas):  # bounds may force it
            assert d.action is not Action.DOWN, d.reason

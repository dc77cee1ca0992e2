"""Property tests of the baseline policies: bounds, monotonicity, purity, periods."""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.control.baselines import BASELINES, make_policy
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot, make_snapshot, make_stage

NAMES = sorted(BASELINES)
# Overrides that make a single decision react (no delay), for the monotonicity property.
REACTIVE: dict[str, dict[str, Any]] = {
    "hpa": {},
    "knative": {},
    "ray": {"upscale_delay_s": 0.0, "downscale_delay_s": 0.0},
    "openfaas-pro": {"scale_type": "capacity", "target": 2.0},
    "uniform": {},
}


@st.composite
def stage(draw: st.DrawFn, i: int, load: float | None = None) -> StageSnapshot:
    lo = draw(st.integers(1, 3))
    hi = draw(st.integers(lo, 12))
    ready = draw(st.integers(lo, hi))
    starting = draw(st.integers(0, hi - ready))
    lam = load if load is not None else draw(st.floats(0, 200))
    known = draw(st.booleans()) or load is not None
    return make_stage(
        f"s{i}",
        i,
        min_replicas=lo,
        max_replicas=hi,
        max_concurrency=draw(st.integers(1, 4)),
        ready_replicas=ready,
        starting_replicas=starting,
        queue_len=draw(st.integers(0, 300)),
        in_flight=draw(st.integers(0, 20)),
        arrival_rate=lam if known else None,
        departure_rate=lam if known else None,
        service_mean_s=draw(st.floats(0.001, 2.0)) if known else None,
        cpu_utilisation=draw(st.floats(0, 2)) if known else None,
    )


@st.composite
def snapshots(draw: st.DrawFn, now: float) -> PipelineSnapshot:
    n = draw(st.integers(1, 4))
    return make_snapshot(now=now, stages=tuple(draw(stage(i)) for i in range(n)))


@st.composite
def reload(draw: st.DrawFn, old: StageSnapshot) -> StageSnapshot:
    """The same stage (bounds, replicas) with a new, possibly unknown, load."""
    known = draw(st.booleans())
    lam = draw(st.floats(0, 200))
    return replace(
        old,
        queue_len=draw(st.integers(0, 300)),
        in_flight=draw(st.integers(0, 20)),
        arrival_rate=lam if known else None,
        departure_rate=lam if known else None,
        service_mean_s=draw(st.floats(0.001, 2.0)) if known else None,
        cpu_utilisation=draw(st.floats(0, 2)) if known else None,
    )


@settings(max_examples=40, deadline=None)
@given(name=st.sampled_from(NAMES), data=st.data(), steps=st.integers(1, 40))
def test_decisions_stay_within_bounds(name: str, data: st.DataObject, steps: int) -> None:
    policy = make_policy(name)
    t = 0.0
    snap = data.draw(snapshots(t))
    state = policy.initial_state(snap)
    for _ in range(steps):
        d, state = policy.decide(snap, state)
        for s, sd in zip(snap.stages, d.stages, strict=True):
            assert sd.stage == s.name
            assert s.min_replicas <= sd.replicas <= s.max_replicas, (name, sd)
            assert sd.reason
        t += data.draw(st.sampled_from([0.5, 1.0, 1.0, 3.0, 15.0, 61.0]))
        stages = tuple(data.draw(reload(old)) for old in snap.stages)
        snap = make_snapshot(now=t, stages=stages)


@settings(max_examples=60, deadline=None)
@given(
    name=st.sampled_from(sorted(REACTIVE)),
    ready=st.integers(1, 6),
    lam=st.floats(0, 100),
    more=st.floats(0, 100),
    mean=st.floats(0.01, 1.0),
)
def test_more_load_never_fewer_replicas(
    name: str, ready: int, lam: float, more: float, mean: float
) -> None:
    policy = make_policy(name, **REACTIVE[name])

    def one(load: float) -> int:
        s = make_snapshot(
            1,
            now=0.0,
            min_replicas=1,
            max_replicas=50,
            ready_replicas=ready,
            arrival_rate=load,
            departure_rate=load,
            service_mean_s=mean,
            in_flight=math.floor(load * mean),
            queue_len=math.floor(load),
        )
        d, _ = policy.decide(s, policy.initial_state(s))
        return d.stages[0].replicas

    assert one(lam + more) >= one(lam)


@settings(max_examples=30, deadline=None)
@given(name=st.sampled_from(NAMES), data=st.data())
def test_decide_is_pure(name: str, data: st.DataObject) -> None:
    policy = make_policy(name)
    snap = data.draw(snapshots(0.0))
    state = policy.initial_state(snap)
    a = policy.decide(snap, state)
    b = policy.decide(snap, state)
    assert a == b


@settings(max_examples=30, deadline=None)
@given(
    period_name=st.sampled_from([("hpa", 15.0), ("knative", 2.0), ("uniform", 3.0)]),
    jitter=st.lists(st.floats(0.9, 1.1), min_size=20, max_size=120),
)
def test_evaluations_follow_the_real_period(
    period_name: tuple[str, float], jitter: list[float]
) -> None:
    name, period = period_name
    policy = make_policy(name)
    t, state, evaluations = 0.0, None, 0
    for dt in jitter:
        s = make_snapshot(
            2,
            now=t,
            min_replicas=1,
            max_replicas=9,
            ready_replicas=2,
            arrival_rate=3.0,
            service_mean_s=0.5,
            in_flight=1,
        )
        state = state or policy.initial_state(s)
        d, state = policy.decide(s, state)
        evaluations += not d.hold
        last = t
        t += dt
    assert evaluations <= math.floor(last / period + 1e-9) + 1
    assert evaluations >= math.floor(last / period) - 1

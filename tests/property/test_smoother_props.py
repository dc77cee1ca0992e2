"""Invariants of the Pipeline Smoother (control/smoother/smoother.py), checked with Hypothesis.

Random pipelines of 1-6 stages, the Replica Corrector's real targets for them, random CV
predictions and smoother settings, then: every count stays within the stage's bounds and
not below the floor the corrector left it at; a critical stage never ends below its
corrector target; without a budget the smoother never goes below ``min(current, target)``
(it does not bypass the corrector's downscale guards) and never raises past
``current + max_step_up``; with a budget the total fits unless only critical targets are
left; every changed stage carries a smoother reason. And for the pure rules: β stays in
``[α, 1)``, smoothing lands between a stage's own count and its neighbours' mean.
"""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import ReplicaCorrector
from quartfaas.control.smoother import (
    PipelineSmoother,
    SmootherConfig,
    beta,
    smooth_headroom,
    smooth_replicas,
)
from quartfaas.control.smoother.propagation import CvPrediction
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, StageSnapshot, make_stage

# A small step limit, so that the "never past current + max_step_up" rule is exercised.
CFG = ControllerConfig.model_validate({"max_step_up": 2})
COR = ReplicaCorrector(CFG)


@st.composite
def stages(draw: st.DrawFn, index: int) -> StageSnapshot:
    lo = draw(st.integers(min_value=0, max_value=3))
    hi = draw(st.integers(min_value=max(lo, 1), max_value=16))
    p99 = draw(st.none() | st.floats(min_value=0.001, max_value=5.0))
    return make_stage(
        f"s{index}",
        index,
        min_replicas=lo,
        max_replicas=hi,
        max_concurrency=draw(st.integers(min_value=1, max_value=3)),
        ready_replicas=draw(st.integers(min_value=0, max_value=hi + 2)),
        starting_replicas=draw(st.integers(min_value=0, max_value=2)),
        queue_len=draw(st.integers(min_value=0, max_value=50)),
        arrival_rate=draw(st.floats(min_value=0.0, max_value=200.0)),
        arrival_cv=draw(st.none() | st.floats(min_value=0.0, max_value=8.0)),
        service_mean_s=draw(st.none() | st.floats(min_value=0.001, max_value=0.5)),
        service_scv=draw(st.none() | st.floats(min_value=0.0, max_value=3.0)),
        latency=LatencyStats() if p99 is None else LatencyStats(count=100, p99_s=p99),
    )


@st.composite
def cases(draw: st.DrawFn):
    n = draw(st.integers(min_value=1, max_value=6))
    snap = PipelineSnapshot(
        now=draw(st.floats(min_value=0.0, max_value=1e4)),
        pipeline="p",
        slo_p99_s=draw(st.floats(min_value=0.05, max_value=10.0)),
        stages=tuple(draw(stages(i)) for i in range(n)),
        source="test",
    )
    targets, _ = COR.targets(snap, COR.initial_state(snap))
    preds = [
        CvPrediction(
            s.name,
            draw(st.floats(min_value=0.05, max_value=20.0)),
            draw(st.none() | st.floats(min_value=0.0, max_value=400.0)),
            "qna",
            "random",
        )
        for s in snap.stages
    ]
    sc = SmootherConfig(
        alpha=draw(st.floats(min_value=0.0, max_value=1.0)),
        theta=draw(st.floats(min_value=0.1, max_value=4.0)),
        neighbour=draw(st.sampled_from(["headroom", "counts", "off"])),
        preprovision=draw(st.booleans()),
        replica_budget=draw(st.none() | st.integers(min_value=1, max_value=40)),
    )
    return snap, targets, preds, sc


@settings(max_examples=300, deadline=None)
@given(cases())
def test_smoother_invariants(case):
    snap, targets, preds, sc = case
    out = PipelineSmoother(CFG, sc).smooth(snap, targets, preds)
    assert len(out.stages) == len(targets.stages)
    for s, before, after in zip(snap.stages, targets.stages, out.stages, strict=True):
        assert after.stage == before.stage == s.name
        hi = max(s.min_replicas, s.max_replicas)
        if s.min_replicas <= before.target <= hi:
            assert s.min_replicas <= after.target <= hi
        # the floor holds unless the corrector itself went below it
        assert after.target >= min(sc.floor, before.target)
        if before.critical:
            assert after.target >= before.target
        if sc.replica_budget is None:
            assert after.target >= min(before.current, before.target, hi)
            assert after.target <= max(before.target, before.current + CFG.max_step_up)
        if after.target != before.target:
            assert "smoother:" in after.reason and after.reason.startswith(before.reason)
        else:
            assert after.reason == before.reason or "smoother:" in after.reason
    if sc.replica_budget is not None:
        total = sum(t.target for t in out.stages)
        floor_total = sum(
            max(min(s.min_replicas, t.target), t.target if t.critical else 0)
            for s, t in zip(snap.stages, targets.stages, strict=True)
        )
        assert total <= max(sc.replica_budget, floor_total, sum(t.target for t in targets.stages))
        if total > sc.replica_budget:
            assert "exceeded" in out.reason


@settings(max_examples=300, deadline=None)
@given(cases())
def test_without_a_budget_only_smoothing_lowers_and_only_toward_neighbours(case):
    snap, targets, preds, sc = case
    sc = sc.model_copy(update={"replica_budget": None, "neighbour": "off"})
    out = PipelineSmoother(CFG, sc).smooth(snap, targets, preds)
    # pre-provisioning alone never lowers anything
    assert all(a.target >= b.target for a, b in zip(out.stages, targets.stages, strict=True))


@given(st.floats(min_value=0.0, max_value=1e3), st.floats(0.0, 1.0), st.floats(0.01, 100.0))
def test_beta_in_alpha_to_one(cv, alpha, theta):
    b = beta(cv, alpha, theta)
    assert alpha - 1e-12 <= b <= 1.0
    assert b >= beta(cv / 2, alpha, theta) - 1e-12  # more CV, more weight on itself


counts = st.lists(st.integers(min_value=0, max_value=64), min_size=1, max_size=12)


@given(counts, st.data())
def test_smoothed_count_lies_between_own_and_neighbour_mean(r, data):
    cvs = data.draw(st.lists(st.floats(0.0, 20.0), min_size=len(r), max_size=len(r)))
    out = smooth_replicas(r, cvs, floor=0)
    for i, v in enumerate(out):
        nb = [r[j] for j in (i - 1, i + 1) if 0 <= j < len(r)]
        if not nb:
            assert v == r[i]
            continue
        m = sum(nb) / len(nb)
        assert math.floor(min(r[i], m)) <= v <= math.ceil(max(r[i], m))


@given(counts, st.data())
def test_floor_bounds_and_critical(r, data):
    n = len(r)
    cvs = data.draw(st.lists(st.floats(0.0, 20.0), min_size=n, max_size=n))
    crit = data.draw(st.lists(st.booleans(), min_size=n, max_size=n))
    lo = data.draw(st.lists(st.integers(0, 8), min_size=n, max_size=n))
    bounds = [(a, a + data.draw(st.integers(0, 40))) for a in lo]
    floor = data.draw(st.integers(0, 3))
    out = smooth_replicas(r, cvs, floor=floor, critical=crit, bounds=bounds)
    for v, x, c, (a, b) in zip(out, r, crit, bounds, strict=True):
        assert a <= v <= b
        if n > 1 and a <= floor <= b:
            assert v >= floor
        if c and x <= b:
            assert v >= x


@given(counts, st.integers(1, 16), st.data())
def test_headroom_with_equal_needs_is_the_count_rule(r, need, data):
    cvs = data.draw(st.lists(st.floats(0.0, 20.0), min_size=len(r), max_size=len(r)))
    a = smooth_headroom(r, [need] * len(r), cvs)
    b = smooth_replicas(r, cvs)
    # the same arithmetic up to float rounding at exact halves
    assert all(abs(x - y) <= 1 for x, y in zip(a, b, strict=True))

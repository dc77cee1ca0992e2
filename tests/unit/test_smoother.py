"""Pipeline Smoother: the prototype's β and smoothing rule, pre-provisioning, guards, budget."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import CorrectorTargets, ReplicaCorrector, StageTarget
from quartfaas.control.corrector.queueing import replicas_for_slo
from quartfaas.control.smoother import (
    PipelineSmoother,
    SmootherConfig,
    beta,
    smooth_headroom,
    smooth_replicas,
)
from quartfaas.control.smoother.propagation import CvPrediction, QnaPredictor
from quartfaas.control.snapshot import LatencyStats, make_snapshot, make_stage

# -- β and the prototype's rule -----------------------------------------------------------


@pytest.mark.parametrize(
    ("cv", "expected"), [(0, 0.634), (0.5, 0.689), (1, 0.75), (2, 0.866), (4, 0.976)]
)
def test_beta_matches_the_prototypes_computed_values(cv, expected):
    assert round(beta(cv), 3) == expected


def test_beta_range_and_monotone():
    values = [beta(cv / 10) for cv in range(0, 200)]
    assert values == sorted(values)
    assert min(values) > 0.5 and max(values) < 1.0
    assert beta(0.0, alpha=0.0) == pytest.approx(1 / (1 + 2.718281828459045))
    assert beta(2.0, theta=2.0) == pytest.approx(0.75)


def test_smooth_replicas_is_the_prototype_rule():
    # s0: round(0.634*2 + 0.366*8) = round(4.2) = 4; s1: round(0.976*8 + 0.024*2) = 8;
    # s2 uses s1's *input* count 8, not its smoothed value.
    assert smooth_replicas([2, 8, 2], [0.0, 4.0, 0.0]) == (4, 8, 4)
    r = [3, 5, 1, 7]
    cvs = [0.5, 1.0, 2.0, 0.0]
    expect = []
    for i, x in enumerate(r):
        nb = [r[j] for j in (i - 1, i + 1) if 0 <= j < len(r)]
        b = beta(cvs[i])
        expect.append(max(1, int(b * x + (1 - b) * sum(nb) / len(nb) + 0.5)))
    assert smooth_replicas(r, cvs) == tuple(expect)


def test_smooth_replicas_floor_half_up_and_single_stage():
    assert smooth_replicas([1, 0, 1], [0.0, 0.0, 0.0]) == (1, 1, 1)  # 0.37 -> floor 1
    assert smooth_replicas([1, 0, 1], [0.0, 0.0, 0.0], floor=0)[1] == 0
    assert smooth_replicas([1, 3], [1.0, 50.0])[0] == 2  # 0.75*1 + 0.25*3 = 1.5 -> 2
    assert smooth_replicas([5], [0.0]) == (5,)
    with pytest.raises(ValueError, match="CVs"):
        smooth_replicas([1, 2], [1.0])


def test_smooth_replicas_never_lowers_a_critical_stage_and_keeps_bounds():
    assert smooth_replicas([8, 2, 8], [0.0, 0.0, 0.0])[0] == 6
    assert smooth_replicas([8, 2, 8], [0.0] * 3, critical=[True, False, False])[0] == 8
    out = smooth_replicas([2, 8, 2], [0.0, 4.0, 0.0], bounds=[(1, 3), (1, 8), (5, 8)])
    assert out == (3, 8, 5)


def test_headroom_keeps_unequal_stages_that_are_each_sized_right():
    # A heavy stage (8 needed) beside a light one (2 needed): counts smoothing would move
    # both; in headroom terms both are at 1.0 and nothing changes.
    assert smooth_replicas([8, 2], [0.0, 0.0]) != (8, 2)
    assert smooth_headroom([8, 2], [8, 2], [0.0, 0.0]) == (8, 2)
    # the tight light stage next to a stage with slack gets some
    assert smooth_headroom([16, 2], [8, 2], [4.0, 0.0]) == (16, 3)
    # unknown needs keep their counts
    assert smooth_headroom([5, 2], [None, 2], [0.0, 0.0])[0] == 5


def test_config_is_validated():
    with pytest.raises(ValidationError):
        SmootherConfig(alpha=1.5)
    with pytest.raises(ValidationError):
        SmootherConfig(neighbour="median")
    with pytest.raises(ValidationError):
        SmootherConfig(replica_budget=0)


# -- PipelineSmoother -----------------------------------------------------------------------


def _stage(i: int, **kw):
    base = dict(
        arrival_rate=20.0,
        arrival_cv=1.0,
        service_mean_s=0.05,
        service_scv=0.3,
        ready_replicas=1,
        max_concurrency=2,
        max_replicas=8,
        latency=LatencyStats(200, 0.08, 0.07, 0.12, 0.15),
    )
    base.update(kw)
    return make_stage(f"s{i}", i, **base)


def _pred(name: str, cv: float, rate: float | None = 20.0) -> CvPrediction:
    return CvPrediction(name, cv, rate, "qna", "test")


def _t(name, current, target, *, model=None, critical=False, budget=0.3):
    return StageTarget(name, current, target, target, "corrector", model, None, 0.0, budget,
                       0.1, critical, 0.0)  # fmt: skip


def test_burst_upstream_gives_replicas_before_it_arrives():
    cfg = ControllerConfig()
    snap = make_snapshot(
        slo_p99_s=0.6, stages=(_stage(0, arrival_cv=4.0, ready_replicas=2), _stage(1))
    )
    corrector = ReplicaCorrector(cfg)
    targets, _ = corrector.targets(snap, corrector.initial_state(snap))
    preds = QnaPredictor().predict(snap)
    assert preds[1].cv > 2.0
    out = PipelineSmoother(cfg).smooth(snap, targets, preds)
    before, after = targets.stages[1], out.stages[1]
    budget = before.budget_s
    need = replicas_for_slo(20.0, 20.0, preds[1].scv, 0.3, budget, 0.99, 2, max_util=0.8, c_max=8)
    assert before.model is not None and need.replicas is not None
    assert need.replicas > before.model
    assert after.target == before.target + need.replicas - before.model
    assert "before the burst arrives" in after.reason and after.reason.startswith(before.reason)
    assert out.stages[0] == targets.stages[0]  # nothing upstream of s0 to predict from
    assert "smoother changed 1" in out.reason


def test_no_raise_within_the_deadband_or_when_calmer():
    snap = make_snapshot(slo_p99_s=0.6, stages=(_stage(0), _stage(1)))
    targets = CorrectorTargets(0.0, (_t("s0", 1, 1, model=1), _t("s1", 1, 1, model=1)))
    sm = PipelineSmoother(smoother=SmootherConfig(neighbour="off"))
    for cv in (0.2, 1.0, 1.09):  # 1.09² < 1.2: inside the 20 % deadband
        out = sm.smooth(snap, targets, [_pred("s0", 1.0), _pred("s1", cv)])
        assert out.stages == targets.stages


def test_upstream_rate_rise_is_provisioned_for():
    snap = make_snapshot(slo_p99_s=0.6, stages=(_stage(0, arrival_rate=60.0), _stage(1)))
    targets = CorrectorTargets(0.0, (_t("s0", 2, 3, model=3), _t("s1", 1, 1, model=1)))
    sm = PipelineSmoother(smoother=SmootherConfig(neighbour="off"))
    out = sm.smooth(snap, targets, [_pred("s0", 1.0, 60.0), _pred("s1", 1.0, 60.0)])
    assert out.stages[1].target > 1 and "from upstream" in out.stages[1].reason


def test_raises_respect_max_replicas_and_max_step_up():
    cfg = ControllerConfig(max_step_up=2)
    snap = make_snapshot(
        slo_p99_s=0.6, stages=(_stage(0), _stage(1, arrival_rate=150.0, max_replicas=30))
    )
    targets = CorrectorTargets(0.0, (_t("s0", 1, 1, model=1), _t("s1", 1, 3, model=3)))
    sm = PipelineSmoother(cfg, SmootherConfig(neighbour="off"))
    out = sm.smooth(snap, targets, [_pred("s0", 1.0), _pred("s1", 8.0, 150.0)])
    assert out.stages[1].target == 3  # current 1 + max_step_up 2 (the corrector's 3 stands)
    snap = make_snapshot(
        slo_p99_s=0.6, stages=(_stage(0), _stage(1, arrival_rate=150.0, max_replicas=4))
    )
    out = PipelineSmoother(smoother=SmootherConfig(neighbour="off")).smooth(
        snap, targets, [_pred("s0", 1.0), _pred("s1", 8.0, 150.0)]
    )
    assert out.stages[1].target == 4


def test_neighbour_smoothing_raises_a_tight_calm_stage_and_says_why():
    snap = make_snapshot(slo_p99_s=0.9, stages=tuple(_stage(i) for i in range(3)))
    need = PipelineSmoother()._need(snap.stages[1], _t("s1", 1, 1, budget=0.3), _pred("s1", 0.0))
    assert need[0] == 1
    targets = CorrectorTargets(
        0.0, (_t("s0", 3, 3, model=1), _t("s1", 1, 1, model=1), _t("s2", 3, 3, model=1))
    )
    preds = [_pred("s0", 1.0), _pred("s1", 0.0), _pred("s2", 1.0)]
    out = PipelineSmoother().smooth(snap, targets, preds)
    # s1: headroom 1 between neighbours at 3: (0.634*1 + 0.366*3)*1 = 1.73 -> 2
    assert out.stages[1].target == 2
    assert "neighbour smoothing (headroom, β 0.63 at CV 0.00) 1->2" in out.stages[1].reason
    # the neighbours keep theirs (0.75*3 + 0.25*1 = 2.5 -> 3 half up; never below current)
    assert [s.target for s in (out.stages[0], out.stages[2])] == [3, 3]


def test_smoothing_never_lowers_critical_and_never_bypasses_downscale_guards():
    snap = make_snapshot(slo_p99_s=0.9, stages=tuple(_stage(i) for i in range(3)))
    preds = [_pred(f"s{i}", 0.0) for i in range(3)]
    sm = PipelineSmoother(smoother=SmootherConfig(neighbour="counts"))
    # s1 is well above its neighbours with CV 0: the rule would pull it to 3
    targets = CorrectorTargets(0.0, (_t("s0", 1, 1), _t("s1", 6, 6, critical=True), _t("s2", 1, 1)))
    assert sm.smooth(snap, targets, preds).stages[1].target == 6
    targets = CorrectorTargets(0.0, (_t("s0", 1, 1), _t("s1", 6, 6), _t("s2", 1, 1)))
    assert sm.smooth(snap, targets, preds).stages[1].target == 6  # current 6: no scale-down
    # a scale-up the corrector asked for may be trimmed, but not below current or need
    targets = CorrectorTargets(0.0, (_t("s0", 1, 1), _t("s1", 4, 6), _t("s2", 1, 1)))
    out = sm.smooth(snap, targets, preds)
    assert out.stages[1].target == 4 and "6->4" in out.stages[1].reason


def test_replica_budget_takes_from_over_provisioned_before_critical():
    snap = make_snapshot(
        slo_p99_s=0.9,
        stages=(
            _stage(0, arrival_rate=2.0, ready_replicas=6, max_concurrency=1),  # ρ 0.017
            _stage(1, arrival_rate=40.0, service_mean_s=0.1, ready_replicas=4, max_concurrency=1),
            _stage(2, arrival_rate=40.0, service_mean_s=0.02, ready_replicas=2, max_concurrency=1),
        ),
    )
    targets = CorrectorTargets(
        0.0,
        (_t("s0", 6, 6, model=2), _t("s1", 4, 8, model=8, critical=True), _t("s2", 2, 2, model=2)),
    )
    preds = [_pred(f"s{i}", 1.0, r) for i, r in enumerate((2.0, 2.0, 40.0))]
    sm = PipelineSmoother(smoother=SmootherConfig(neighbour="off", replica_budget=12))
    out = sm.smooth(snap, targets, preds)
    assert [s.target for s in out.stages] == [2, 8, 2]
    assert "replica budget 12 (total 16): -4 (over-provisioned)" in out.stages[0].reason
    assert out.stages[1] == targets.stages[1] and out.stages[2] == targets.stages[2]
    assert "took 4 from 1 stage(s)" in out.reason


def test_replica_budget_that_cannot_be_met_keeps_critical_targets():
    snap = make_snapshot(slo_p99_s=0.9, stages=(_stage(0), _stage(1)))
    targets = CorrectorTargets(0.0, (_t("s0", 4, 5, critical=True), _t("s1", 4, 5, critical=True)))
    sm = PipelineSmoother(smoother=SmootherConfig(neighbour="off", replica_budget=6))
    out = sm.smooth(snap, targets, [_pred("s0", 1.0), _pred("s1", 1.0)])
    assert [s.target for s in out.stages] == [5, 5]
    assert "exceeded by 4" in out.reason


def test_held_targets_pass_through():
    snap = make_snapshot(stages=(_stage(0), _stage(1)))
    held = CorrectorTargets(0.0, (_t("s0", 1, 1), _t("s1", 1, 1)), hold=True, reason="no-data")
    assert PipelineSmoother().smooth(snap, held, [_pred("s0", 9.0), _pred("s1", 9.0)]) is held


def test_mismatched_targets_are_a_bug():
    snap = make_snapshot(stages=(_stage(0), _stage(1)))
    with pytest.raises(ValueError, match="targets"):
        PipelineSmoother().smooth(snap, CorrectorTargets(0.0, (_t("s0", 1, 1),)), [])

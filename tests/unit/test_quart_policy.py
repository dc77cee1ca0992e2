"""QuartPolicy: corrector -> smoother -> compensator, its switches, and the policy registry."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from quartfaas.control.baselines import BASELINES
from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import ReplicaCorrector
from quartfaas.control.policy import Policy
from quartfaas.control.quart import QuartPolicy, QuartState, choose_predictor
from quartfaas.control.registry import make_policy, policy_names
from quartfaas.control.smoother.gat import METRICS_FILE, load_metrics
from quartfaas.control.smoother.propagation import QnaPredictor
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, make_stage
from quartfaas.errors import SpecError
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import SimPipeline, SimStage
from quartfaas.sim.run import simulate
from quartfaas.workload.synthetic import mmpp, mmpp_for

CFG = ControllerConfig()


def _snapshot(now: float, counts: dict[str, int], cvs: tuple[float, ...], **kw) -> PipelineSnapshot:
    stages = tuple(
        make_stage(
            f"s{i}",
            i,
            arrival_rate=20.0,
            arrival_cv=cv,
            departure_rate=20.0,
            service_mean_s=0.05,
            service_scv=0.3,
            ready_replicas=counts.get(f"s{i}", 1),
            max_concurrency=2,
            max_replicas=8,
            latency=LatencyStats(200, 0.08, 0.07, 0.11, 0.12),
            **kw,
        )
        for i, cv in enumerate(cvs)
    )
    return PipelineSnapshot(
        now=now, pipeline="p", slo_p99_s=0.9, stages=stages, window_s=10.0, source="test"
    )


def _burst_cvs(t: float) -> tuple[float, float, float]:
    """A burst reaches s0 at t=5, is measured at s1 from t=10 and at s2 from t=14."""
    return (4.0 if t >= 5 else 1.0, 3.0 if t >= 10 else 1.0, 2.5 if t >= 14 else 1.0)


def _run(policy: Policy, ticks: int = 20):
    """Drive ``policy`` through the scripted sequence; replicas become ready at once."""
    counts = {"s0": 1, "s1": 1, "s2": 1}
    state = None
    out = []
    for t in range(ticks):
        snap = _snapshot(float(t), counts, _burst_cvs(t))
        if state is None:
            state = policy.initial_state(snap)
        decision, state = policy.decide(snap, state)
        out.append(decision)
        counts = {d.stage: d.replicas for d in decision.stages}
    return out


def _first_up(decisions, stage: str) -> float | None:
    for d in decisions:
        if d.target(stage) > 1:
            return d.now
    return None


def test_a_stage_downstream_of_a_burst_gets_replicas_earlier_with_the_smoother():
    with_sm = _run(QuartPolicy(CFG, predictor="qna", compensator=False))
    without = _run(QuartPolicy(CFG, smoother=False, compensator=False))
    t_with, t_without = _first_up(with_sm, "s1"), _first_up(without, "s1")
    assert t_without == 10.0  # the corrector reacts when s1 measures the burst itself
    assert t_with == 5.0  # the smoother reacts when s0 measures it
    d = next(d for d in with_sm if d.now == t_with)
    reason = next(s.reason for s in d.stages if s.stage == "s1")
    assert "before the burst arrives" in reason and "predictor qna" in d.reason
    assert _first_up(with_sm, "s2") < _first_up(without, "s2")


def test_without_the_smoother_it_is_the_corrector():
    plain = _run(ReplicaCorrector(CFG))
    quart = _run(QuartPolicy(CFG, smoother=False, compensator=False))
    for a, b in zip(plain, quart, strict=True):
        assert [s.replicas for s in a.stages] == [s.replicas for s in b.stages]
        assert [s.reason for s in a.stages] == [s.reason for s in b.stages]
        assert b.policy == "quart" and "smoother off" in b.reason


def test_switches_come_from_the_config_and_can_be_overridden():
    off = QuartPolicy(CFG.model_copy(update={"smoother": False, "compensator": False}))
    assert not off.smoother_on and not off.compensator_on and off.predictor is None
    snap = _snapshot(0.0, {}, (1.0, 1.0, 1.0))
    state = off.initial_state(snap)
    assert isinstance(state, QuartState) and state.compensator is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.corrector = state.corrector  # type: ignore[misc]
    on = QuartPolicy(CFG.model_copy(update={"smoother": False}), smoother=True, predictor="qna")
    assert on.smoother_on and isinstance(on.predictor, QnaPredictor)


def test_compensator_is_applied_after_the_smoother():
    # A CPU-bound stage over its budget: the compensator raises its CPU in place.
    snap = _snapshot(0.0, {}, (1.0, 1.0, 1.0), cpu_utilisation=0.97)
    slow = dataclasses.replace(
        snap,
        stages=tuple(
            dataclasses.replace(s, latency=LatencyStats(200, 0.5, 0.4, 0.6, 0.7))
            for s in snap.stages
        ),
    )
    pol = QuartPolicy(CFG, predictor="qna")
    decision, state = pol.decide(slow, pol.initial_state(slow))
    assert all(d.cpu_per_replica is not None and d.cpu_per_replica > 1.0 for d in decision.stages)
    assert all("cpu" in d.reason for d in decision.stages)
    assert state.compensator is not None and state.compensator.stages
    off = QuartPolicy(CFG, predictor="qna", compensator=False)
    decision, _ = off.decide(slow, off.initial_state(slow))
    assert all(d.cpu_per_replica is None for d in decision.stages)


def test_no_data_holds_and_keeps_the_compensator_state():
    pol = QuartPolicy(CFG, predictor="qna")
    snap = dataclasses.replace(_snapshot(3.0, {}, (1.0, 1.0, 1.0)), data_age_s=None)
    state = pol.initial_state(snap)
    decision, nxt = pol.decide(snap, state)
    assert decision.hold and "no-data" in decision.reason
    assert nxt.compensator is state.compensator


def test_auto_predictor_follows_the_shipped_metrics(tmp_path):
    metrics = load_metrics()
    assert metrics is not None
    pol = QuartPolicy(CFG)
    assert pol.predictor is not None and pol.predictor.name == metrics["winner"]
    assert pol.predictor_reason.startswith(f"predictor {metrics['winner']} (auto")
    # metrics where QNA wins -> QNA; metrics where the GAT wins but no weights -> QNA
    fake = {"test": {"gat": {"mae": 0.5}, "qna": {"mae": 0.4}}}
    (tmp_path / METRICS_FILE).write_text(json.dumps(fake))
    p, why = choose_predictor("auto", tmp_path)
    assert p.name == "qna" and "does not beat" in why
    fake["test"]["gat"]["mae"] = 0.1
    (tmp_path / METRICS_FILE).write_text(json.dumps(fake))
    p, why = choose_predictor("auto", tmp_path)
    assert p.name == "qna" and "unusable" in why
    with pytest.raises(SpecError, match="predictor"):
        choose_predictor("lstm")  # type: ignore[arg-type]


def test_gat_predictor_drives_the_policy():
    pol = QuartPolicy(CFG, predictor="gat", compensator=False)
    decisions = _run(pol, ticks=8)
    assert "predictor gat" in decisions[-1].reason
    assert _first_up(decisions, "s0") == 5.0


def test_runs_in_the_simulated_control_loop():
    stages = tuple(
        SimStage(f"s{k}", k, service_s=s, service_scv=0.2, max_concurrency=2, max_replicas=8)
        for k, s in enumerate((0.05, 0.08, 0.04))
    )
    pipe = SimPipeline("p3", "synthetic", "X-3", stages, slo_p99_s=1.0)
    arrivals = mmpp(mmpp_for(25.0, 3.0, on_frac=0.3), 60.0, seed=3)
    results = {}
    for name, pol in (
        ("corrector", make_policy("quart-corrector", CFG)),
        ("quart", make_policy("quart", CFG, predictor="qna", compensator=False)),
    ):
        r = simulate(pipe, cluster_preset("small"), pol, arrivals, seed=0, controller=CFG)
        assert r.completed == r.n_requests
        results[name] = r
    smoother_events = [e for e in results["quart"].scale_events if "smoother:" in e.reason]
    assert smoother_events  # the smoother acted, and said so
    assert np.isfinite(results["quart"].gpu_seconds)


# -- registry ---------------------------------------------------------------------------


def test_registry_names_and_lookup():
    names = policy_names()
    assert names[:2] == ["quart", "quart-corrector"]
    assert names == ["quart", "quart-corrector", *sorted(BASELINES)]  # = config.POLICY_NAMES
    assert isinstance(make_policy("quart", CFG, predictor="qna"), QuartPolicy)
    assert isinstance(make_policy("quart-corrector", CFG), ReplicaCorrector)
    for name in BASELINES:
        pol = make_policy(name)
        assert isinstance(pol, Policy) and pol.name == name
    assert make_policy("quart", None, predictor="qna").cfg == ControllerConfig()


def test_registry_errors_list_what_is_valid():
    with pytest.raises(SpecError, match="valid names: quart, quart-corrector"):
        make_policy("autoscale-everything")
    with pytest.raises(SpecError, match="valid options: predictor"):
        make_policy("quart", CFG, predictor="qna", beta=0.3)
    with pytest.raises(SpecError, match="takes no options"):
        make_policy("quart-corrector", CFG, smoother=False)
    with pytest.raises(SpecError):
        make_policy("knative", no_such_parameter=1)

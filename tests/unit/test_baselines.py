"""Unit tests of the baseline policies (control/baselines/): periods, windows, delays, holds.

No test sleeps: every snapshot carries the ``now`` chosen by the test.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any

import pytest

from quartfaas.control.baselines import BASELINES, make_policy, peak_replicas
from quartfaas.control.policy import Decision, Policy
from quartfaas.control.snapshot import (
    PipelineSnapshot,
    StageSnapshot,
    make_snapshot,
    make_stage,
)
from quartfaas.errors import SpecError

BOUNDS: dict[str, Any] = {"min_replicas": 1, "max_replicas": 10}


def snap(now: float, n: int = 1, **kw: Any) -> PipelineSnapshot:
    return make_snapshot(n, now=now, **{**BOUNDS, **kw})


def run(
    policy: Policy, times: Iterable[float], build: Callable[[float], PipelineSnapshot]
) -> list[Decision]:
    """Decide at each time with ``build(t)``; the state threads through, as in the loop."""
    out: list[Decision] = []
    state: Any = None
    for t in times:
        s = build(t)
        if state is None:
            state = policy.initial_state(s)
        d, state = policy.decide(s, state)
        out.append(d)
    return out


def first(d: Decision) -> int:
    return d.stages[0].replicas


# --------------------------------------------------------------------------- registry


def test_registry_has_every_baseline_and_they_are_policies() -> None:
    assert set(BASELINES) == {
        "openfaas-ce",
        "openfaas-pro",
        "knative",
        "hpa",
        "ray",
        "uniform",
        "static",
    }
    for name in BASELINES:
        p = make_policy(name)
        assert isinstance(p, Policy)
        assert p.name == name


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(SpecError) as e:
        make_policy("kubeflow")
    msg = str(e.value)
    assert "'kubeflow'" in msg
    for name in BASELINES:
        assert name in msg


def test_bad_override_names_the_parameter_and_the_valid_ones() -> None:
    with pytest.raises(SpecError, match="sync_period_s") as e:
        make_policy("hpa", sync_period=3)
    assert "tolerance" in str(e.value)
    with pytest.raises(SpecError, match="tolerance"):
        make_policy("hpa", tolerance=1.5)
    with pytest.raises(SpecError, match="target_rps_per_replica"):
        make_policy("hpa", metric="rps")
    with pytest.raises(SpecError, match="look_back_period_s"):
        make_policy("ray", look_back_period_s=5.0, metrics_interval_s=10.0)


@pytest.mark.parametrize("name", sorted(set(BASELINES) - {"static"}))
def test_missing_data_holds_every_stage(name: str) -> None:
    p = make_policy(name)
    loaded = snap(
        0.0,
        3,
        ready_replicas=2,
        arrival_rate=50.0,
        departure_rate=50.0,
        service_mean_s=1.0,
        in_flight=20,
        queue_len=40,
        cpu_utilisation=1.0,
    )
    state = p.initial_state(loaded)
    for age in (None, 1e6):
        blind = PipelineSnapshot(
            now=0.0, pipeline="p", slo_p99_s=1.0, stages=loaded.stages, data_age_s=age
        )
        d, _ = p.decide(blind, state)
        assert d.hold
        assert "no-data" in d.reason
        assert all(s.replicas == s.current == 2 for s in d.stages)


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_every_stage_decision_has_a_reason(name: str) -> None:
    p = make_policy(name)
    ds = run(
        p,
        [float(t) for t in range(0, 40)],
        lambda t: snap(
            t,
            3,
            ready_replicas=2,
            arrival_rate=9.0,
            departure_rate=9.0,
            service_mean_s=0.4,
            in_flight=3,
            queue_len=5,
            cpu_utilisation=0.7,
        ),
    )
    for d in ds:
        assert d.reason
        assert all(s.reason for s in d.stages)


@pytest.mark.parametrize("name", ["hpa", "knative", "ray", "openfaas-pro", "uniform"])
def test_unknown_per_stage_metric_holds_that_stage(name: str) -> None:
    overrides = {"metric": "cpu"} if name == "hpa" else {}
    p = make_policy(name, **overrides)
    stages = (
        make_stage(
            "s0",
            0,
            **BOUNDS,
            ready_replicas=2,
            arrival_rate=None,
            departure_rate=None,
            service_mean_s=None,
        ),
    )
    s = make_snapshot(now=0.0, stages=stages)
    d, _ = p.decide(s, p.initial_state(s))
    # Knative and Ray measure queue + in-flight, always known: they must not scale up.
    assert d.stages[0].replicas <= 2
    if name in ("hpa", "openfaas-pro", "uniform"):
        assert d.stages[0].replicas == 2
        assert "no-data" in d.stages[0].reason


# --------------------------------------------------------------------------- HPA


def hpa_snap(t: float, lam: float, ready: int = 2, starting: int = 0, **kw: Any):
    return snap(
        t,
        ready_replicas=ready,
        starting_replicas=starting,
        arrival_rate=lam,
        service_mean_s=1.0,
        **kw,
    )


def test_hpa_syncs_every_15_s_and_holds_in_between() -> None:
    ds = run(
        make_policy("hpa"), [float(t) for t in range(0, 31)], lambda t: hpa_snap(t, lam=2.0)
    )  # utilisation 100 % on 2 -> 4
    evaluated = [i for i, d in enumerate(ds) if not d.hold]
    assert evaluated == [0, 15, 30]
    assert first(ds[0]) == 4
    assert all(first(d) == 2 and "between HPA syncs" in d.reason for d in ds[1:15])


def test_hpa_tolerance_band() -> None:
    p = make_policy("hpa")
    s_in = hpa_snap(0.0, lam=2.16, ready=4)  # 54 % / 50 % = 1.08: inside 0.1
    d, _ = p.decide(s_in, p.initial_state(s_in))
    assert first(d) == 4 and "tolerance" in d.stages[0].reason
    s_out = hpa_snap(0.0, lam=2.24, ready=4)  # 1.12: ceil(1.12 x 4) = 5
    d, _ = p.decide(s_out, p.initial_state(s_out))
    assert first(d) == 5


def test_hpa_scale_up_limited_to_double_or_four() -> None:
    p = make_policy("hpa")
    s = hpa_snap(0.0, lam=10.0, ready=1)  # ratio 20 -> 20, limit max(2, 4)
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 4 and "limited" in d.stages[0].reason
    s = hpa_snap(0.0, lam=50.0, ready=5, max_replicas=100)
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 10


def test_hpa_scale_down_waits_for_the_stabilisation_window() -> None:
    p = make_policy("hpa")
    times = [float(t) for t in range(0, 331, 15)]
    ds = run(p, times, lambda t: hpa_snap(t, lam=1.0, ready=8))  # wants ceil(0.25 x 8) = 2
    by_t = dict(zip(times, ds, strict=True))
    # the controller started at 8 and remembers it for 300 s (recordInitialRecommendation)
    assert all(first(by_t[t]) == 8 for t in times if t <= 300)
    assert "stabilised" in by_t[150.0].stages[0].reason
    assert first(by_t[315.0]) == 2


def test_hpa_scale_up_is_not_stabilised() -> None:
    p = make_policy("hpa")
    ds = run(p, [0.0, 15.0], lambda t: hpa_snap(t, lam=0.2 if t == 0 else 4.0, ready=4))
    assert first(ds[0]) == 4  # remembered initial count keeps it
    assert first(ds[1]) == 8  # ratio 2 x 4, immediately


def test_hpa_counts_starting_pods_as_idle_when_scaling_up() -> None:
    p = make_policy("hpa")
    s = hpa_snap(0.0, lam=2.0, ready=2, starting=2)  # 2.0 -> 1.0 with 2 idle: keep 4
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 4
    assert "starting" in d.stages[0].reason


def test_hpa_does_not_scale_a_stage_at_zero() -> None:
    p = make_policy("hpa")
    s = snap(0.0, min_replicas=0, ready_replicas=0, arrival_rate=5.0, service_mean_s=1.0)
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 0 and "disabled" in d.stages[0].reason


def test_hpa_rps_metric() -> None:
    p = make_policy("hpa", metric="rps", target_rps_per_replica=5.0)
    s = hpa_snap(0.0, lam=40.0, ready=4)  # 10 per replica / 5 = 2 -> 8
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 8


# --------------------------------------------------------------------------- Knative


def kpa_snap(t: float, conc: int, ready: int = 1, **kw: Any) -> PipelineSnapshot:
    return snap(t, ready_replicas=ready, in_flight=conc, max_concurrency=10, **kw)


def test_kpa_ticks_every_2_s() -> None:
    ds = run(make_policy("knative"), [0.0, 1.0, 2.0, 3.0, 4.0], lambda t: kpa_snap(t, 7))
    assert [d.hold for d in ds] == [False, True, False, True, False]


def test_kpa_stable_mode_uses_window_average_over_target() -> None:
    # target 10 x 0.7 = 7 per pod; 14 concurrent on 2 pods is exactly on target. With
    # 2 ready pods the autoscaler starts in panic mode, which ends 60 s later.
    times = [float(t) for t in range(0, 71, 2)]
    ds = run(make_policy("knative"), times, lambda t: kpa_snap(t, 14, ready=2, max_replicas=20))
    assert all(first(d) == 2 for d in ds)
    assert "panic mode" in ds[0].stages[0].reason
    assert "stable mode" in ds[-1].stages[0].reason


def test_kpa_panics_at_twice_the_capacity_and_not_below() -> None:
    p = make_policy("knative")
    d, _ = p.decide(kpa_snap(0.0, 7), p.initial_state(kpa_snap(0.0, 7)))
    assert first(d) == 1 and "stable mode" in d.stages[0].reason
    d, _ = p.decide(kpa_snap(0.0, 14), p.initial_state(kpa_snap(0.0, 14)))
    assert first(d) == 2 and "panic mode" in d.stages[0].reason


def test_kpa_never_scales_down_while_panicking() -> None:
    p = make_policy("knative")
    times = [float(t) for t in range(0, 71)]
    # a burst of 28 on one pod (4 pods wanted, panic), then silence on the 4 pods
    ds = run(p, times, lambda t: kpa_snap(t, 28 if t <= 5 else 0, ready=1 if t <= 5 else 4))
    by_t = dict(zip(times, ds, strict=True))
    assert first(by_t[0.0]) == 4 and "panic" in by_t[0.0].stages[0].reason
    for t in range(6, 65, 2):  # last time over threshold: t=4; panic lasts 60 s after it
        d = by_t[float(t)]
        assert first(d) == 4, t
        assert "panic" in d.stages[0].reason
    # un-panicked: stable average 0, but at most halved (max-scale-down-rate 2)
    assert first(by_t[66.0]) == 2 and "stable mode" in by_t[66.0].stages[0].reason


def test_kpa_starts_in_panic_mode_with_several_ready_pods() -> None:
    p = make_policy("knative")
    s = kpa_snap(0.0, 0, ready=5)
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 5 and "panic" in d.stages[0].reason


def test_kpa_scales_to_zero_only_after_the_grace_period_and_min_zero() -> None:
    times = [float(t) for t in range(0, 33, 2)]
    ds = run(make_policy("knative"), times, lambda t: kpa_snap(t, 0, min_replicas=0))
    by_t = dict(zip(times, ds, strict=True))
    assert all(first(by_t[t]) == 1 for t in times if t < 30)
    assert first(by_t[30.0]) == 0 and "scale to zero" in by_t[30.0].stages[0].reason
    ds = run(make_policy("knative"), times, lambda t: kpa_snap(t, 0))
    assert all(first(d) == 1 for d in ds)  # min_replicas 1


def test_kpa_poke_scales_a_stage_from_zero_between_ticks() -> None:
    p = make_policy("knative")
    idle = (
        make_stage("s0", 0, min_replicas=0, max_replicas=10, ready_replicas=0),
        make_stage("s1", 1, **BOUNDS, ready_replicas=1),
    )
    s0 = make_snapshot(now=0.0, stages=idle)
    _, state = p.decide(s0, p.initial_state(s0))
    busy = (replace(idle[0], queue_len=3), replace(idle[1], in_flight=50))
    d, _ = p.decide(make_snapshot(now=1.0, stages=busy), state)  # not a tick time
    assert not d.hold and "poke" in d.reason
    assert d.target("s0") == 3  # buckets 0 and 3 -> mean 1.5 / target 0.7 -> 3 (panic)
    assert d.target("s1") == 1 and "between KPA ticks" in d.stages[1].reason


def test_kpa_history_is_bounded() -> None:
    p = make_policy("knative")
    state: Any = None
    for t in range(0, 600):
        s = kpa_snap(float(t), t % 9)
        state = state or p.initial_state(s)
        _, state = p.decide(s, state)
    assert len(state.stages[0].history) <= 62


# --------------------------------------------------------------------------- Ray Serve


def ray_snap(t: float, ongoing: int, ready: int = 1, **kw: Any) -> PipelineSnapshot:
    return snap(t, ready_replicas=ready, in_flight=ongoing, **kw)


def test_ray_upscale_waits_upscale_delay() -> None:
    times = [float(t) for t in range(0, 32)]
    ds = run(make_policy("ray"), times, lambda t: ray_snap(t, 10))  # 10 / 2 -> 5
    assert all(first(d) == 1 for d in ds[:30])
    assert "upscale delay" in ds[29].stages[0].reason
    assert first(ds[30]) == 5


def test_ray_downscale_waits_downscale_delay() -> None:
    times = [float(t) for t in range(0, 602, 2)]
    ds = run(make_policy("ray"), times, lambda t: ray_snap(t, 0, ready=5))
    by_t = dict(zip(times, ds, strict=True))
    assert first(by_t[598.0]) == 5
    assert first(by_t[600.0]) == 1  # min_replicas


def test_ray_metric_is_pushed_every_metrics_interval() -> None:
    # ongoing jumps at t=1, but the pushed average only moves at t=10
    ds = run(
        make_policy("ray", upscale_delay_s=0.0),
        [float(t) for t in range(0, 12)],
        lambda t: ray_snap(t, 0 if t == 0 else 10),
    )
    assert all(first(d) == 1 for d in ds[:10])
    assert first(ds[10]) == 5  # mean of 0 and ten 10s = 9.1 -> ceil(4.55)


def test_ray_direction_change_restarts_the_delay() -> None:
    p = make_policy("ray", metrics_interval_s=1.0, look_back_period_s=1.0)
    load = lambda t: 10 if t < 20 or t >= 25 else 2  # noqa: E731
    ds = run(p, [float(t) for t in range(0, 56)], lambda t: ray_snap(t, load(t)))
    assert all(first(d) == 1 for d in ds[:55])  # interrupted at t=20, restarted at 25
    assert first(ds[55]) == 5


def test_ray_cold_start_bypasses_delays() -> None:
    s = ray_snap(0.0, 3, ready=0, min_replicas=0)
    p = make_policy("ray")
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 1 and "cold start" in d.stages[0].reason


# --------------------------------------------------------------------------- OpenFaaS CE


def ce_snap(t: float, rate: float | None, replicas: int = 1, n: int = 1) -> PipelineSnapshot:
    return snap(t, n, ready_replicas=replicas, departure_rate=rate)


def test_ce_alert_needs_two_evaluations_then_alertmanager_delays() -> None:
    times = [float(t) for t in range(0, 61)]
    ds = run(make_policy("openfaas-ce"), times, lambda t: ce_snap(t, 10.0))
    acted = [t for t, d in zip(times, ds, strict=True) if not d.hold]
    # pending at 0, firing at 15, group_wait 5 s -> 20; repeat_interval 30 s -> 50
    assert acted == [20.0, 50.0]
    # upstream defaults: max min(10, DefaultMaxReplicas 5), step ceil(5 x 10 %) = 1
    assert first(ds[20]) == 2 and "firing" in ds[20].stages[0].reason
    assert "10% of max 5" in ds[20].stages[0].reason
    assert "pending" in ds[5].stages[0].reason


def test_ce_resolution_returns_to_min_and_short_spikes_never_fire() -> None:
    times = [float(t) for t in range(0, 61)]
    ds = run(
        make_policy("openfaas-ce"), times, lambda t: ce_snap(t, 10.0 if t < 45 else 1.0, replicas=3)
    )
    assert first(ds[20]) == 4
    assert first(ds[50]) == 1  # 45 resolves (the 50 s flush sends it, before any repeat)
    assert "resolved" in ds[50].stages[0].reason and "min_replicas" in ds[50].stages[0].reason
    # over the threshold at one evaluation only: pending, never firing
    ds = run(make_policy("openfaas-ce"), times, lambda t: ce_snap(t, 10.0 if t < 10 else 1.0))
    assert all(d.hold for d in ds)


def test_ce_missing_rate_keeps_the_alert_as_it_was() -> None:
    times = [float(t) for t in range(0, 61)]
    ds = run(
        make_policy("openfaas-ce"),
        times,
        lambda t: ce_snap(t, 10.0 if t < 30 else None, replicas=3),
    )
    assert first(ds[20]) == 4
    assert first(ds[50]) == 4  # still firing: a repeat, never a resolution to min
    assert "no-data" in ds[45].stages[0].reason


def test_ce_one_alert_group_for_all_functions() -> None:
    # s1 starts firing later; its arrival changes the group, so the next flush also
    # re-sends s0's firing alert and the gateway steps s0 up again.
    def build(t: float) -> PipelineSnapshot:
        st = (
            make_stage("s0", 0, **BOUNDS, ready_replicas=1, departure_rate=10.0),
            make_stage(
                "s1", 1, **BOUNDS, ready_replicas=1, departure_rate=10.0 if t >= 15 else 0.0
            ),
        )
        return make_snapshot(now=t, stages=st)

    times = [float(t) for t in range(0, 41)]
    ds = run(make_policy("openfaas-ce"), times, build)
    assert [d.target("s0") for d in (ds[20], ds[30])] == [2, 2]
    assert ds[20].target("s1") == 1 and ds[30].target("s1") == 2
    assert not ds[30].hold


def test_ce_factor_and_cap() -> None:
    def first_at_20(**kw: Any) -> int:
        times = [float(t) for t in range(21)]
        return first(run(make_policy("openfaas-ce", **kw), times, lambda t: ce_snap(t, 10.0))[20])

    assert first_at_20(scale_factor_pct=100) == 5  # DefaultMaxReplicas caps every function
    assert first_at_20(scale_factor_pct=100, replica_cap=None) == 10  # the stage's max
    assert first_at_20(scale_factor_pct=20, replica_cap=None) == 3  # pre-2023: ceil(10 x 20 %)
    # a stage max below the cap bounds it: max 3, step ceil(3 x 10 %) = 1, then capped at 3
    times = [float(t) for t in range(0, 61)]
    ds = run(
        make_policy("openfaas-ce"),
        times,
        lambda t: make_snapshot(
            1, now=t, min_replicas=1, max_replicas=3, ready_replicas=3, departure_rate=10.0
        ),
    )
    assert first(ds[20]) == 3 and "10% of max 3" in ds[20].stages[0].reason


# --------------------------------------------------------------------------- OpenFaaS Pro


def test_pro_rps_mode_uses_target_and_proportion() -> None:
    ds = run(
        make_policy("openfaas-pro"),
        [0.0, 1.0, 15.0],
        lambda t: snap(t, ready_replicas=1, departure_rate=100.0 if t < 15 else 10.0),
    )
    assert first(ds[0]) == 3  # ceil(100 / 45)
    assert ds[1].hold
    assert first(ds[2]) == 1


def test_pro_capacity_mode_matches_the_docs_examples() -> None:
    p = make_policy("openfaas-pro", scale_type="capacity", target=5, target_proportion=1.0)
    s = snap(0.0, ready_replicas=1, in_flight=15)
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 3
    s = snap(0.0, ready_replicas=3, in_flight=25)
    d, _ = p.decide(s, p.initial_state(s))
    assert first(d) == 5


def test_pro_capacity_remembers_the_peak_for_45_s() -> None:
    p = make_policy("openfaas-pro", scale_type="capacity", target=5, target_proportion=1.0)
    times = [float(t) for t in range(0, 61)]
    ds = run(p, times, lambda t: snap(t, ready_replicas=2, in_flight=20 if t == 0 else 0))
    assert [first(ds[t]) for t in (0, 15, 30, 45, 60)] == [4, 4, 4, 1, 1]


def test_pro_scale_to_zero_is_opt_in() -> None:
    times = [float(t) for t in range(0, 61)]
    idle = lambda t: snap(t, min_replicas=1, ready_replicas=1, departure_rate=0.0)  # noqa: E731
    assert all(first(d) == 1 for d in run(make_policy("openfaas-pro"), times, idle))
    p = make_policy("openfaas-pro", scale_zero=True, zero_duration_s=60)
    ds = run(p, times, idle)
    assert first(ds[45]) == 1 and first(ds[60]) == 0
    assert "scale to zero" in ds[60].stages[0].reason


def test_pro_gateway_scales_from_zero_at_once() -> None:
    p = make_policy("openfaas-pro")
    s0 = snap(0.0, ready_replicas=1, departure_rate=0.0)
    state = p.initial_state(s0)
    _, state = p.decide(s0, state)
    d, _ = p.decide(snap(3.0, ready_replicas=0, queue_len=2), state)
    assert first(d) == 1 and "scale_from_zero" in d.stages[0].reason and not d.hold


def test_pro_down_window_keeps_the_highest_recommendation() -> None:
    p = make_policy("openfaas-pro", down_window_s=60)
    times = [0.0, 15.0, 30.0, 75.0]
    rates = {0.0: 400.0, 15.0: 10.0, 30.0: 10.0, 75.0: 10.0}
    ds = run(p, times, lambda t: snap(t, ready_replicas=9, departure_rate=rates[t]))
    assert [first(d) for d in ds] == [9, 9, 9, 1]


# --------------------------------------------------------------------------- uniform


def uni_snap(t: float, rate: float, stages: int = 3, **kw: Any) -> PipelineSnapshot:
    st = tuple(
        make_stage(
            f"s{i}",
            i,
            **{**BOUNDS, **kw},
            ready_replicas=2,
            arrival_rate=rate if i == 0 else rate / 2,
            service_mean_s=0.1 * (i + 1),
        )
        for i in range(stages)
    )
    return make_snapshot(now=t, stages=st)


def test_uniform_one_count_for_all_stages() -> None:
    p = make_policy("uniform")
    s = uni_snap(0.0, 10.0)  # ceil(10 x (0.6 + 0.03)) = 7
    d, _ = p.decide(s, p.initial_state(s))
    assert [x.replicas for x in d.stages] == [7, 7, 7]


def test_uniform_clamps_per_stage() -> None:
    p = make_policy("uniform")
    s = uni_snap(0.0, 10.0)
    st = tuple(
        make_stage(
            x.name,
            x.index,
            **{**BOUNDS, "max_replicas": 4 if x.index == 1 else 10},
            ready_replicas=2,
            arrival_rate=x.arrival_rate,
            service_mean_s=x.service_mean_s,
        )
        for x in s.stages
    )
    s = make_snapshot(now=0.0, stages=st)
    d, _ = p.decide(s, p.initial_state(s))
    assert [x.replicas for x in d.stages] == [7, 4, 7]


def test_uniform_runs_every_3_s_and_cools_down_6_min() -> None:
    p = make_policy("uniform")
    times = [float(t) for t in range(0, 400)]
    ds = run(p, times, lambda t: uni_snap(t, 10.0 if t < 10 else 1.0))
    assert first(ds[0]) == 7 and ds[1].hold and ds[2].hold and not ds[3].hold
    # raised at t=0, wants 1 from t=12, may only go down 360 s after the last change
    assert all(first(ds[t]) == 7 for t in range(12, 360, 3))
    assert first(ds[360]) == 1


def test_uniform_holds_without_service_times() -> None:
    p = make_policy("uniform")
    s = snap(0.0, 2, ready_replicas=2, arrival_rate=4.0, service_mean_s=None)
    d, _ = p.decide(s, p.initial_state(s))
    assert d.hold and "no-data" in d.reason


# --------------------------------------------------------------------------- static


def test_static_never_changes_and_clamps() -> None:
    p = make_policy("static", replicas={"s0": 3, "s1": 40})
    ds = run(
        p, [0.0, 100.0], lambda t: snap(t, 3, ready_replicas=3, arrival_rate=1e3 if t else 0.0)
    )
    for d in ds:
        assert [x.replicas for x in d.stages] == [3, 10, 3]
        assert "no static count" in d.stages[2].reason
        assert "capped" in d.stages[1].reason


def test_static_default_pins_the_starting_counts() -> None:
    p = make_policy("static")
    ds = run(p, [0.0, 50.0], lambda t: snap(t, ready_replicas=2 if t == 0 else 6))
    assert [first(d) for d in ds] == [2, 2]


def test_peak_replicas() -> None:
    assert peak_replicas({"a": 10.0, "b": 0.0}, {"a": 0.5, "b": 1.0}, 0.5) == {"a": 10, "b": 1}
    assert peak_replicas({"a": 10.0}, {"a": 0.5}, 0.5, max_concurrency=4) == {"a": 3}
    with pytest.raises(SpecError, match="lacks"):
        peak_replicas({"a": 1.0}, {})
    with pytest.raises(SpecError, match="target_utilisation"):
        peak_replicas({"a": 1.0}, {"a": 1.0}, 0.0)


def test_stage_seen_for_the_first_time_gets_fresh_state() -> None:
    for name in BASELINES:
        p = make_policy(name)
        one = snap(0.0, 1, ready_replicas=1)
        state = p.initial_state(one)
        stages: tuple[StageSnapshot, ...] = (
            *one.stages,
            make_stage("new", 1, **BOUNDS, ready_replicas=1, in_flight=1),
        )
        d, _ = p.decide(make_snapshot(now=0.0, stages=stages), state)
        assert len(d.stages) == 2, name

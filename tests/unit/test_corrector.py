"""The Replica Corrector policy (control/corrector/corrector.py), tick by tick with explicit ``now``."""

from __future__ import annotations

import itertools
from dataclasses import replace

import pytest

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import CorrectorState, ReplicaCorrector
from quartfaas.control.corrector.queueing import replicas_for_slo
from quartfaas.control.policy import Action, Policy
from quartfaas.control.snapshot import (
    LatencyStats,
    PipelineSnapshot,
    StageSnapshot,
    make_snapshot,
    make_stage,
)

CFG = ControllerConfig.model_validate(
    {}
)  # up 2 s, down 30 s, delay 15 s, steps +8/-2, p99, util 0.8


def lat(p99: float | None, count: int = 200) -> LatencyStats:
    if p99 is None:
        return LatencyStats()
    return LatencyStats(count=count, mean_s=p99 / 3, p50_s=p99 / 3, p95_s=p99 / 1.5, p99_s=p99)


SERVICE_P99 = 0.23  # exponential service of mean 50 ms: its p99 is ~4.6 means


def stage(
    name: str = "s0", index: int = 0, p99: float | None = 0.25, **kw: object
) -> StageSnapshot:
    """λ=20/s, μ=20/s (a = 1 erlang), exponential service, 3 ready replicas, max 16.

    The wait for a replica slot is what the tail holds beyond the service time, as a
    gateway measures it: a slow tail comes with waiting.
    """
    base: dict[str, object] = dict(
        min_replicas=1,
        max_replicas=16,
        ready_replicas=3,
        arrival_rate=20.0,
        arrival_cv=1.0,
        departure_rate=20.0,
        service_mean_s=0.05,
        service_scv=1.0,
        latency=lat(p99),
        wait=lat(None if p99 is None else max(0.0, p99 - SERVICE_P99)),
        in_flight=2,
    )
    base.update(kw)
    return make_stage(name, index, **base)


def snap(now: float, *stages: StageSnapshot, slo: float = 0.6) -> PipelineSnapshot:
    return make_snapshot(now=now, slo_p99_s=slo, stages=stages or (stage(),))


def run(
    c: ReplicaCorrector, s: PipelineSnapshot, state: CorrectorState | None = None
) -> tuple[int, str, CorrectorState]:
    state = c.initial_state(s) if state is None else state
    decision, state = c.decide(s, state)
    return decision.stages[0].replicas, decision.stages[0].reason, state


def test_is_a_policy_named_quart_corrector() -> None:
    c = ReplicaCorrector()
    assert isinstance(c, Policy) and c.name == "quart-corrector"


def test_a_slow_tail_without_waiting_adds_no_replicas() -> None:
    # Service time (or CPU contention on the host) makes the tail slow; nobody waits for a
    # replica, so more replicas cannot help (and would add contention).
    c = ReplicaCorrector(CFG)
    s = stage(p99=1.2, wait=lat(0.004), queue_len=0)
    n, reason, _ = run(c, snap(100.0, s), CorrectorState())
    assert n <= 3 and "no feedback up" in reason
    # The same tail with a queue does scale up.
    n, _, _ = run(c, snap(100.0, stage(p99=1.2, wait=lat(0.004), queue_len=12)), CorrectorState())
    assert n > 3


def test_too_slow_scales_up_and_fast_enough_does_not() -> None:
    c = ReplicaCorrector(CFG)
    state = CorrectorState()
    up, reason, _ = run(c, snap(100.0, stage(p99=1.2)), state)
    assert up > 3, reason  # the prototype's sign bug went the other way
    assert "p99 1.2s > budget 0.6s" in reason and "PID +" in reason
    same, reason, _ = run(c, snap(100.0, stage(p99=0.25)), state)
    assert same <= 3, reason
    assert "p99 0.25s <= budget 0.6s" in reason


def test_reason_names_model_rates_pid_and_guards() -> None:
    c = ReplicaCorrector(CFG.model_copy(update={"max_step_up": 1}))
    s = stage(p99=0.84, arrival_rate=41.0, service_mean_s=1 / 11, service_scv=0.05)
    _, reason, _ = run(c, snap(50.0, s, slo=0.3), CorrectorState())
    assert reason.startswith("p99 0.84s > budget 0.3s; G/G/c")
    assert "λ=41/s, μ=11/s" in reason and "PID +" in reason
    assert "capped by max_step_up 1" in reason


def test_feed_forward_uses_the_measured_service_rate() -> None:
    c = ReplicaCorrector(CFG)
    s = stage(p99=None, arrival_rate=60.0, service_mean_s=0.05, ready_replicas=1)
    tick, _ = c.targets(snap(10.0, s), CorrectorState())
    want = replicas_for_slo(60.0, 20.0, 1.0, 1.0, 0.6, 0.99, max_util=0.8, c_max=16)
    assert tick.stages[0].model == want.replicas
    assert tick.stages[0].target == want.replicas  # no latency yet: model alone
    # Without a measured service time there is no model estimate and nothing is assumed.
    tick, _ = c.targets(snap(10.0, replace(s, service_mean_s=None)), CorrectorState())
    assert tick.stages[0].model is None and tick.stages[0].target == 1
    assert "μ unknown" in tick.stages[0].reason


@pytest.mark.parametrize(
    "s",
    [
        replace(snap(5.0), data_age_s=None),
        replace(snap(5.0), data_age_s=CFG.stale_after_s + 0.1),
    ],
)
def test_missing_or_stale_data_holds_everything(s: PipelineSnapshot) -> None:
    c = ReplicaCorrector(CFG)
    slow = replace(s, stages=(stage(p99=5.0, ready_replicas=2, queue_len=500),))
    decision, state = c.decide(slow, c.initial_state(slow))
    assert decision.hold and decision.reason.startswith("no-data")
    assert [d.action for d in decision.stages] == [Action.HOLD]
    assert decision.stages[0].reason.startswith("no-data")
    zero = replace(slow, stages=(stage(p99=None, arrival_rate=0.0, ready_replicas=4),))
    decision, _ = c.decide(zero, state)
    assert decision.stages[0].replicas == 4  # never to zero (or max) on missing data


def test_unknown_arrival_rate_holds_that_stage_only() -> None:
    c = ReplicaCorrector(CFG)
    s = snap(5.0, stage("a", 0, arrival_rate=None), stage("b", 1, p99=3.0))
    decision, _ = c.decide(s, CorrectorState())
    assert decision.stages[0].action is Action.HOLD and "no-data" in decision.stages[0].reason
    assert decision.stages[1].action is Action.UP


def test_up_cooldown_is_measured_in_seconds() -> None:
    c = ReplicaCorrector(CFG)  # up_cooldown_s = 2
    r1, _, state = run(c, snap(100.0, stage(p99=1.2)), CorrectorState())
    assert r1 > 3
    again = stage(p99=1.5, ready_replicas=r1)
    r2, reason, _ = run(c, snap(101.9, again), state)
    assert r2 == r1 and "up cooldown (1.9s < up_cooldown_s 2s)" in reason
    r3, _, _ = run(c, snap(102.0, again), state)
    assert r3 > r1


def long_running(c: ReplicaCorrector, s: PipelineSnapshot) -> CorrectorState:
    """State of a corrector that has been running (and holding) for a long time."""
    old = replace(s, now=s.now - 1000.0)
    return c.decide(old, c.initial_state(old))[1]


def test_downscale_waits_for_the_delay_and_the_down_cooldown() -> None:
    c = ReplicaCorrector(CFG)  # delay 15 s, down cooldown 30 s, step down 2
    busy = stage(p99=0.25, ready_replicas=10, arrival_rate=160.0)
    state = long_running(c, snap(0.0, busy))
    over = replace(busy, arrival_rate=5.0, latency=lat(0.1))  # the load drops at t=0
    seen: list[tuple[float, int]] = []
    for now in [0.0, 5.0, 14.9, 15.0]:
        r, reason, state = run(c, snap(now, over), state)
        seen.append((now, r))
    assert seen[:3] == [(0.0, 10), (5.0, 10), (14.9, 10)]
    assert seen[3] == (15.0, 8)  # now - below_since >= 15 s, by max_step_down 2
    # A scale-down starts a new low period (t=16 here), and the down cooldown (30 s from
    # t=15) holds however many ticks pass.
    after = replace(over, ready_replicas=8)
    for now in (16.0, 44.9):
        r, reason, state = run(c, snap(now, after), state)
        assert r == 8 and "down cooldown" in reason
    r, _, _ = run(c, snap(45.0, after), state)
    assert r == 6


def test_idle_stage_goes_to_min_only_after_the_delay() -> None:
    c = ReplicaCorrector(CFG)
    idle = stage(p99=None, arrival_rate=0.0, in_flight=0, ready_replicas=3, min_replicas=1)
    busy = stage(arrival_rate=40.0)  # 2 erlangs: 3 replicas are what it needs
    r, reason, state = run(c, snap(0.0, idle), long_running(c, snap(0.0, busy)))
    assert r == 3 and "idle" in reason and "held: low for 0.0s" in reason
    r, _, state = run(c, snap(14.0, idle), state)
    assert r == 3
    r, _, _ = run(c, snap(15.0, idle), state)
    assert r == 1


def test_queue_backlog_drives_scale_up() -> None:
    c = ReplicaCorrector(CFG)
    s = stage(p99=0.3, queue_len=60, ready_replicas=3)
    tick, _ = c.targets(snap(10.0, s), CorrectorState())
    t = tick.stages[0]
    # 60 queued to drain in 0.6 s on top of 20/s at 20/s per replica: (20 + 100)/20 = 6.
    assert t.backlog == 6 and t.target >= 6
    assert "queue 60 needs 6 to drain in 0.6s" in t.reason


def test_cold_start_from_zero_replicas() -> None:
    c = ReplicaCorrector(CFG)
    s = stage(p99=None, min_replicas=0, ready_replicas=0, queue_len=3, service_mean_s=None)
    r, reason, _ = run(c, snap(10.0, s), CorrectorState())
    assert r >= 1 and "cold start" in reason


def test_targets_within_stage_bounds() -> None:
    c = ReplicaCorrector(CFG)
    s = snap(
        10.0,
        stage("hot", 0, p99=9.0, arrival_rate=900.0, max_replicas=4, ready_replicas=4),
        stage("over", 1, p99=0.1, ready_replicas=9, max_replicas=5),
        stage("under", 2, p99=0.1, ready_replicas=1, min_replicas=3),
    )
    decision, _ = c.decide(s, CorrectorState())
    got = {d.stage: d.replicas for d in decision.stages}
    assert got == {"hot": 4, "over": 5, "under": 3}
    assert "capped at max_replicas 5" in decision.stages[1].reason


def test_critical_stage_flagged_with_the_prototype_score_on_tail_latency() -> None:
    c = ReplicaCorrector(CFG)
    s = snap(10.0, stage("a", 0, p99=0.9), stage("b", 1, p99=0.2))
    decision, _ = c.decide(s, CorrectorState())
    a, b = decision.stages
    assert a.critical and a.score == pytest.approx((0.9 - 0.3) / 0.3 * (1 + 20 / 10))
    assert not b.critical and b.score == 0.0
    assert "critical: a" in decision.reason


def test_restarted_corrector_does_not_burst() -> None:
    cfg = CFG
    c = ReplicaCorrector(cfg)
    # A running pipeline, over-provisioned and comfortably inside its budgets.
    stages = tuple(
        stage(f"s{i}", i, p99=0.2 + 0.01 * i, ready_replicas=4 + i % 5, arrival_rate=10.0 + i)
        for i in range(12)
    )
    s0 = snap(1000.0, *stages, slo=12 * 0.6)
    state = c.initial_state(s0)
    decision, state = c.decide(s0, state)
    assert all(d.action is Action.HOLD for d in decision.stages), decision.as_dict()
    # ... and it keeps holding until the down cooldown and delay have passed in seconds.
    decision, state = c.decide(replace(s0, now=1010.0), state)
    assert all(d.action is Action.HOLD for d in decision.stages)
    decision, _ = c.decide(replace(s0, now=1000.0 + cfg.down_cooldown_s), state)
    assert any(d.action is Action.DOWN for d in decision.stages)


def test_restart_while_too_slow_still_scales_up() -> None:
    c = ReplicaCorrector(CFG)
    s = snap(10.0, stage(p99=1.5, ready_replicas=2))
    decision, _ = c.decide(s, c.initial_state(s))
    assert decision.stages[0].action is Action.UP


def test_new_stage_in_a_running_state_starts_fresh() -> None:
    c = ReplicaCorrector(CFG)
    _, state = c.decide(snap(0.0, stage("a", 0)), CorrectorState())
    s = snap(1.0, stage("a", 0), stage("b", 1, p99=2.0))
    decision, state = c.decide(s, state)
    assert [st.name for st in state.stages] == ["a", "b"]
    assert decision.stages[1].action is Action.UP


def test_starting_replicas_stop_feedback_from_piling_on() -> None:
    c = ReplicaCorrector(CFG)
    # 4 replicas asked for, 1 ready and 3 starting; latency and queue still show the old
    # overload. The model needs 3 at λ=40/s: feedback waits for the starting ones.
    s = stage(p99=3.0, queue_len=80, ready_replicas=1, starting_replicas=3, arrival_rate=40.0)
    tick, _ = c.targets(snap(10.0, s), CorrectorState())
    assert tick.stages[0].target == 4 and "waiting for 3 starting" in tick.stages[0].reason
    # A load rise still adds capacity at once: the model alone asks for more.
    tick, _ = c.targets(snap(10.0, replace(s, arrival_rate=200.0)), CorrectorState())
    assert tick.stages[0].target > 4


def test_infeasible_budget_does_not_pile_up_replicas() -> None:
    c = ReplicaCorrector(CFG)
    # Exponential service of 0.1 s: p99 0.46 s > budget 0.3 s. Observed 0.47 s is what the
    # best count gives; the PID aims at 0.46 s, not at the impossible 0.3 s.
    s = stage(p99=0.47, arrival_rate=20.0, service_mean_s=0.1, ready_replicas=3)
    tick, _ = c.targets(snap(10.0, s, slo=0.3), c.initial_state(snap(0.0, s, slo=0.3)))
    t = tick.stages[0]
    assert "budget below the service percentile 0.461s" in t.reason
    assert t.correction < 1.0 and t.target <= 4


def test_percentile_label_names_the_stored_quantile_used() -> None:
    c = ReplicaCorrector(CFG.model_copy(update={"percentile": 0.9}))
    _, reason, _ = run(c, snap(1.0, stage(p99=0.9)), CorrectorState())
    assert reason.startswith("p95 0.6s <= budget 0.6s")  # lat() sets p95 = p99/1.5


def test_invalid_slo_holds_instead_of_raising() -> None:
    c = ReplicaCorrector(CFG)
    decision, _ = c.decide(snap(1.0, stage(p99=2.0), slo=0.0), CorrectorState())
    assert decision.hold and "slo_p99_s" in decision.reason


# ----------------------------------------------------------------------- closed loop


def _mmc_p99(c: int, lam: float, mu: float) -> float:
    """Exact M/M/c sojourn p99 (the plant; the corrector's own model is more conservative)."""
    from math import exp

    from quartfaas.control.corrector.queueing import erlang_c

    pw, th = erlang_c(c, lam / mu), c * mu - lam

    def tail(t: float) -> float:
        both = (
            (1 + mu * t) * exp(-mu * t)
            if abs(th - mu) < 1e-9
            else (th * exp(-mu * t) - mu * exp(-th * t)) / (th - mu)
        )
        return (1 - pw) * exp(-mu * t) + pw * both

    lo, hi = 0.0, 100.0
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if tail(mid) > 0.01 else (lo, mid)
    return hi


def test_closed_loop_settles_inside_the_budget_without_oscillating() -> None:
    """One stage, μ=20/s, replicas ready 5 s after they are asked for; load 40/s, then
    160/s at t=100. The fluid queue adds q/capacity to the plant's p99."""
    c = ReplicaCorrector(CFG)
    mu, startup, budget = 20.0, 5.0, 0.6
    ready, starting, queue = 1, [], 0.0
    state: CorrectorState | None = None
    trace: list[tuple[int, int, float]] = []
    for t in range(400):
        lam = 40.0 if t < 100 else 160.0
        ready += sum(1 for s in starting if s <= t)
        starting = [s for s in starting if s > t]
        capacity = ready * mu
        queue = max(0.0, queue + lam - capacity)
        p99 = (_mmc_p99(ready, lam, mu) if lam < capacity else 0.25) + queue / capacity
        s = stage(
            p99=p99,
            ready_replicas=ready,
            starting_replicas=len(starting),
            queue_len=int(queue),
            arrival_rate=lam,
            departure_rate=min(lam, capacity),
            max_replicas=32,
        )
        pipeline = snap(float(t), s, slo=budget)
        state = c.initial_state(pipeline) if state is None else state
        decision, state = c.decide(pipeline, state)
        d = decision.stages[0]
        if d.replicas > d.current:
            starting += [t + startup] * (d.replicas - d.current)
        elif d.replicas < d.current:
            drop = d.current - d.replicas
            while drop and starting:
                starting.pop()
                drop -= 1
            ready -= drop
        trace.append((t, ready + len(starting), p99))
    # Inside the budget from 20 s after each load change until the next.
    assert all(p <= budget for t, _, p in trace if 20 <= t < 100 or t >= 120)
    # Settled: the last 100 s see at most one change, and only downwards.
    tail = [r for t, r, _ in trace if t >= 300]
    assert all(b <= a for a, b in itertools.pairwise(tail))
    # ... to no more than the utilisation cap needs (160/20/0.8 = 10) plus one.
    assert 10 <= trace[-1][1] <= 11


# ----------------------------------------------------------------------- guards and budgets


def test_guard_chain_order_and_reasons() -> None:
    from quartfaas.control.corrector.guards import GuardLimits, GuardMemory, apply_guards

    limits = GuardLimits(min_replicas=2, max_replicas=10, max_step_up=3, max_step_down=1)
    g, mem = apply_guards(4, 20, 0.0, GuardMemory(), limits)
    assert g.value == 7 and g.reasons == ("capped by max_step_up 3",)
    assert mem.last_up_s == 0.0
    g, _ = apply_guards(9, 20, 1.0, mem, limits)  # rate 12 -> bounds 10 -> up cooldown 9
    assert g.value == 9
    assert g.reasons == (
        "capped by max_step_up 3",
        "capped at max_replicas 10",
        "up cooldown (1.0s < up_cooldown_s 2s)",
    )
    # Bounds win over cooldowns: a stage above its (new) max comes back at once.
    g, _ = apply_guards(12, 12, 1.0, mem, limits)
    assert g.value == 10


def test_downscale_goes_only_to_the_peak_of_the_low_period() -> None:
    from quartfaas.control.corrector.guards import GuardLimits, GuardMemory, apply_guards

    limits = GuardLimits(1, 20, max_step_down=10, down_cooldown_s=0.0, downscale_delay_s=10.0)
    mem = GuardMemory()
    for now, raw in [(0.0, 2), (4.0, 7), (8.0, 3)]:
        g, mem = apply_guards(10, raw, now, mem, limits)
        assert g.value == 10
    g, _ = apply_guards(10, 2, 10.0, mem, limits)
    assert g.value == 7 and "highest target while low" in g.reasons[0]


def test_budgets_proportional_equal_and_fallbacks() -> None:
    from quartfaas.control.corrector.budget import stage_budgets

    s = snap(
        0.0,
        stage("a", 0, service_mean_s=0.01),
        stage("b", 1, service_mean_s=0.03),
        stage("c", 2, service_mean_s=None),  # unmeasured: weighted like the mean (0.02)
        slo=1.2,
    )
    assert stage_budgets(s, "proportional") == pytest.approx((0.2, 0.6, 0.4))
    assert stage_budgets(s, "equal") == pytest.approx((0.4, 0.4, 0.4))
    none = snap(0.0, stage("a", 0, service_mean_s=None), stage("b", 1, service_mean_s=None))
    assert stage_budgets(none, "proportional") == pytest.approx((0.3, 0.3))


def test_queue_growing_marks_a_stage_critical_before_its_tail_shows_it() -> None:
    from quartfaas.control.corrector.budget import assess_stage

    h = assess_stage(stage(p99=0.1, queue_len=30, departure_rate=12.0), 0.6, 0.99, 0.1)
    assert h.queue_growing and h.critical and h.score == 0.0
    h = assess_stage(stage(p99=0.1, queue_len=30, departure_rate=20.0), 0.6, 0.99, 0.1)
    assert not h.queue_growing and not h.critical


def test_a_data_gap_restarts_the_downscale_delay() -> None:
    c = ReplicaCorrector(CFG)
    over = stage(p99=0.1, ready_replicas=10, arrival_rate=5.0)
    state = long_running(c, snap(0.0, replace(over, arrival_rate=160.0, latency=lat(0.25))))
    _, _, state = run(c, snap(0.0, over), state)  # low from t=0
    gap = replace(snap(10.0, over), data_age_s=None)
    _, state = c.decide(gap, state)
    r, reason, state = run(c, snap(15.0, over), state)  # 15 s after t=0, but not seen low
    assert r == 10 and "held: low for 0.0s" in reason
    r, _, _ = run(c, snap(30.0, over), state)
    assert r == 8

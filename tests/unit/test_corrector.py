"""The Replica Corrector (control/corrector/corrector.py): a joint plan, model-input
feedback, hysteresis and guards, tick by tick with explicit ``now``."""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import replace

import pytest

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import ArrivalForecast, CorrectorState, ReplicaCorrector
from quartfaas.control.corrector.feedback import FeedbackState
from quartfaas.control.corrector.tailmodel import StageLoad, e2e_quantile
from quartfaas.control.policy import Action, Policy
from quartfaas.control.snapshot import (
    LatencyStats,
    PipelineSnapshot,
    StageSnapshot,
    make_snapshot,
    make_stage,
)

CFG = ControllerConfig()  # p99, util 0.8, delay 60 s, down cooldown 30 s, steps +8/-2


def lat(p99: float | None, count: int = 200) -> LatencyStats:
    if p99 is None:
        return LatencyStats()
    return LatencyStats(count=count, mean_s=p99 / 3, p50_s=p99 / 3, p95_s=p99 / 1.5, p99_s=p99)


def stage(name: str = "s0", index: int = 0, **kw: object) -> StageSnapshot:
    """λ=20/s, exponential service of 50 ms (1 erlang), 3 ready replicas, max 16."""
    base: dict[str, object] = dict(
        min_replicas=1,
        max_replicas=16,
        ready_replicas=3,
        arrival_rate=20.0,
        arrival_cv=1.0,
        departure_rate=20.0,
        service_mean_s=0.05,
        service_scv=1.0,
        in_flight=1,
    )
    base.update(kw)
    return make_stage(name, index, **base)


def snap(now: float = 0.0, slo: float = 0.9, **kw: object) -> PipelineSnapshot:
    return replace(make_snapshot(stages=(stage(**kw),), now=now), slo_p99_s=slo)


def run(
    pol: ReplicaCorrector, snaps: list[PipelineSnapshot], state: CorrectorState | None = None
) -> list[tuple[int, str]]:
    state = state if state is not None else pol.initial_state(snaps[0])
    out = []
    for s in snaps:
        d, state = pol.decide(s, state)
        out.append((d.stages[0].replicas, d.stages[0].reason))
    return out


def test_is_a_policy() -> None:
    assert isinstance(ReplicaCorrector(CFG), Policy)


def test_issue_example_is_feasible_end_to_end() -> None:
    # Issue 12: 3 stages of exponential 100 ms service, SLO 900 ms. Every per-stage
    # budget (300 ms) is below the service p99 (460 ms), so the old split gave up; the
    # end-to-end p99 with no waiting is ~841 ms, so a joint plan meets it.
    stages = tuple(
        stage(f"s{i}", i, arrival_rate=8.0, service_mean_s=0.1, ready_replicas=1) for i in range(3)
    )
    s = PipelineSnapshot(now=0.0, pipeline="p", slo_p99_s=0.9, stages=stages, source="test")
    pol = ReplicaCorrector(CFG)
    d, _ = pol.decide(s, pol.initial_state(s))
    counts = [x.replicas for x in d.stages]
    assert all(c < 16 for c in counts), counts  # not "give up and go to max"
    loads = [StageLoad(f"s{i}", 8.0, 0.1) for i in range(3)]
    assert e2e_quantile(loads, counts, 0.99) <= 0.9
    assert "plan feasible" in d.reason
    assert all("joint plan" in x.reason and "derived budget" in x.reason for x in d.stages)


def test_too_slow_scales_up_at_once_and_says_why() -> None:
    pol = ReplicaCorrector(CFG)
    ((n, why),) = run(pol, [snap(arrival_rate=60.0, slo=0.3)])
    assert n > 3
    assert "modelled p99" in why and "vs SLO 0.3s" in why and "λ=60/s" in why
    assert "up 3 -> " in why and "at once" in why


def test_scale_down_waits_for_the_delay_then_goes_to_the_highest_plan() -> None:
    pol = ReplicaCorrector(CFG)
    big = [snap(float(t), ready_replicas=10, arrival_rate=20.0) for t in range(0, 200)]
    out = run(pol, big)
    counts = [n for n, _ in out]
    first_down = next(t for t, n in enumerate(counts) if n < 10)
    assert first_down >= CFG.downscale_delay_s
    assert "after" in out[first_down][1] and "low" in out[first_down][1]
    assert "plan" in out[5][1] and "< 10 for" in out[5][1]
    # max_step_down 2: the first action removes 2 ...
    assert counts[first_down] == 8 and "capped by max_step_down 2" in out[first_down][1]


def test_a_cut_short_scale_down_continues_without_a_new_delay() -> None:
    pol = ReplicaCorrector(CFG.model_copy(update={"down_cooldown_s": 0.0}))
    state = None
    ready = 10
    seen = []
    for t in range(0, 90):
        s = snap(float(t), ready_replicas=ready)
        state = state if state is not None else pol.initial_state(s)
        d, state = pol.decide(s, state)
        ready = d.stages[0].replicas
        seen.append(ready)
    first = next(t for t, n in enumerate(seen) if n < 10)
    # 10 -> 8 -> 6 -> ... on consecutive ticks, not one step per downscale delay
    assert seen[first : first + 3] == [8, 6, 4] or seen[first + 1] < 8


def test_starting_replicas_count_toward_the_plan() -> None:
    pol = ReplicaCorrector(CFG)
    s = snap(arrival_rate=60.0, slo=0.3)
    ((want, _),) = run(pol, [s])
    # The backend started them: the next snapshot shows them as starting, same load.
    applied = snap(1.0, arrival_rate=60.0, slo=0.3, ready_replicas=3, starting_replicas=want - 3)
    ((again, why),) = run(pol, [applied])
    assert again == want and "plan met" in why


def test_idle_stage_goes_to_min_only_after_the_delay() -> None:
    pol = ReplicaCorrector(CFG)
    idle = [
        snap(float(t), arrival_rate=0.0, departure_rate=0.0, in_flight=0, ready_replicas=4)
        for t in range(0, 80)
    ]
    counts = [n for n, _ in run(pol, idle)]
    delay = int(CFG.downscale_delay_s)
    assert all(n == 4 for n in counts[:delay])
    assert counts[delay] == 2  # toward min_replicas 1, max_step_down 2 at a time


def test_queue_backlog_drives_scale_up() -> None:
    pol = ReplicaCorrector(CFG)
    ((calm, _),) = run(pol, [snap(slo=0.9)])
    # a queue of steady load is what the model plans for ...
    ((n, _),) = run(pol, [snap(slo=0.9, queue_len=20)])
    assert n == calm
    # ... a growing one (arrivals outpace departures) must drain within a window
    ((n, why),) = run(pol, [snap(slo=0.9, queue_len=1000, departure_rate=10.0)])
    assert n > calm and "queue 1000 needs 6" in why and "to drain in 10s" in why


def test_cold_start_from_zero_replicas() -> None:
    pol = ReplicaCorrector(CFG)
    ((n, _),) = run(pol, [snap(ready_replicas=0, min_replicas=0, arrival_rate=5.0)])
    assert n >= 1
    # no service time measured yet (nothing completed): still one replica for the work
    ((n, why),) = run(
        pol, [snap(ready_replicas=0, min_replicas=0, service_mean_s=None, queue_len=3)]
    )
    assert n == 1 and "not planned" in why


def test_targets_stay_within_bounds_and_step_limits() -> None:
    pol = ReplicaCorrector(CFG)
    ((n, why),) = run(pol, [snap(arrival_rate=400.0, slo=0.3, max_replicas=8)])
    assert n <= 8
    ((n, why),) = run(pol, [snap(arrival_rate=400.0, slo=0.3, max_replicas=64)])
    assert n == 3 + CFG.max_step_up and "capped by max_step_up" in why


def test_no_data_holds_everything() -> None:
    pol = ReplicaCorrector(CFG)
    s = replace(snap(), data_age_s=None)
    d, _ = pol.decide(s, pol.initial_state(s))
    assert d.hold and d.reason.startswith("no-data")
    s = replace(snap(), data_age_s=CFG.stale_after_s + 1)
    d, _ = pol.decide(s, pol.initial_state(s))
    assert d.hold and all(x.action is Action.HOLD for x in d.stages)


def test_unknown_rate_or_service_time_is_held_and_its_tail_leaves_the_plan() -> None:
    a = stage("a", 0, arrival_rate=None, latency=lat(0.4))
    b = stage("b", 1, arrival_rate=20.0)
    s = PipelineSnapshot(now=0.0, pipeline="p", slo_p99_s=0.9, stages=(a, b), source="test")
    pol = ReplicaCorrector(CFG)
    d, _ = pol.decide(s, pol.initial_state(s))
    assert d.stages[0].replicas == 3 and "arrival rate unknown" in d.stages[0].reason
    assert "SLO less unplanned stages' tails 0.5s" in d.reason
    assert "vs SLO 0.5s" in d.stages[1].reason


def test_slo_below_service_alone_is_planned_for_the_service_floor() -> None:
    # SLO 100 ms below the service p99 (~230 ms): no count meets it; the plan says so and
    # sizes for 1.25x the service-only p99 instead of sending the stage to max_replicas.
    pol = ReplicaCorrector(CFG)
    ((n, why),) = run(pol, [snap(slo=0.1)])
    assert n < 16 and "service alone has a p99" in why and "planned for" in why


def test_feedback_learns_a_slower_service_and_adds_replicas_bounded() -> None:
    # The stage is measured far slower than the model of its service says (CPU contention,
    # say): the factor rises, filtered and bounded by 1 + max_rel, and the plan grows.
    pol = ReplicaCorrector(CFG)
    ticks = [snap(float(t), slo=0.5, ready_replicas=3, latency=lat(2.0, 500)) for t in range(400)]
    state = pol.initial_state(ticks[0])
    factors = []
    for s in ticks:
        d, state = pol.decide(s, state)
        factors.append(state.feedback.factor("s0"))
    assert factors[0] > 1.0 and factors[0] < 1.5  # filtered: one update is a step, not a jump
    assert factors[-1] == pytest.approx(1.0 + CFG.feedback.max_rel)
    # updates at most every min_dt_s: the factor moves only on those ticks
    moves = sum(1 for a, b in itertools.pairwise(factors) if a != b)
    assert moves <= math.ceil(400 / CFG.feedback.min_dt_s)
    assert "service-time factor x1.5" in d.stages[0].reason


def test_feedback_below_one_never_plans_beyond_measured_capacity() -> None:
    # The measured tail is far below the model's (the model over-states the wait), so the
    # learned factor falls to its bound. The plan may shrink, but never below the count
    # whose *measured* service time keeps utilisation at the target: a factor < 1 is no
    # evidence that a replica serves faster than measured.
    pol = ReplicaCorrector(CFG)
    kw = dict(arrival_rate=100.0, departure_rate=100.0, service_mean_s=0.05, ready_replicas=8)
    ticks = [snap(float(t), slo=2.0, latency=lat(0.06, 5000), **kw) for t in range(0, 600, 10)]
    state = pol.initial_state(ticks[0])
    for s in ticks:
        tick, state = pol.targets(s, state)
    assert state.feedback.factor("s0") == pytest.approx(1.0 / (1.0 + CFG.feedback.max_rel))
    floor = math.ceil(100.0 * 0.05 / CFG.target_utilisation)  # 7 replicas of 1 slot
    assert tick.stages[0].model == floor
    # the same snapshot with the factor applied to capacity too would plan fewer
    shrunk = StageLoad("s0", 100.0, 0.05 * state.feedback.factor("s0"), 1.0, 1.0)
    assert math.ceil(shrunk.offered_load / CFG.target_utilisation) < floor


def test_the_utilisation_target_caps_the_measured_load_not_the_corrected_one() -> None:
    # A learned factor of 1.5 makes the model's load 0.9 on one replica, the measured
    # load is 0.6 (under the 0.8 target), and the SLO leaves room for the modelled wait:
    # one replica. Capping the corrected load at the target too asked for a second (on
    # the paper cluster it added replicas on short peaks that the SLO did not need).
    pol = ReplicaCorrector(CFG)
    s = snap(0.0, slo=10.0, arrival_rate=12.0, departure_rate=12.0, ready_replicas=1,
             latency=lat(0.2, 500))  # fmt: skip
    learned = FeedbackState((("s0", 1.5),), last_now=0.0)  # no update on this tick
    state = replace(pol.initial_state(s), feedback=learned)
    tick, _ = pol.targets(s, state)
    assert tick.stages[0].model == 1, tick.stages[0].reason
    assert "service-time factor x1.5" in tick.stages[0].reason
    # and the model still decides: a tight SLO gets the second replica
    tick, _ = pol.targets(replace(s, slo_p99_s=2.0), state)
    assert tick.stages[0].model == 2, tick.stages[0].reason


def test_feedback_waits_for_enough_samples_and_a_steady_count() -> None:
    pol = ReplicaCorrector(CFG)
    few = snap(latency=lat(2.0, count=50))  # p99 of 50 samples is no measurement
    _, st = pol.decide(few, pol.initial_state(few))
    assert st.feedback.factor("s0") == 1.0
    starting = snap(latency=lat(2.0), starting_replicas=2)
    _, st = pol.decide(starting, pol.initial_state(starting))
    assert st.feedback.factor("s0") == 1.0


def test_feedback_reads_the_slo_percentile() -> None:
    cfg = CFG.model_copy(update={"percentile": 0.95})
    pol = ReplicaCorrector(cfg)
    s = snap(latency=LatencyStats(200, 0.05, 0.05, 0.4, 9.0))  # p95 slow, p99 absurd
    d, st = pol.decide(s, pol.initial_state(s))
    assert "p95 measured vs modelled" in d.reason
    assert "modelled p95" in d.stages[0].reason
    # it compared the p95 (0.4 s), not the p99 (9 s): the factor is bounded well below max
    assert 1.0 < st.feedback.factor("s0") < 1.0 + cfg.feedback.max_rel


def test_forecast_raises_the_plan_for_a_coming_burst() -> None:
    pol = ReplicaCorrector(CFG)
    s = snap(slo=0.4)
    base, _ = pol.targets(s, pol.initial_state(s))
    fc = [ArrivalForecast("s0", 16.0, 40.0, "test burst")]
    burst, _ = pol.targets(s, pol.initial_state(s), fc)
    assert burst.stages[0].target > base.stages[0].target
    assert "[forecast: test burst]" in burst.stages[0].reason and "burst 16" in (
        burst.stages[0].reason
    )
    # a forecast below the measurement never lowers the plan
    calm = [ArrivalForecast("s0", 0.1, 1.0, "calm")]
    low, _ = pol.targets(s, pol.initial_state(s), calm)
    assert low.stages[0].target == base.stages[0].target


def test_new_stage_in_a_running_state_starts_fresh() -> None:
    pol = ReplicaCorrector(CFG)
    one = snap()
    _, state = pol.decide(one, pol.initial_state(one))
    two = PipelineSnapshot(
        now=1.0,
        pipeline="p",
        slo_p99_s=0.9,
        stages=(stage("s0", 0), stage("new", 1)),
        source="test",
    )
    d, st = pol.decide(two, state)
    assert [s.name for s in st.stages] == ["s0", "new"]
    assert len(d.stages) == 2


def test_retired_keys_are_ignored_with_a_warning() -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        cfg = ControllerConfig.model_validate({"pid": {"kp": 2.0}, "stage_budget": "equal"})
    assert cfg == ControllerConfig()
    text = " ".join(str(w.message) for w in caught)
    assert "controller.pid is ignored" in text and "controller.stage_budget is ignored" in text
    with pytest.raises(ValueError, match="extra"):
        ControllerConfig.model_validate({"no_such_key": 1})


def _two_stage(s0: dict[str, object], s1: dict[str, object]) -> PipelineSnapshot:
    """Two stages at 5 req/s (10 s windows of ~50 arrivals: a ±40% noise band), an SLO loose
    enough that utilisation alone sets the plan."""
    base: dict[str, object] = dict(arrival_rate=5.0, departure_rate=5.0, in_flight=0)
    stages = (stage("s0", 0, **{**base, **s0}), stage("s1", 1, **{**base, **s1}))
    return PipelineSnapshot(now=0.0, pipeline="p", slo_p99_s=30.0, stages=stages, source="test")


@pytest.mark.parametrize(
    ("s0", "s1_up_at_once"),
    [
        # stage 0 steady: stage 1's rise (load 1.75 on 2 replicas, above the 0.8 target
        # but within the noise band) waits upscale_confirm_s
        ({"service_mean_s": 0.01, "ready_replicas": 1}, False),
        # stage 0's rise is clear (load 2.5 on 1 replica): the same stream reaches stage 1,
        # whose within-noise rise goes at once instead of waiting for its own samples
        ({"service_mean_s": 0.5, "ready_replicas": 1}, True),
    ],
)
def test_a_clear_rise_upstream_clears_the_stages_after_it(
    s0: dict[str, object], s1_up_at_once: bool
) -> None:
    pol = ReplicaCorrector(CFG.model_copy(update={"upscale_confirm_s": 20.0}))
    s = _two_stage(s0, {"service_mean_s": 0.35, "ready_replicas": 2})
    t, _ = pol.targets(s, pol.initial_state(s))
    assert (t.stages[1].target > 2) is s1_up_at_once, t.stages[1].reason


def test_a_clear_rise_downstream_does_not_clear_the_stages_before_it() -> None:
    # the burst reaches stage 0 first: a clear rise at stage 1 says nothing new about it
    pol = ReplicaCorrector(CFG.model_copy(update={"upscale_confirm_s": 20.0}))
    s = _two_stage(
        {"service_mean_s": 0.35, "ready_replicas": 2}, {"service_mean_s": 0.5, "ready_replicas": 1}
    )
    t, _ = pol.targets(s, pol.initial_state(s))
    assert t.stages[1].target > 1, t.stages[1].reason
    assert t.stages[0].target == 2, t.stages[0].reason


def test_the_down_scale_threshold_in_arrays_is_plan_above_of_the_moved_stages() -> None:
    """``_above_band`` (arrays) gives ``plan_above`` of the stages built one by one:
    ``_band`` per stage, ``with_load`` with the corrected service, ``floor_at``."""
    import random

    from quartfaas.control.corrector.corrector import _DOWN_Z, _above_band, _band
    from quartfaas.control.corrector.inputs import floor_at
    from quartfaas.control.corrector.planner import plan_above, plan_replicas

    cfg = ControllerConfig.model_validate({})
    rng = random.Random(3)
    checked = 0
    for trial in range(40):
        n = rng.randint(1, 12)
        window = rng.choice((1.0, 5.0, 10.0))
        measured = [
            StageLoad(
                f"s{i}",
                rng.choice((0.0, 0.3, rng.uniform(0.5, 60.0))),
                rng.uniform(0.005, 0.08),
                rng.choice((0.0, rng.uniform(0.01, 0.5), 1.0, 2.5)),
                rng.uniform(0.5, 3.0),
                rng.choice((None, rng.uniform(1.0, 6.0))),
                servers_per_replica=rng.choice((1, 2)),
                min_replicas=rng.choice((0, 1, 2)),
                max_replicas=rng.choice((4, 16, 64)),
            )
            for i in range(n)
        ]
        factors = [rng.choice((1.0, rng.uniform(0.6, 1.8))) for _ in range(n)]
        planned = [
            floor_at(
                s.with_load(s.arrival_rate, s.service_mean_s * f),
                s.offered_load,
                cfg.target_utilisation,
            )
            for s, f in zip(measured, factors, strict=True)
        ]
        slo = 3.0 * sum(s.service_mean_s for s in measured) + rng.uniform(0.05, 0.5)
        plan = plan_replicas(planned, slo, cfg.percentile)
        frac = rng.choice((0.0, 0.1, 0.3))
        moved = []
        for s, f in zip(measured, factors, strict=True):
            rate = s.arrival_rate * (1.0 + _band(frac, s.arrival_rate * window, _DOWN_Z))
            moved.append(
                floor_at(
                    s.with_load(rate, s.service_mean_s * f),
                    rate * s.service_mean_s,
                    cfg.target_utilisation,
                )
            )
        want = plan_above(moved, plan.slo_s, plan.replicas, cfg.percentile)
        got = _above_band(measured, planned, plan, [window] * n, frac=frac, cfg=cfg)
        assert got == want, trial
        checked += any(w > p for w, p in zip(want, plan.replicas, strict=True))
    assert checked >= 5  # the threshold held some stage above its plan on several trials


@pytest.mark.parametrize(
    ("arrivals", "low"),
    [
        # a full 10 s window of 20/s: the band is 3·sqrt(2/200) = 30%, a plan for 1.3x
        # the load fits 2 replicas, so the plan's 2 < 3 starts a low period
        (200, True),
        # 1 s into a young window (rates over the time seen so far): 20 arrivals, a band
        # of 95%, whose plan needs the 3 replicas the stage has: no low period
        (20, False),
        # a collector that does not count arrivals: rate x window, the full window's
        (0, True),
    ],
)
def test_the_down_scale_band_counts_the_arrivals_of_the_time_the_rate_covers(
    arrivals: int, low: bool
) -> None:
    pol = ReplicaCorrector(CFG)
    s = snap(arrivals=arrivals)
    t, _ = pol.targets(s, pol.initial_state(s))
    target = t.stages[0]
    assert target.model == 2, target.reason
    assert target.target == 3
    assert ("low since now" in target.reason) is low, target.reason
    assert ("plan met" in target.reason) is not low, target.reason


def test_the_observed_span_is_the_count_over_the_rate_within_the_window() -> None:
    from quartfaas.control.corrector.inputs import observed_s

    assert observed_s(stage(arrivals=37), 20.0, 10.0) == 37.0 / 20.0  # a young window
    assert observed_s(stage(arrivals=0), 20.0, 10.0) == 10.0  # no count: the window
    assert observed_s(stage(arrivals=5), 0.0, 10.0) == 10.0  # no rate: the window
    # a full window's count over its rate is the window to rounding: the window itself
    rate = 203 / 10.0
    assert observed_s(stage(arrivals=203), rate, 10.0) == 10.0
    assert observed_s(stage(arrivals=203), 203 / (10.0 * (1 + 3e-16)), 10.0) == 10.0


def test_a_rise_within_a_young_windows_noise_waits_for_confirmation() -> None:
    # 40/s on 2 replicas of 50 ms: load 2, the plan (0.8 target) asks for 3. Less a full
    # window's noise (400 arrivals: 2·sqrt(2/400) = 14%) the load still needs 3: a clear
    # rise, made at once. Less the noise of 40 arrivals (1 s of a young window: 45%) it
    # needs 2: within the noise, so with upscale_confirm_s the stage waits.
    pol = ReplicaCorrector(CFG.model_copy(update={"upscale_confirm_s": 20.0}))
    outcomes = {}
    for arrivals in (400, 40):
        s = snap(arrivals=arrivals, arrival_rate=40.0, ready_replicas=2)
        t, _ = pol.targets(s, pol.initial_state(s))
        outcomes[arrivals] = t.stages[0]
    assert outcomes[400].model == outcomes[40].model == 3
    assert outcomes[400].target == 3, outcomes[400].reason
    assert outcomes[40].target == 2, outcomes[40].reason
    assert "within the noise band" in outcomes[40].reason

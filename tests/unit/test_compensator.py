"""The CPU Compensator's state machine, driven by a fake clock (no sleeps)."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from quartfaas.clock import FakeClock
from quartfaas.control.compensator import (
    CompensatorConfig,
    CompensatorState,
    CpuCompensator,
    DemandModel,
    Phase,
    StageCpuState,
    compensate,
    episode_sample,
)
from quartfaas.control.policy import Decision, StageDecision
from quartfaas.control.snapshot import LatencyStats, StageSnapshot, make_snapshot, make_stage

BUDGET = 0.5
PROTO = DemandModel.prototype()


def stage(
    p99: float | None = None,
    util: float | None = None,
    replicas: int = 2,
    cpu: float = 1.0,
    count: int = 100,
) -> StageSnapshot:
    lat = LatencyStats(count=count, p50_s=p99, p95_s=p99, p99_s=p99) if p99 else LatencyStats()
    return make_stage(
        ready_replicas=replicas, cpu_per_replica=cpu, cpu_utilisation=util, latency=lat
    )


class Driver:
    """Feeds ticks to ``compensate`` and keeps the 'applied' CPU like the loop would."""

    def __init__(self, cfg: CompensatorConfig, replicas: int = 4, cpu: float = 1.0) -> None:
        self.cfg = cfg
        self.clock = FakeClock(100.0)
        self.state = StageCpuState()
        self.cpu = cpu
        self.replicas = replicas

    def tick(
        self,
        p99: float | None,
        util: float | None = None,
        *,
        to_replicas: int | None = None,
        budget: float | None = BUDGET,
        advance_s: float = 0.0,
    ) -> tuple[float | None, str]:
        self.clock.advance(advance_s)
        snap = stage(p99, util, replicas=self.replicas, cpu=self.cpu)
        target, why, self.state = compensate(
            snap,
            budget,
            self.replicas,
            self.state,
            self.clock.now(),
            self.cfg,
            PROTO,
            new_replicas=to_replicas if to_replicas is not None else self.replicas,
        )
        if to_replicas is not None:
            self.replicas = to_replicas
        if target is not None:
            if target != self.cpu:
                assert why, "every change of the CPU target carries a reason"
            self.cpu = target
        return target, why


CFG = CompensatorConfig(host_cores=16)


def test_idle_stage_is_left_alone() -> None:
    d = Driver(CFG)
    assert d.tick(0.2, util=0.5) == (None, "")
    assert d.state.phase is Phase.IDLE


def test_consolidation_raises_by_a_quarter_of_the_gap_then_waits_to_settle() -> None:
    d = Driver(CFG, replicas=4)
    target, why = d.tick(0.4, to_replicas=2)
    demand = 1.0 + PROTO.overhead(2.0)  # 3.66 cores: λc = 4/2
    assert target == pytest.approx(1.0 + 0.25 * (demand - 1.0))
    assert "consolidation 4->2" in why and "step 1/5" in why
    assert d.state.phase is Phase.RAISING
    assert d.state.demand_cpu == pytest.approx(demand)
    # Within the settle window nothing is judged, whatever the latency does.
    for _ in range(9):
        again, _ = d.tick(5.0, advance_s=1.0)
        assert again == target
        assert d.state.phase is Phase.RAISING and d.state.steps == 1


def test_minimum_first_increment_applies_when_the_gap_is_small() -> None:
    model = DemandModel(alpha=0.0, gamma=0.0, static_cores=0.2)
    snap = stage(0.4, replicas=4)
    target, _, _ = compensate(snap, BUDGET, 4, StageCpuState(), 0.0, CFG, model, new_replicas=2)
    assert target == pytest.approx(1.5)


def test_holds_when_the_budget_is_met_after_settling() -> None:
    d = Driver(CFG)
    first, _ = d.tick(0.4, to_replicas=2)
    target, why = d.tick(0.45, advance_s=10.0)
    assert target == first
    assert d.state.phase is Phase.HOLDING and d.state.outcome == "met-budget"
    assert "within" in why or "<=" in why
    assert episode_sample(d.state) is not None


def test_raises_again_with_half_the_increment_while_over_budget() -> None:
    d = Driver(CFG)
    first, _ = d.tick(0.4, to_replicas=2)
    inc = d.state.increment
    second, why = d.tick(0.9, advance_s=10.0)  # first post-consolidation step: over budget
    assert second == pytest.approx(first + inc / 2)
    assert d.state.steps == 2 and "step 2/5" in why
    third, _ = d.tick(0.8, advance_s=10.0)  # 11 % better than 0.9
    assert third == pytest.approx(second + inc / 4)


def test_a_raise_that_gains_under_5_percent_is_taken_back_and_raising_stops() -> None:
    d = Driver(CFG)
    d.tick(0.4, to_replicas=2)
    second, _ = d.tick(0.9, advance_s=10.0)
    accepted = d.state.cpu
    target, why = d.tick(0.88, advance_s=10.0)  # 2.2 % better
    assert target == pytest.approx(accepted) and target < second
    assert d.state.phase is Phase.HOLDING and d.state.outcome == "no-gain"
    assert "taken back" in why
    # Holding: no more raises however long it stays over budget (until re-armed).
    for _ in range(5):
        held, _ = d.tick(0.88, util=0.7, advance_s=10.0)
        assert held == target


def test_stops_after_max_steps() -> None:
    cfg = CompensatorConfig(host_cores=64, max_cpu=64, stop_increment=0.0, max_steps=3)
    d = Driver(cfg, replicas=8)
    d.tick(4.0, to_replicas=1)
    latency = 4.0
    for _ in range(10):
        latency *= 0.8  # every raise pays 20 %, never enough for the budget
        d.tick(latency, advance_s=10.0)
    assert d.state.phase is Phase.HOLDING and d.state.outcome == "max-steps"
    assert d.state.steps == 3


def test_the_cap_is_the_host_cores_and_is_reported() -> None:
    cfg = CompensatorConfig(host_cores=2)
    d = Driver(cfg, replicas=8)
    target, _ = d.tick(2.0, to_replicas=1)  # demand 1 + 7.9: first raise capped
    assert target == 2.0
    target, why = d.tick(1.5, advance_s=10.0)
    assert target == 2.0 and d.state.outcome == "at-cap" and "add replicas" in why


def test_give_back_when_utilisation_stays_low() -> None:
    d = Driver(CFG)
    d.tick(0.4, to_replicas=2)
    held, _ = d.tick(0.3, advance_s=10.0)
    assert d.state.phase is Phase.HOLDING
    d.tick(0.1, util=0.1, advance_s=1.0)
    target, _ = d.tick(0.1, util=0.1, advance_s=59.5)
    assert target == held  # not yet: release_after_s is 60 s
    target, why = d.tick(0.1, util=0.1, advance_s=0.5)
    assert target == 1.0 and "given back" in why
    assert d.state == StageCpuState()
    assert d.tick(0.1, util=0.1, advance_s=1.0) == (None, "")


def test_a_load_blip_restarts_the_release_timer() -> None:
    d = Driver(CFG)
    d.tick(0.4, to_replicas=2)
    held, _ = d.tick(0.3, advance_s=10.0)
    d.tick(0.1, util=0.1, advance_s=1.0)
    d.tick(0.1, util=0.8, advance_s=30.0)  # load came back
    target, _ = d.tick(0.1, util=0.1, advance_s=40.0)
    assert target == held
    target, _ = d.tick(0.1, util=0.1, advance_s=60.0)
    assert target == 1.0


def test_partial_give_back_keeps_headroom_over_what_is_used() -> None:
    cfg = CompensatorConfig(host_cores=16)
    st = StageCpuState(phase=Phase.HOLDING, base_cpu=1.0, cpu=4.0, since=0.0, low_since=0.0)
    snap = stage(0.1, util=0.45, cpu=4.0)  # 1.8 cores used of 4
    target, why, nxt = compensate(snap, BUDGET, 2, st, 100.0, cfg, PROTO)
    assert target == pytest.approx(1.8 / 0.7)
    assert nxt.phase is Phase.HOLDING and nxt.cpu == target and "given back" in why


def test_cpu_bound_stage_triggers_without_consolidation() -> None:
    d = Driver(CFG, replicas=2)
    target, why = d.tick(0.9, util=0.97)
    assert target is not None and target > 1.0
    assert "CPU-bound" in why and d.state.comparable
    assert d.state.concentration == 1.0


def test_busy_but_within_budget_or_without_budget_is_not_cpu_bound() -> None:
    d = Driver(CFG)
    assert d.tick(0.3, util=0.99) == (None, "")
    assert d.tick(0.9, util=0.99, budget=None) == (None, "")
    assert d.tick(0.9, util=0.5) == (None, "")


def test_consolidation_that_leaves_plenty_of_cpu_raises_nothing() -> None:
    d = Driver(CFG, replicas=4)
    target, why = d.tick(0.2, util=0.3, to_replicas=3)  # predicted 40 %
    assert target is None and "no raise" in why and d.state.phase is Phase.IDLE


def test_no_latency_samples_after_settling_holds() -> None:
    d = Driver(CFG)
    first, _ = d.tick(None, to_replicas=2)
    target, why = d.tick(None, advance_s=10.0)
    assert target == first and d.state.outcome == "no-data" and "no latency" in why


def test_too_few_latency_samples_count_as_no_data() -> None:
    snap = stage(0.9, util=0.99, count=3)
    assert compensate(snap, BUDGET, 2, StageCpuState(), 0.0, CFG)[0] is None


def test_a_stage_without_replicas_resets() -> None:
    d = Driver(CFG)
    d.tick(0.4, to_replicas=2)
    target, why = d.tick(0.4, to_replicas=0, advance_s=1.0)
    assert target is None and "reset" in why and d.state.phase is Phase.IDLE


def test_without_a_budget_the_first_step_compares_with_before_the_consolidation() -> None:
    d = Driver(CFG)
    first, _ = d.tick(0.4, to_replicas=2, budget=None)
    target, _ = d.tick(0.39, advance_s=10.0, budget=None)
    assert target == first and d.state.outcome == "met-budget"


def test_config_errors_quote_both_values() -> None:
    with pytest.raises(ValidationError, match=r"max_cpu \(2.0\) must be >= min_cpu \(4.0\)"):
        CompensatorConfig(min_cpu=4, max_cpu=2)
    with pytest.raises(ValidationError, match=r"host_cores \(1.0\) must be >= min_cpu \(2.0\)"):
        CompensatorConfig(min_cpu=2, host_cores=1)
    with pytest.raises(ValidationError, match="release_utilisation_frac"):
        CompensatorConfig(release_utilisation_frac=0.8)
    assert CompensatorConfig(host_cores=2).cap_cpu == 2
    assert CompensatorConfig().cap_cpu == 16


# --- CpuCompensator.apply: the Decision post-processor ---------------------------------


def _decision(now: float, targets: dict[str, tuple[int, int]], hold: bool = False) -> Decision:
    return Decision(
        now=now,
        policy="test",
        hold=hold,
        stages=tuple(
            StageDecision(stage=n, current=c, replicas=r, reason=f"{n}: queueing")
            for n, (c, r) in targets.items()
        ),
    )


def _snapshot(now: float, replicas: int, p99: float, cpu: float = 1.0):  # type: ignore[no-untyped-def]
    lat = LatencyStats(count=100, p99_s=p99, p95_s=p99, p50_s=p99)
    return make_snapshot(
        n_stages=2, now=now, ready_replicas=replicas, latency=lat, cpu_per_replica=cpu
    )


def test_apply_sets_cpu_and_reasons_but_never_replica_counts() -> None:
    comp = CpuCompensator(CompensatorConfig(host_cores=16))
    snap = _snapshot(0.0, 4, 0.4)
    state = comp.initial_state(snap)
    decision = _decision(0.0, {"s0": (4, 2), "s1": (4, 4)})
    out, state = comp.apply(decision, snap, (0.5, 0.5), state)
    s0, s1 = out.stages
    assert (s0.current, s0.replicas, s1.current, s1.replicas) == (4, 2, 4, 4)
    assert s0.cpu_per_replica is not None and s0.cpu_per_replica > 1.0
    assert s0.reason.startswith("s0: queueing; cpu 1->")
    assert s1.cpu_per_replica is None and s1.reason == "s1: queueing"
    assert state.get("s0").phase is Phase.RAISING and state.get("s1").phase is Phase.IDLE


def test_apply_passes_held_decisions_through_untouched() -> None:
    comp = CpuCompensator()
    snap = _snapshot(0.0, 4, 0.4)
    decision = _decision(0.0, {"s0": (4, 2), "s1": (4, 4)}, hold=True)
    state = CompensatorState()
    assert comp.apply(decision, snap, {"s0": 0.5}, state) == (decision, state)


def test_apply_judges_no_sooner_than_one_measurement_window() -> None:
    comp = CpuCompensator(CompensatorConfig(host_cores=16, settle_s=5))
    snap = _snapshot(0.0, 4, 0.4)  # window_s 10 > settle_s 5
    out, state = comp.apply(_decision(0.0, {"s0": (4, 2)}), snap, {"s0": 0.5}, CompensatorState())
    cpu = out.stages[0].cpu_per_replica
    assert cpu is not None
    later = _snapshot(7.0, 2, 0.45, cpu=cpu)
    _, state = comp.apply(_decision(7.0, {"s0": (2, 2)}), later, {"s0": 0.5}, state)
    assert state.get("s0").phase is Phase.RAISING
    later = _snapshot(10.0, 2, 0.45, cpu=cpu)
    _, state = comp.apply(_decision(10.0, {"s0": (2, 2)}), later, {"s0": 0.5}, state)
    assert state.get("s0").phase is Phase.HOLDING


def test_apply_leaves_a_cpu_target_set_by_the_policy() -> None:
    comp = CpuCompensator()
    snap = _snapshot(0.0, 4, 0.4)
    d = Decision(
        now=0.0,
        policy="p",
        stages=(StageDecision("s0", 4, 2, "mine", cpu_per_replica=3.0),),
    )
    out, _ = comp.apply(d, snap, {"s0": 0.5}, CompensatorState())
    assert out == d


# -- not crediting the corrector's work; the host's cores as the cap ------------------------


def test_a_replica_change_while_a_raise_settles_is_not_credited_to_cpu() -> None:
    d = Driver(CFG)
    d.tick(0.4, to_replicas=2)  # consolidation 4 -> 2: a raise
    second, _ = d.tick(0.9, advance_s=10.0)  # over budget: step 2, judged by its gain
    assert d.state.comparable and d.state.replicas_at_step == 2
    # The corrector adds replicas while step 2 settles: the next latency drop is theirs.
    same, why = d.tick(0.85, to_replicas=4, advance_s=2.0)
    assert same == pytest.approx(second)
    assert "not the CPU's" in why and "settle restarts" in why
    assert d.state.since == d.clock.now() and not d.state.comparable
    # Half a settle later nothing is judged yet (the settle period restarted) ...
    held, _ = d.tick(0.6, advance_s=5.0)
    assert held == pytest.approx(second) and d.state.phase is Phase.RAISING
    # ... then it is judged against the budget only: no "gained 33%" from the replicas.
    third, why = d.tick(0.6, advance_s=5.0)
    assert third > second and "gained n/a" in why


def test_host_cores_cap_the_compensator() -> None:
    from quartfaas.control.config import ControllerConfig
    from quartfaas.control.quart import QuartPolicy

    assert QuartPolicy(predictor="qna", host_cores=2).compensator.cfg.cap_cpu == 2
    pol = QuartPolicy(ControllerConfig(host_cores=3), predictor="qna")
    assert pol.compensator.cfg.cap_cpu == 3
    explicit = CompensatorConfig(host_cores=8)
    pol = QuartPolicy(predictor="qna", host_cores=2, compensator_config=explicit)
    assert pol.compensator.cfg.cap_cpu == 8  # an explicit compensator setting wins
    assert QuartPolicy(predictor="qna").compensator.cfg.cap_cpu == CompensatorConfig().max_cpu
    # Two cores: the raises stop at the cap and say so.
    d = Driver(CompensatorConfig(host_cores=2), replicas=8)
    d.tick(0.9, to_replicas=2)
    for _ in range(6):
        d.tick(0.9, advance_s=10.0)
    assert d.cpu == pytest.approx(2.0) and d.state.outcome == "at-cap"


def test_host_cores_reads_affinity_and_the_cgroup_quota(tmp_path) -> None:
    from quartfaas.hostcores import cgroup_quota_cores, host_cores

    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_quota_cores(tmp_path) == pytest.approx(1.5)
    assert host_cores(tmp_path) <= 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_quota_cores(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert cgroup_quota_cores(v1) is None
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("300000")
    assert cgroup_quota_cores(v1) == pytest.approx(3.0)
    assert host_cores(tmp_path / "missing") >= 1.0


def test_with_cpu_is_replace():
    # Every field away from its default, so a field that with_cpu forgets shows up; and
    # every field is named, so one added later fails here until with_cpu lists it.
    from dataclasses import fields, replace

    d = StageDecision("s", 3, 5, "why", 1.5, True, 0.7)
    assert [f.name for f in fields(StageDecision)] == [
        "stage", "current", "replicas", "reason", "cpu_per_replica", "critical", "score",
    ]  # fmt: skip
    assert d.with_cpu(2.5, "more") == replace(d, cpu_per_replica=2.5, reason="more")
    assert d.with_cpu(None, "why") == replace(d, cpu_per_replica=None)

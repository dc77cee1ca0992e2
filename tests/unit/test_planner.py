"""The joint planner on cases with known answers."""

from __future__ import annotations

from quartfaas.control.corrector.planner import CHECK_GRID, PlanOutcome, plan_replicas
from quartfaas.control.corrector.tailmodel import StageLoad, e2e_quantile


def test_issue_example_is_feasible_at_high_utilisation() -> None:
    # Issue 12: 3 stages of exponential 100 ms service, SLO 900 ms. Per-stage budgets of
    # 300 ms are each below the service p99 (460 ms); the end-to-end SLO is not.
    stages = [StageLoad(f"s{i}", 8.0, 0.1) for i in range(3)]
    plan = plan_replicas(stages, 0.9)
    assert plan.outcome is PlanOutcome.FEASIBLE
    assert plan.quantile_s <= 0.9
    assert e2e_quantile(stages, plan.replicas, 0.99, grid=CHECK_GRID) <= 0.9
    assert all(b > 0.3 for b in plan.budgets_s)  # budgets are outputs, above the old split


def test_cheaper_stage_gets_the_extra_replicas() -> None:
    cheap = StageLoad("cheap", 40.0, 0.1, cost=1.0)
    dear = StageLoad("dear", 40.0, 0.1, cost=8.0)
    plan = plan_replicas([cheap, dear], 0.8)
    assert plan.outcome is PlanOutcome.FEASIBLE
    assert plan.replicas[0] > plan.replicas[1]  # equal costs give (6, 6) here
    assert plan.cost == plan.replicas[0] * 1.0 + plan.replicas[1] * 8.0


def test_infeasible_is_a_value_with_the_best_vector() -> None:
    stages = [StageLoad(f"s{i}", 8.0, 0.1, service_scv=0.0, max_replicas=4) for i in range(3)]
    plan = plan_replicas(stages, 0.2)  # 300 ms of deterministic service > 200 ms
    assert plan.outcome is PlanOutcome.INFEASIBLE and not plan.feasible
    assert plan.replicas == (4, 4, 4) and "service alone" in plan.reason
    tight = [StageLoad("a", 30.0, 0.1, max_replicas=4)]
    capped = plan_replicas(tight, 0.15)
    assert capped.outcome is PlanOutcome.INFEASIBLE and capped.replicas == (4,)
    over = plan_replicas([StageLoad("b", 100.0, 0.1, max_replicas=5)], 10.0)
    assert over.outcome is PlanOutcome.INFEASIBLE and "cannot carry" in over.reason


def test_idle_pipeline_plans_minimums() -> None:
    plan = plan_replicas([StageLoad("a", 0.0, 0.1, min_replicas=2)], 1.0)
    assert plan.outcome is PlanOutcome.IDLE and plan.replicas == (2,)

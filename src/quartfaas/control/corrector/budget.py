"""Critical-stage detection against the stage budgets a plan derives (pure).

Neighbours: ``corrector.py`` scores each stage against its derived budget (the stage's
modelled sojourn quantile at the joint plan, ``planner.Plan.budgets_s``); the smoother and
placement read the critical flags from the decision. The SLO is *not* split into budgets
that decide counts (issue 12: percentiles do not add, so such a split wastes replicas on
some stages and starves others); a budget here only says how far a stage is from what the
plan expected of it.

Critical stages use the prototype's score ``max(0, L - T)/T · (1 + λ/10)`` with ``L`` the
measured *tail* latency at the configured percentile (the prototype used the mean) and
``T`` the stage's derived budget (the prototype used one global 0.5 s). A stage is also
critical when its queue is growing (arrivals outpace departures or capacity), which the
latency percentile shows only after the window fills.
"""

from __future__ import annotations

import math
from typing import NamedTuple

from quartfaas.control.snapshot import StageSnapshot

# Arrivals must beat departures by this share before a queue counts as growing: rates
# over a window are noisy and a queue of a few requests is normal at 80 % utilisation.
GROWTH_TOLERANCE_FRAC = 0.05


def _known(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def queue_growing(stage: StageSnapshot) -> bool:
    """True when a non-empty queue is fed faster than the stage drains it."""
    if stage.queue_len <= 0:
        return False
    lam = stage.arrival_rate
    if lam is None or lam <= 0:
        return False
    if stage.ready_replicas == 0:
        return True
    if stage.departure_rate is not None and lam > stage.departure_rate * (
        1.0 + GROWTH_TOLERANCE_FRAC
    ):
        return True
    mean = stage.service_mean_s
    return mean is not None and _known(mean) and lam * mean >= stage.servers


class StageHealth(NamedTuple):
    """How one stage stands against its budget."""

    stage: str
    budget_s: float
    tail_s: float | None
    score: float
    queue_growing: bool
    critical: bool


def criticality_score(tail_s: float | None, budget_s: float, arrival_rate: float | None) -> float:
    """``max(0, L - T)/T · (1 + λ/10)``; 0 when the tail is unknown."""
    if tail_s is None or not budget_s > 0:
        return 0.0
    lam = arrival_rate if arrival_rate is not None and arrival_rate > 0 else 0.0
    return max(0.0, tail_s - budget_s) / budget_s * (1.0 + lam / 10.0)


def assess_stage(
    stage: StageSnapshot,
    budget_s: float,
    percentile: float,
    critical_score: float,
    growing: bool | None = None,
) -> StageHealth:
    """Score one stage on its measured tail latency at ``percentile`` (``growing``:
    ``queue_growing(stage)`` when the caller has it)."""
    tail = stage.latency.quantile(percentile)
    if tail is not None and not math.isfinite(tail):
        tail = None
    score = criticality_score(tail, budget_s, stage.arrival_rate)
    if growing is None:
        growing = queue_growing(stage)
    return StageHealth(
        stage=stage.name,
        budget_s=budget_s,
        tail_s=tail,
        score=score,
        queue_growing=growing,
        critical=score > critical_score or growing,
    )

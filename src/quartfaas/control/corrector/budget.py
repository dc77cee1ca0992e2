"""Per-stage latency budgets and critical-stage detection (pure, from one snapshot).

Neighbours: ``corrector.py`` asks for the budgets once per tick and passes each stage's
budget to the queueing model (``queueing.py``) and to the PID (``pid.py``) as the
setpoint; the smoother and placement read the critical flags from the decision.

Budgets split the end-to-end SLO (``PipelineSnapshot.slo_p99_s``) between the stages:

* ``"proportional"``: in proportion to each stage's *measured* mean service time, so a
  stage that does twice the work gets twice the time. A stage without a measurement yet
  is weighted with the mean of the measured ones; with none measured the split is equal.
* ``"equal"``: ``slo / n`` each.

The budgets add up to the SLO. Meeting every stage's tail budget usually over-meets the
end-to-end tail (the stages rarely hit their p99 on the same request; they do only when
their latencies move together, where the sum is exact), so the split errs on the safe side.

Critical stages use the prototype's score ``max(0, L - T)/T · (1 + λ/10)`` but with ``L``
the measured *tail* latency at the configured percentile (the prototype used the mean)
and ``T`` the stage's own budget (the prototype used one global 0.5 s). A stage is also
critical when its queue is growing (arrivals outpace departures or capacity), which the
latency percentile shows only after the window fills.
"""

from __future__ import annotations

import math
from typing import Literal, NamedTuple

from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot

# Arrivals must beat departures by this share before a queue counts as growing: rates
# over a window are noisy and a queue of a few requests is normal at 80 % utilisation.
GROWTH_TOLERANCE_FRAC = 0.05


def _known(x: float | None) -> bool:
    return x is not None and math.isfinite(x) and x > 0


def stage_budgets(
    snapshot: PipelineSnapshot,
    mode: Literal["proportional", "equal"] = "proportional",
    total_s: float | None = None,
) -> tuple[float, ...]:
    """Latency budget of each stage (seconds, in stage order), summing to ``total_s``.

    ``total_s`` defaults to the snapshot's end-to-end SLO.
    """
    total = snapshot.slo_p99_s if total_s is None else total_s
    if not total > 0:
        raise ValueError(f"the end-to-end budget must be > 0 s, got {total}")
    n = len(snapshot.stages)
    if n == 0:
        return ()
    if mode == "equal":
        return (total / n,) * n
    if mode != "proportional":
        raise ValueError(f"stage_budget must be 'proportional' or 'equal', got {mode!r}")
    means: list[float | None] = [
        m if m is not None and math.isfinite(m) and m > 0 else None
        for m in (s.service_mean_s for s in snapshot.stages)
    ]
    known = [m for m in means if m is not None]
    if not known:
        return (total / n,) * n
    fill = sum(known) / len(known)
    weights = [fill if m is None else m for m in means]
    scale = total / sum(weights)
    return tuple(w * scale for w in weights)


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
    stage: StageSnapshot, budget_s: float, percentile: float, critical_score: float
) -> StageHealth:
    """Score one stage on its measured tail latency at ``percentile``."""
    tail = stage.latency.quantile(percentile)
    if tail is not None and not math.isfinite(tail):
        tail = None
    score = criticality_score(tail, budget_s, stage.arrival_rate)
    growing = queue_growing(stage)
    return StageHealth(
        stage=stage.name,
        budget_s=budget_s,
        tail_s=tail,
        score=score,
        queue_growing=growing,
        critical=score > critical_score or growing,
    )


"""The queueing model's inputs as the corrector reads them from a stage, and its answer in words.

Unknown or non-finite measurements are ``None``; unknown squared coefficients of variation
count as 1 (M/M/c); the service rate is never assumed (``None`` without a measured mean).
``model_text`` is the part of a stage's reason that says what the model planned.
"""

from __future__ import annotations

import math

from quartfaas.control.corrector.queueing import PlanStatus, SLOPlan
from quartfaas.control.snapshot import StageSnapshot


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def stage_scvs(s: StageSnapshot) -> tuple[float, float]:
    cv = finite(s.arrival_cv)
    scv_s = finite(s.service_scv)
    return (1.0 if cv is None or cv < 0 else cv * cv), (
        1.0 if scv_s is None or scv_s < 0 else scv_s
    )


def service_rate(s: StageSnapshot) -> float | None:
    mean = finite(s.service_mean_s)
    return 1.0 / mean if mean is not None and mean > 0 else None


def model_text(plan: SLOPlan, lam: float, mu: float | None, scvs: tuple[float, float]) -> str:
    if plan.status is PlanStatus.NO_SERVICE_RATE or mu is None:
        return "μ unknown (no completions measured): no model estimate"
    name = "M/M/c" if scvs == (1.0, 1.0) else "G/G/c"
    rates = f"λ={lam:.3g}/s, μ={mu:.3g}/s"
    if name == "G/G/c":
        rates += f", ca²={scvs[0]:.2g}, cs²={scvs[1]:.2g}"
    if plan.status is PlanStatus.INFEASIBLE:
        return (
            f"{name}: budget below the service percentile {plan.service_pct_s:.3g}s; "
            f"{plan.replicas} keep utilisation in bounds ({rates})"
        )
    if plan.status is PlanStatus.CAPPED:
        return f"{name} needs > {plan.replicas} ({rates})"
    return f"{name} needs {plan.replicas} ({rates})"


__all__ = ["finite", "model_text", "service_rate", "stage_scvs"]

"""The Pipeline Smoother: replicas before a burst arrives, and smoothing across neighbours.

Neighbours: post-processes ``corrector.ReplicaCorrector.targets`` (guarded per-stage targets
with reasons) using per-stage CV predictions from ``propagation.py`` (QNA) or ``gat.py``
(GAT) and the G/G/c model of ``queueing.py``; ``quart.py`` composes corrector -> smoother ->
``compensator.CpuCompensator``. Pure and stateless: no I/O, no clock.

Per tick, in this order (every change appends a reason to the stage's reason):

1. **Pre-provisioning.** The corrector sizes a stage from its *measured* arrival SCV and
   rate. The predictor says what arrives over the next horizon: stage ``k``'s predicted CV
   (from the burst now at stage ``k-1``) and rate (``max`` of the measured and the upstream
   rate). When either exceeds the measured one by more than ``deadband_frac``, the G/G/c
   model (``replicas_for_slo`` with the predicted ``ca²``) is asked again; what it adds to
   the corrector's model estimate is added to the target ("replicas before the burst
   arrives"). A prediction never lowers a target.
2. **Neighbour smoothing** with the prototype's ``β(CV) = α + (1-α)·σ(CV/θ - 1)``: a bursty
   stage keeps its own count, a smooth one is pulled toward its neighbours. ``"counts"``
   applies the prototype's rule to replica counts (``smooth_replicas``); ``"headroom"``
   (default) applies the same rule to each stage's headroom ``target/need`` and converts
   back, so a light stage beside a heavy one is not given the heavy one's count (the
   prototype's rule would, since counts of unequal stages differ by design). Smoothing may
   raise a stage (within ``max_replicas`` and ``max_step_up``) and may lower it only when it
   is not critical, never below its need under the predicted CV, and never below
   ``min(current, corrector target)`` - smoothing never bypasses the corrector's downscale
   delay and cooldowns.
3. **Replica budget** (optional, ``replica_budget``): when the pipeline's total exceeds it,
   replicas are taken, one at a time from the stage with the most slack, first from
   over-provisioned stages (utilisation below ``over_utilisation_frac × target_utilisation``)
   down to their need, then smoother raises of non-critical and then of critical stages,
   then non-critical stages down to their minimum. Critical stages never go below the
   corrector's target; if the budget still cannot be met, the reason says so. This is the
   capacity the prototype's README claimed to move from over-provisioned to critical stages.

Bounds ``[min_replicas, max_replicas]`` and the floor hold after every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import CorrectorTargets, StageTarget
from quartfaas.control.corrector.queueing import replicas_for_slo
from quartfaas.control.smoother.propagation import CvPrediction, utilisation
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot


class SmootherConfig(BaseModel):
    """Settings of the Pipeline Smoother (defaults: the prototype's α = 0.5, θ = 1)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alpha: float = Field(
        default=0.5, ge=0, le=1, description="least weight a stage keeps on its own count"
    )
    theta: float = Field(default=1.0, gt=0, le=100, description="CV scale of the smoothing sigmoid")
    floor: int = Field(default=1, ge=0, le=4096, description="least replicas smoothing may leave")
    preprovision: bool = Field(default=True, description="size stages for their predicted arrivals")
    neighbour: Literal["headroom", "counts", "off"] = Field(
        default="headroom", description="what neighbour smoothing averages (or off)"
    )
    deadband_frac: float = Field(
        default=0.2,
        ge=0,
        le=10,
        description="prediction must exceed the measured SCV or rate by this",
    )
    replica_budget: int | None = Field(
        default=None,
        ge=1,
        le=1_000_000,
        description="most replicas for the whole pipeline (None: no cap)",
    )
    over_utilisation_frac: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="below this share of target_utilisation a stage is spare",
    )


def beta(cv: float, alpha: float = 0.5, theta: float = 1.0) -> float:
    """The prototype's Eq. 6, ``α + (1-α)·σ(CV/θ - 1)``: the weight a stage keeps on itself."""
    z = max(cv, 0.0) / theta - 1.0
    return alpha + (1.0 - alpha) / (1.0 + math.exp(-z))


def _round(x: float) -> int:
    # Half up: Python's round() sends 2.5 to 2, which would make smoothing asymmetric.
    return math.floor(x + 0.5)


def _neighbour_mean(values: Sequence[float], i: int) -> float | None:
    nb = [values[j] for j in (i - 1, i + 1) if 0 <= j < len(values)]
    return sum(nb) / len(nb) if nb else None


def smooth_replicas(
    targets: Sequence[int],
    cvs: Sequence[float],
    alpha: float = 0.5,
    theta: float = 1.0,
    floor: int = 1,
    *,
    critical: Sequence[bool] | None = None,
    bounds: Sequence[tuple[int, int]] | None = None,
) -> tuple[int, ...]:
    """The prototype's smoothing rule on replica counts.

    ``r_i = round(β_i·r_i + (1-β_i)·mean(r_{i-1}, r_{i+1}))`` with ``β_i = beta(cvs[i])``,
    neighbours that exist only, all from the *input* counts (not updated in place), at least
    ``floor``. Then, unlike the prototype: a ``critical`` stage is never lowered, and
    ``bounds`` (``(min, max)`` per stage) clamp the result.
    """
    if len(cvs) != len(targets):
        raise ValueError(f"{len(cvs)} CVs for {len(targets)} targets")
    out = []
    for i, r in enumerate(targets):
        m = _neighbour_mean(targets, i)
        b = beta(cvs[i], alpha, theta)
        v = r if m is None else max(floor, _round(b * r + (1.0 - b) * m))
        if critical is not None and critical[i]:
            v = max(v, r)
        if bounds is not None:
            lo, hi = bounds[i]
            v = min(max(v, lo), max(lo, hi))
        out.append(v)
    return tuple(out)


def smooth_headroom(
    targets: Sequence[int],
    needs: Sequence[int | None],
    cvs: Sequence[float],
    *,
    alpha: float = 0.5,
    theta: float = 1.0,
    floor: int = 1,
) -> tuple[int, ...]:
    """The same rule on headroom ``u = target/need``, converted back with ``round(u'·need)``.

    A stage without a known need (``None`` or 0) keeps its count and counts as headroom 1
    for its neighbours.
    """
    u = [t / n if n else 1.0 for t, n in zip(targets, needs, strict=True)]
    out = []
    for i, (t, n) in enumerate(zip(targets, needs, strict=True)):
        m = _neighbour_mean(u, i)
        if not n or m is None:
            out.append(t)
            continue
        b = beta(cvs[i], alpha, theta)
        out.append(max(floor, _round((b * u[i] + (1.0 - b) * m) * n)))
    return tuple(out)


class _Stage(NamedTuple):
    snap: StageSnapshot
    target: StageTarget
    lo: int  # least replicas (min_replicas; the floor unless the corrector went below it)
    hi: int  # most replicas (max_replicas; at least lo)
    need: int | None  # G/G/c need under the predicted arrivals (None: unknown)
    spare: bool  # over-provisioned


class PipelineSmoother:
    """Post-processor of ``CorrectorTargets`` (see the module docstring)."""

    name = "pipeline-smoother"

    def __init__(
        self, config: ControllerConfig | None = None, smoother: SmootherConfig | None = None
    ) -> None:
        self.cfg = config if config is not None else ControllerConfig.model_validate({})
        self.sc = smoother if smoother is not None else SmootherConfig()

    def _need(
        self, s: StageSnapshot, t: StageTarget, p: CvPrediction | None
    ) -> tuple[int | None, str]:
        """Replicas the predicted arrivals need, and what drove it (text for the reason)."""
        lam = s.arrival_rate if s.arrival_rate is not None and s.arrival_rate > 0 else 0.0
        mean = s.service_mean_s
        if p is None or t.budget_s is None or mean is None or not mean > 0:
            return None, ""
        lam_hat = max(lam, p.rate_per_s or 0.0)
        if lam_hat <= 0:
            return None, ""
        scv_s = s.service_scv if s.service_scv is not None and s.service_scv >= 0 else 1.0
        plan = replicas_for_slo(
            lam_hat,
            1.0 / mean,
            p.scv,
            scv_s,
            t.budget_s,
            self.cfg.percentile,
            servers_per_replica=max(1, s.max_concurrency),
            max_util=self.cfg.target_utilisation,
            c_max=max(1, s.max_replicas),
            c_min=1,
        )
        scv_m = s.arrival_cv * s.arrival_cv if s.arrival_cv is not None else 1.0
        db = 1.0 + self.sc.deadband_frac
        driver = []
        if p.scv > scv_m * db:
            driver.append(f"CV {p.cv:.2f} (ca² {p.scv:.3g} > measured {scv_m:.3g}, {p.source})")
        if lam_hat > lam * db:
            driver.append(f"λ {lam_hat:.3g}/s from upstream (measured {lam:.3g}/s)")
        return plan.replicas, " and ".join(driver)

    def _prepare(
        self,
        snapshot: PipelineSnapshot,
        targets: CorrectorTargets,
        predictions: Sequence[CvPrediction],
    ) -> tuple[list[_Stage], list[int], list[list[str]]]:
        preds = {p.stage: p for p in predictions}
        stages: list[_Stage] = []
        values: list[int] = []
        notes: list[list[str]] = []
        spare_below = self.sc.over_utilisation_frac * self.cfg.target_utilisation
        for s, t in zip(snapshot.stages, targets.stages, strict=True):
            # The floor never lifts a stage the corrector deliberately sent below it (to 0).
            lo = max(s.min_replicas, min(self.sc.floor, t.target))
            hi = max(lo, s.max_replicas)
            need, driver = self._need(s, t, preds.get(s.name))
            value, note = t.target, []
            if self.sc.preprovision and need is not None and driver:
                base = t.model if t.model is not None else t.target
                up_to = min(hi, max(t.target, t.current + self.cfg.max_step_up))
                raised = min(up_to, t.target + max(0, need - base))
                if raised > t.target:
                    note.append(
                        f"smoother: predicted {driver}: G/G/c needs {need} vs {base}; "
                        f"{t.target}->{raised} before the burst arrives"
                    )
                    value = raised
            rho = utilisation(s)
            spare = not t.critical and rho is not None and rho < spare_below
            stages.append(_Stage(s, t, lo, hi, need, spare))
            values.append(value)
            notes.append(note)
        return stages, values, notes

    def _neighbours(
        self, stages: list[_Stage], values: list[int], notes: list[list[str]], cvs: list[float]
    ) -> list[int]:
        sc = self.sc
        if sc.neighbour == "off" or len(values) < 2:
            return values
        if sc.neighbour == "counts":
            smoothed = smooth_replicas(values, cvs, sc.alpha, sc.theta, sc.floor)
        else:
            # A stage held up by min_replicas has no headroom to lend its neighbours.
            needs = [
                max(n, st.snap.min_replicas) if n else None
                for n, st in ((st.need or st.target.model, st) for st in stages)
            ]
            smoothed = smooth_headroom(
                values, needs, cvs, alpha=sc.alpha, theta=sc.theta, floor=sc.floor
            )
        out = []
        for st, v, raw, note, cv in zip(stages, values, smoothed, notes, cvs, strict=True):
            t = st.target
            new = raw
            if raw > v:
                new = min(raw, st.hi, max(v, t.current + self.cfg.max_step_up))
            elif raw < v:
                keep = v if t.critical else max(st.lo, st.need or 0, min(t.current, t.target))
                new = max(raw, min(keep, v))
            if new != v:
                b = beta(cv, sc.alpha, sc.theta)
                note.append(
                    f"smoother: neighbour smoothing ({sc.neighbour}, β {b:.2f} at CV {cv:.2f}) "
                    f"{v}->{new}"
                )
            out.append(new)
        return out

    def _budget(
        self, stages: list[_Stage], values: list[int], notes: list[list[str]]
    ) -> tuple[list[int], str]:
        budget = self.sc.replica_budget
        total = sum(values)
        if budget is None or total <= budget:
            return values, ""
        excess = total - budget
        tiers: list[tuple[str, list[tuple[int, int]]]] = [
            ("over-provisioned", [(i, max(st.lo, st.need or 0)) for i, st in enumerate(stages)
                                  if st.spare]),
            ("smoother raise", [(i, max(st.lo, st.target.target)) for i, st in enumerate(stages)
                                if not st.target.critical]),
            ("smoother raise of a critical stage",
             [(i, max(st.lo, st.target.target)) for i, st in enumerate(stages)
              if st.target.critical]),
            ("non-critical", [(i, st.lo) for i, st in enumerate(stages) if not st.target.critical]),
        ]  # fmt: skip
        taken = [0] * len(values)
        why: list[str] = [""] * len(values)
        for label, cands in tiers:
            while excess > 0:
                open_ = [(values[i] / max(lb, 1), -i) for i, lb in cands if values[i] > lb]
                if not open_:
                    break
                i = -max(open_)[1]
                values[i] -= 1
                taken[i] += 1
                why[i] = why[i] or label
                excess -= 1
        for i, n in enumerate(taken):
            if n:
                notes[i].append(
                    f"smoother: replica budget {budget} (total {total}): -{n} ({why[i]})"
                )
        if excess > 0:
            return values, f"replica budget {budget} exceeded by {excess}: critical stages keep"
        donors = sum(1 for n in taken if n)
        return values, f"replica budget {budget}: took {total - budget} from {donors} stage(s)"

    def smooth(
        self,
        snapshot: PipelineSnapshot,
        targets: CorrectorTargets,
        predictions: Sequence[CvPrediction],
    ) -> CorrectorTargets:
        """``targets`` with smoothed counts and reasons (unchanged when held or empty)."""
        if targets.hold or not targets.stages:
            return targets
        if len(targets.stages) != len(snapshot.stages):
            raise ValueError(
                f"{len(targets.stages)} targets for {len(snapshot.stages)} snapshot stages"
            )
        stages, values, notes = self._prepare(snapshot, targets, predictions)
        preds = {p.stage: p.cv for p in predictions}
        cvs = [preds.get(st.snap.name, 1.0) for st in stages]
        values = self._neighbours(stages, values, notes, cvs)
        values, budget_note = self._budget(stages, values, notes)
        out = []
        for st, value, note in zip(stages, values, notes, strict=True):
            v = min(max(value, st.lo), st.hi)
            t = st.target
            out.append(t._replace(target=v, reason="; ".join([t.reason, *note])) if note else t)
        changed = sum(1 for a, b in zip(out, targets.stages, strict=True) if a.target != b.target)
        reason = f"{targets.reason}; smoother changed {changed}"
        if budget_note:
            reason += f" ({budget_note})"
        return CorrectorTargets(targets.now, tuple(out), targets.hold, reason)


__all__ = [
    "PipelineSmoother",
    "SmootherConfig",
    "beta",
    "smooth_headroom",
    "smooth_replicas",
]

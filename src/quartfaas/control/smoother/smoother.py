"""The Pipeline Smoother: what arrives at each stage next, and smoothing across neighbours.

Neighbours: reads per-stage CV predictions from ``propagation.py`` (QNA) or ``gat.py``
(GAT); ``quart.py`` composes predictor -> ``forecast`` -> corrector (the joint planner) ->
``smooth`` -> ``compensator.CpuCompensator``. Pure and stateless: no I/O, no clock.

1. **Forecast** (``forecast``): the corrector plans on each stage's *measured* arrivals;
   a burst measured upstream now reaches stage ``k`` after the upstream sojourn times
   ``d_k = Σ_{j<k} E[T_j]`` (measured mean time in stage ``j``, else its service mean).
   When ``d_k`` is within the planning horizon (``horizon_s``, default the snapshot's
   window: the plan stands until the next window of measurements), stage ``k``'s
   predicted arrival SCV and rate go to the tail model as its burst factor and rate (the
   larger of the measured and the forecast, ``inputs.stage_load``). The prediction changes
   replica counts only through the planner; it never adds replicas on its own. (The old
   rule added ``need - model`` on top of the corrector's target every tick, ignoring
   replicas already starting: a constant snapshot drove a stage from 6 to 32 replicas.)
2. **Neighbour smoothing** (off by default; ``neighbour="headroom"`` or ``"counts"``) with
   the prototype's ``β(CV) = α + (1-α)·σ(CV/θ - 1)``: a bursty stage keeps its own count, a
   smooth one is pulled toward its neighbours. Off by default because the joint plan
   already sizes neighbours together: a count raised above the plan is undone by the
   next scale-down (after the downscale delay) and raised again, a slow oscillation.
   Smoothing may raise a stage (within ``max_replicas`` and ``max_step_up``) and may lower
   it only when it is not critical, never below its need under the predicted CV, and never
   below ``min(current, corrector target)``.
3. **Replica budget** (optional, ``replica_budget``): when the pipeline's total exceeds it,
   replicas are taken, one at a time from the stage with the most slack, first from
   over-provisioned stages (utilisation below ``over_utilisation_frac × target_utilisation``)
   down to their need, then smoother raises of non-critical and then of critical stages,
   then non-critical stages down to their minimum. Critical stages never go below the
   corrector's target; if the budget still cannot be met, the reason says so.

Bounds ``[min_replicas, max_replicas]`` and the floor hold after every step.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import ArrivalForecast, CorrectorTargets, StageTarget
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
    preprovision: bool = Field(
        default=True, description="plan stages for their forecast arrivals (the tail model)"
    )
    horizon_s: float | None = Field(
        default=None,
        gt=0,
        le=3600,
        description="a burst reaching a stage within this is planned for (None: the window)",
    )
    neighbour: Literal["headroom", "counts", "off"] = Field(
        default="off", description="what neighbour smoothing averages (or off)"
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
    need: int | None  # G/G/c need under the predicted arrivals (None: unknown or unused)
    spare: bool  # over-provisioned


class PipelineSmoother:
    """Post-processor of ``CorrectorTargets`` (see the module docstring)."""

    name = "pipeline-smoother"

    def __init__(
        self, config: ControllerConfig | None = None, smoother: SmootherConfig | None = None
    ) -> None:
        self.cfg = config if config is not None else ControllerConfig.model_validate({})
        self.sc = smoother if smoother is not None else SmootherConfig()

    def _need(self, s: StageSnapshot, t: StageTarget, p: CvPrediction | None) -> int | None:
        """Replicas the predicted arrivals need within the stage's derived budget (G/G/c;
        the floor neighbour smoothing and the replica budget respect). None: unknown."""
        lam = s.arrival_rate if s.arrival_rate is not None and s.arrival_rate > 0 else 0.0
        mean = s.service_mean_s
        if p is None or t.budget_s is None or mean is None or not mean > 0:
            return None
        lam_hat = max(lam, p.rate_per_s or 0.0)
        if lam_hat <= 0:
            return None
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
        return plan.replicas

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
        # ``need`` is read by neighbour smoothing and the replica budget, ``spare`` by the
        # budget alone: with both off (the default) neither is computed (a G/G/c search
        # per stage, a third of this step's time).
        budget_on = self.sc.replica_budget is not None
        need_on = budget_on or (self.sc.neighbour != "off" and len(targets.stages) >= 2)
        for s, t in zip(snapshot.stages, targets.stages, strict=True):
            # The floor never lifts a stage the corrector deliberately sent below it (to 0).
            lo = max(s.min_replicas, min(self.sc.floor, t.target))
            hi = max(lo, s.max_replicas)
            need = self._need(s, t, preds.get(s.name)) if need_on else None
            value, note = t.target, list[str]()
            rho = utilisation(s) if budget_on else None
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

    def forecast(
        self, snapshot: PipelineSnapshot, predictions: Sequence[CvPrediction]
    ) -> tuple[ArrivalForecast, ...]:
        """Per stage, the arrivals to plan for (module docstring, step 1).

        Stage 0 has no upstream (its prediction is its own measurement): no forecast. A
        stage whose upstream delay exceeds the horizon gets none either."""
        if not self.sc.preprovision:
            return ()
        preds = {p.stage: p for p in predictions}
        horizon = self.sc.horizon_s if self.sc.horizon_s is not None else snapshot.window_s
        out: list[ArrivalForecast] = []
        delay = 0.0
        for k, s in enumerate(snapshot.stages):
            p = preds.get(s.name)
            if k > 0 and p is not None:
                up = snapshot.stages[k - 1].name
                rate = "?" if p.rate_per_s is None else f"{p.rate_per_s:.3g}/s"
                if delay <= horizon:
                    why = (
                        f"{p.source} CV {p.cv:.2f}, λ {rate} from {up}, arriving in "
                        f"{delay:.3g}s <= horizon {horizon:g}s"
                    )
                    out.append(ArrivalForecast(s.name, p.scv, p.rate_per_s, why))
                else:
                    why = f"upstream burst {delay:.3g}s away > horizon {horizon:g}s"
                    out.append(ArrivalForecast(s.name, None, None, why))
            mean = s.latency.mean_s if s.latency.mean_s is not None else s.service_mean_s
            if mean is not None and math.isfinite(mean) and mean > 0:
                delay += mean
        return tuple(out)

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
        if self.sc.replica_budget is None and (
            self.sc.neighbour == "off" or len(targets.stages) < 2
        ):
            # Neither neighbour smoothing nor the budget can move a count or add a note
            # (the defaults): every target passes as it is, as ``_steps`` would pass it
            # (a stage's count is replaced only together with a note;
            # ``tests/unit/test_tick_fast_paths.py`` compares the two).
            reason = f"{targets.reason}; smoother changed 0"
            return CorrectorTargets(targets.now, targets.stages, targets.hold, reason)
        return self._steps(snapshot, targets, predictions)

    def _steps(
        self,
        snapshot: PipelineSnapshot,
        targets: CorrectorTargets,
        predictions: Sequence[CvPrediction],
    ) -> CorrectorTargets:
        """``smooth`` for a non-empty, unheld tick: neighbour smoothing, then the budget."""
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

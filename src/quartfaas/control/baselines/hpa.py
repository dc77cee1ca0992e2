"""Kubernetes HorizontalPodAutoscaler (HPA) as a pure policy, one HPA per stage.

Neighbours: shared helpers in ``_common.py``; registered as ``"hpa"`` in ``__init__.py``.
The prototype defines (but never calls) ``create_hpa``: autoscaling/v1, CPU target 50 %,
1-10 replicas (reference ``quart-prototype.md`` §5); the defaults below reproduce that
HPA with the controller's real defaults.

What the real controller does, and where (kubernetes/kubernetes):

* ``pkg/controller/podautoscaler/config/v1alpha1/defaults.go``:
  ``HorizontalPodAutoscalerSyncPeriod`` 15 s (flag ``--horizontal-pod-autoscaler-sync-period``),
  ``HorizontalPodAutoscalerTolerance`` 0.1 (``--horizontal-pod-autoscaler-tolerance``),
  ``HorizontalPodAutoscalerDownscaleStabilizationWindow`` 5 min
  (``--horizontal-pod-autoscaler-downscale-stabilization``).
* ``pkg/controller/podautoscaler/replica_calculator.go`` (``GetResourceReplicas``):
  ``usageRatio = utilisation / target``; within tolerance -> keep ``currentReplicas``;
  else ``ceil(usageRatio * readyPodCount)``. When scaling *up* with unready pods, those
  count as 0 % (dampening) and a flip of direction keeps the current count.
* ``pkg/controller/podautoscaler/horizontal.go``: ``recordInitialRecommendation`` seeds the
  history with the current count; ``stabilizeRecommendation`` returns the *highest*
  recommendation of the last 5 min (so only scale-down is slowed);
  ``convertDesiredReplicasWithRules`` limits one step up to
  ``max(scaleUpLimitFactor 2 x current, scaleUpLimitMinimum 4)``, then ``[min, max]``.
  This is the path for an HPA without ``behavior`` (``create_hpa`` sets none); it equals
  the autoscaling/v2 default behaviour (scale-up ``max(4 pods, 100 %)`` per 15 s,
  scale-down stabilisation 300 s, documented at
  https://kubernetes.io/docs/tasks/run-application/horizontal-pod-autoscale/).
  A target with 0 replicas is not scaled ("scaling is disabled").

The metric (``metric``):

* ``"utilisation"`` (default): the stage's offered load per ready service slot,
  ``StageSnapshot.utilisation`` = λ·E[S]/c. It stands in for CPU utilisation of a
  CPU-bound worker. Like CPU against its *request* (the prototype's functions request
  1 core with a larger limit) it can exceed 100 %.
* ``"cpu"``: the measured ``StageSnapshot.cpu_utilisation`` (fraction of the CPU per replica).
* ``"rps"``: arrival rate per ready replica against ``target_rps_per_replica`` (an
  ``AverageValue`` pods/external metric target).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field, model_validator

from quartfaas.control.baselines._common import (
    EPS,
    BaselineParams,
    PeriodicState,
    Window,
    bounded,
    build_params,
    carried,
    decision,
    due,
    each_stage,
    hold,
    next_due,
    off_period,
    set_to,
    stabilise,
    stale_reason,
)
from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot


class HPAParams(BaselineParams):
    sync_period_s: float = Field(
        default=15.0, gt=0, le=3600, description="--horizontal-pod-autoscaler-sync-period"
    )
    tolerance: float = Field(
        default=0.1,
        ge=0,
        lt=1,
        description="--horizontal-pod-autoscaler-tolerance (ratio band kept)",
    )
    downscale_stabilization_s: float = Field(
        default=300.0,
        ge=0,
        le=86_400,
        description="--horizontal-pod-autoscaler-downscale-stabilization window",
    )
    scale_up_limit_factor: float = Field(
        default=2.0, gt=1, le=1000, description="scaleUpLimitFactor: one step up at most x current"
    )
    scale_up_limit_minimum: int = Field(
        default=4,
        ge=1,
        le=10_000,
        description="scaleUpLimitMinimum: one step may always reach this",
    )
    metric: Literal["utilisation", "cpu", "rps"] = Field(
        default="utilisation", description="what stands in for the HPA's metric (module docstring)"
    )
    target_utilisation: float = Field(
        default=0.5,
        gt=0,
        le=10,
        description="targetAverageUtilization as a fraction (create_hpa: 50 %)",
    )
    target_rps_per_replica: float | None = Field(
        default=None, gt=0, le=1e6, description="AverageValue target per replica for metric='rps'"
    )

    @model_validator(mode="after")
    def _rps_needs_target(self) -> HPAParams:
        if self.metric == "rps" and self.target_rps_per_replica is None:
            raise ValueError("metric 'rps' needs target_rps_per_replica (requests/s per replica)")
        return self


@dataclass(frozen=True, slots=True)
class HPAStageState:
    name: str
    # (time, pre-normalised recommendation), as horizontal.go's ``recommendations[key]``.
    recommendations: Window


HPAState = PeriodicState[HPAStageState]  # next_at: the next HPA sync


class HPA:
    """Kubernetes HPA (legacy normalisation path = v2 default behaviour), per stage."""

    name: str = "hpa"

    def __init__(self, params: HPAParams | None = None) -> None:
        self.params = params or HPAParams()

    def initial_state(self, snapshot: PipelineSnapshot) -> HPAState:
        # recordInitialRecommendation: a restarted controller does not scale down for one
        # stabilisation window, because it remembers the current count as a recommendation.
        return HPAState(
            snapshot.now,
            tuple(
                HPAStageState(s.name, ((snapshot.now, float(s.replicas)),)) for s in snapshot.stages
            ),
        )

    def decide(self, snapshot: PipelineSnapshot, state: HPAState) -> tuple[Decision, HPAState]:
        now = snapshot.now
        if not due(now, state.next_at):
            return off_period(snapshot, self.name, state.next_at, "HPA syncs"), state
        nxt = next_due(state.next_at, now, self.params.sync_period_s)
        stale = stale_reason(snapshot, self.params)
        if stale is not None:
            return hold_all(snapshot, self.name, stale), HPAState(nxt, state.stages)
        recorded = carried(snapshot, state.stages, lambda name: HPAStageState(name, ()))
        decisions, stages = each_stage(
            snapshot, recorded, lambda s, st: self._sync_stage(s, st, now)
        )
        return decision(snapshot, self.name, decisions, "HPA sync"), HPAState(nxt, stages)

    def _usage_ratio(self, s: StageSnapshot) -> tuple[float | None, str]:
        p = self.params
        if p.metric == "utilisation":
            u = s.utilisation
            if u is None:
                return None, "utilisation unknown (arrival rate or service time missing)"
            return (
                u / p.target_utilisation,
                f"utilisation {u:.0%} / target {p.target_utilisation:.0%}",
            )
        if p.metric == "cpu":
            c = s.cpu_utilisation
            if c is None:
                return None, "cpu_utilisation unknown"
            return c / p.target_utilisation, f"cpu {c:.0%} / target {p.target_utilisation:.0%}"
        assert p.target_rps_per_replica is not None  # checked by HPAParams
        if s.arrival_rate is None or s.ready_replicas == 0:
            return None, "rps per replica unknown"
        per = s.arrival_rate / s.ready_replicas
        return per / p.target_rps_per_replica, (
            f"{per:.2f} req/s per replica / target {p.target_rps_per_replica:g}"
        )

    def _proposal(self, s: StageSnapshot, ratio: float) -> tuple[int, str]:
        """``GetResourceReplicas``: the replica count the metric asks for, before limits."""
        current, ready, unready = s.replicas, s.ready_replicas, s.starting_replicas
        tol = self.params.tolerance
        if not (unready > 0 and ratio > 1.0):
            if abs(1.0 - ratio) <= tol + EPS:
                return current, f"ratio {ratio:.2f} within tolerance {tol:g}: keep {current}"
            want = math.ceil(ratio * ready - EPS)
            return want, f"ratio {ratio:.2f} x {ready} ready -> {want}"
        # Scaling up with unready (starting) pods: they count as 0 % so a start-up burst
        # is not multiplied; if that flips the direction, keep the current count.
        new_ratio = ratio * ready / (ready + unready)
        if abs(1.0 - new_ratio) <= tol + EPS or new_ratio < 1.0:
            return current, (
                f"ratio {ratio:.2f}, {new_ratio:.2f} counting {unready} starting as idle: "
                f"keep {current}"
            )
        want = math.ceil(new_ratio * (ready + unready) - EPS)
        if want < current:
            return current, f"ratio {new_ratio:.2f} would shrink while over target: keep {current}"
        return want, f"ratio {new_ratio:.2f} x {ready + unready} pods (incl. starting) -> {want}"

    def _sync_stage(
        self, s: StageSnapshot, st: HPAStageState, now: float
    ) -> tuple[StageDecision, HPAStageState]:
        p = self.params
        current = s.replicas
        # horizontal.go handles these before looking at metrics.
        if current > s.max_replicas:
            return set_to(s, s.max_replicas, f"above max_replicas {s.max_replicas}"), st
        if current < s.min_replicas:
            return set_to(s, s.min_replicas, f"below min_replicas {s.min_replicas}"), st
        if current == 0:
            return hold(s, "hold: scaling disabled, the stage has 0 replicas (HPA)"), st
        ratio, metric_note = self._usage_ratio(s)
        if ratio is None:
            return hold(s, f"hold: no-data: {metric_note}"), st
        if s.ready_replicas == 0:
            return hold(s, "hold: no-data: no ready replica reports the metric"), st

        proposal, why = self._proposal(s, ratio)
        # stabilizeRecommendation: highest recommendation within the window, this one included.
        window = p.downscale_stabilization_s
        recs, stabilised = stabilise(st.recommendations, now, float(proposal), window)
        new_st = HPAStageState(s.name, recs)

        # convertDesiredReplicasWithRules: rate limit, then bounds.
        limit = int(max(p.scale_up_limit_factor * current, p.scale_up_limit_minimum))
        target = int(stabilised)
        notes = [f"{metric_note}; {why}"]
        if target > proposal:
            notes.append(f"stabilised at {target} (highest over {window:g} s)")
        if target > limit:
            target = limit
            notes.append(f"scale-up limited to {limit}")
        target, bound_note = bounded(s, target)
        return set_to(s, target, "; ".join(notes) + bound_note, score=ratio), new_st


def make(**overrides: Any) -> HPA:
    return HPA(build_params(HPAParams, HPA.name, overrides))

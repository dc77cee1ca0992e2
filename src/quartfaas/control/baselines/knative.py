"""Knative Pod Autoscaler (KPA) as a pure policy: stable/panic windows over concurrency.

Neighbours: shared helpers in ``_common.py``; registered as ``"knative"`` in
``__init__.py``. Each pipeline stage is one Knative revision.

What Knative does, and where (knative/serving):

* ``pkg/autoscaler/config/config.go`` (``defaultConfig``, config-map keys in quotes):
  ``"stable-window"`` 60 s, ``"panic-window-percentage"`` 10 (-> 6 s panic window),
  ``"panic-threshold-percentage"`` 200, ``"max-scale-up-rate"`` 1000,
  ``"max-scale-down-rate"`` 2, ``"container-concurrency-target-percentage"`` 0.7
  (``defaultTargetUtilization``), ``"container-concurrency-target-default"`` 100,
  ``"scale-to-zero-grace-period"`` 30 s, ``"enable-scale-to-zero"`` true; metric buckets of
  ``BucketSize`` 1 s.
* ``pkg/autoscaler/scaling/multiscaler.go``: ``tickInterval = 2 * time.Second`` (how often
  ``Scale`` runs); ``Poke`` runs it at once when a revision at 0 gets traffic.
* ``pkg/autoscaler/scaling/autoscaler.go`` (``Scale(logger, now)``):
  ``readyPodsCount = max(1, ready)``; ``maxScaleUp = ceil(MaxScaleUpRate x ready)``;
  ``maxScaleDown = floor(ready / MaxScaleDownRate)``; ``dspc = ceil(stable / target)``,
  ``dppc = ceil(panic / target)``, each clamped to ``[maxScaleDown, maxScaleUp]``; panic
  starts when ``dppc / readyPodsCount >= PanicThreshold``, is extended while over it, and
  ends ``StableWindow`` after the last time over it; while panicking the count is
  ``max(dspc, dppc)`` and **never decreases** (``maxPanicPods``). A new autoscaler starts
  in panic mode when more than one pod is ready ("When Autoscaler restarts we lose metric
  history, which causes us to momentarily scale down"). No data in the window ->
  ``invalidSR`` (no decision).

Mapping onto a stage: observed concurrency = ``in_flight + queue_len`` (the snapshot's
instantaneous values; the policy keeps a time-keyed history in its state and averages it
over 1 s buckets in the stable/panic windows). The stage's ``max_concurrency`` is the
revision's hard limit ``containerConcurrency``, so the per-pod target is
``max_concurrency x target_utilisation`` (Knative's rule for a hard limit). Scale to zero
(only when the stage's ``min_replicas`` is 0, as with Knative's ``min-scale`` 0) happens
after the desired count has been 0 for the grace period; that is Knative's own behaviour.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from pydantic import Field

from quartfaas.control.baselines._common import (
    EPS,
    BaselineParams,
    PeriodicState,
    Window,
    between,
    bounded,
    bucket_mean,
    build_params,
    carried,
    decision,
    each_stage,
    hold,
    ongoing,
    period,
    push,
    set_to,
    stale_reason,
)
from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot


class KnativeParams(BaselineParams):
    tick_s: float = Field(default=2.0, gt=0, le=3600, description="multiscaler tickInterval")
    stable_window_s: float = Field(
        default=60.0, ge=6, le=3600, description="'stable-window' (Knative allows 6 s .. 1 h)"
    )
    panic_window_percentage: float = Field(
        default=10.0, ge=1, le=100, description="'panic-window-percentage' of the stable window"
    )
    panic_threshold_percentage: float = Field(
        default=200.0, gt=100, le=1000, description="'panic-threshold-percentage' of ready capacity"
    )
    max_scale_up_rate: float = Field(
        default=1000.0, gt=1, le=1e6, description="'max-scale-up-rate'"
    )
    max_scale_down_rate: float = Field(
        default=2.0, gt=1, le=1e6, description="'max-scale-down-rate'"
    )
    target_utilisation: float = Field(
        default=0.7,
        gt=0,
        le=1,
        description="'container-concurrency-target-percentage' as a fraction",
    )
    enable_scale_to_zero: bool = Field(default=True, description="'enable-scale-to-zero'")
    scale_to_zero_grace_s: float = Field(
        default=30.0, gt=0, le=3600, description="'scale-to-zero-grace-period'"
    )

    @property
    def panic_window_s(self) -> float:
        return self.stable_window_s * self.panic_window_percentage / 100.0


@dataclass(frozen=True, slots=True)
class KPAStageState:
    name: str
    history: Window  # (t, observed concurrency), pruned to the stable window
    panic_since: float | None  # Knative's panicTime: last time over the threshold
    max_panic_pods: int
    zero_since: float | None  # since when the decision has wanted 0 replicas


KPAState = PeriodicState[KPAStageState]  # next_at: the next KPA tick


class Knative:
    """Knative KPA (concurrency metric, hard container concurrency), per stage."""

    name: str = "knative"

    def __init__(self, params: KnativeParams | None = None) -> None:
        self.params = params or KnativeParams()

    def initial_state(self, snapshot: PipelineSnapshot) -> KPAState:
        stages = []
        for s in snapshot.stages:
            panicking = s.ready_replicas > 1  # newAutoscaler starts in panic mode then
            stages.append(
                KPAStageState(
                    name=s.name,
                    history=(),
                    panic_since=snapshot.now if panicking else None,
                    max_panic_pods=s.ready_replicas if panicking else 0,
                    zero_since=None,
                )
            )
        return KPAState(snapshot.now, tuple(stages))

    def decide(self, snapshot: PipelineSnapshot, state: KPAState) -> tuple[Decision, KPAState]:
        now, p = snapshot.now, self.params
        stale = stale_reason(snapshot, p)
        if stale is not None:
            return hold_all(snapshot, self.name, stale), state
        # Metrics are scraped every second whether or not Scale runs now.
        recorded = carried(
            snapshot,
            state.stages,
            lambda name: KPAStageState(name, (), None, 0, None),
            lambda s, st: replace(st, history=push(st.history, now, ongoing(s), p.stable_window_s)),
        )
        # Poke: a stage at zero with requests waiting is evaluated at once (only that one).
        is_due, nxt = period(state.next_at, now, p.tick_s)
        poked = {s.name for s in snapshot.stages if s.replicas == 0 and ongoing(s) > 0}
        if not (is_due or poked):
            reason = between("KPA ticks", state.next_at, now)
            return hold_all(snapshot, self.name, reason), KPAState(state.next_at, recorded)

        def step(s: StageSnapshot, st: KPAStageState) -> tuple[StageDecision, KPAStageState]:
            if is_due or s.name in poked:
                return self._scale(s, st, now)
            return hold(s, between("KPA ticks", nxt, now)), st

        decisions, stages = each_stage(snapshot, recorded, step)
        why = "KPA tick" if is_due else "KPA poke: requests at a stage with 0 replicas"
        return decision(snapshot, self.name, decisions, why), KPAState(nxt, stages)

    def _scale(
        self, s: StageSnapshot, st: KPAStageState, now: float
    ) -> tuple[StageDecision, KPAStageState]:
        p = self.params
        target = s.max_concurrency * p.target_utilisation
        stable = bucket_mean(st.history, now, p.stable_window_s)
        panic = bucket_mean(st.history, now, p.panic_window_s)
        if stable is None or panic is None:
            return hold(s, "hold: no-data: no concurrency sample in the window"), st
        ready = s.ready_replicas
        ready_count = max(1, ready)
        max_up = math.ceil(p.max_scale_up_rate * ready_count - EPS)
        max_down = math.floor(ready_count / p.max_scale_down_rate + EPS)
        dspc = math.ceil(stable / target - EPS)
        dppc = math.ceil(panic / target - EPS)
        stable_pods = min(max(dspc, max_down), max_up)
        panic_pods = min(max(dppc, max_down), max_up)
        over = dppc / ready_count >= p.panic_threshold_percentage / 100.0 - EPS

        panic_since, max_panic = st.panic_since, st.max_panic_pods
        if over:
            panic_since = now  # start panicking, or extend the panic
        elif panic_since is not None and panic_since + p.stable_window_s < now:
            panic_since, max_panic = None, 0  # the surge has reached the stable window
        note = (
            f"concurrency stable {stable:.2f} / panic {panic:.2f} over "
            f"{p.stable_window_s:g}/{p.panic_window_s:g} s, target {target:.2f}/pod"
        )
        if panic_since is not None:
            want = max(stable_pods, panic_pods)
            if want > max_panic:
                max_panic = want
            elif want < max_panic:
                note += f"; panic mode: not scaling down to {want}"
            desired = max_panic
            note += f"; panic mode -> {desired}"
        else:
            desired = stable_pods
            note += f"; stable mode -> {desired}"

        zero_since = st.zero_since
        if desired == 0:
            zero_since = now if zero_since is None else zero_since
            can_zero = p.enable_scale_to_zero and s.min_replicas == 0
            if not can_zero or now - zero_since < p.scale_to_zero_grace_s - EPS:
                desired = max(1, s.min_replicas) if s.replicas > 0 else 0
                if can_zero:
                    note += f"; idle, scale to zero after {p.scale_to_zero_grace_s:g} s grace"
            else:
                note += "; idle for the grace period: scale to zero (Knative's own behaviour)"
        else:
            zero_since = None
        final, bound_note = bounded(s, desired)
        new_st = KPAStageState(s.name, st.history, panic_since, max_panic, zero_since)
        return set_to(s, final, note + bound_note, score=panic / target), new_st


def make(**overrides: Any) -> Knative:
    return Knative(build_params(KnativeParams, Knative.name, overrides))

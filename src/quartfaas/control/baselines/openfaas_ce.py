"""OpenFaaS Community Edition's legacy alert-driven scaling as a pure policy.

Neighbours: shared helpers in ``_common.py``; registered as ``"openfaas-ce"`` in
``__init__.py``. Each pipeline stage is one OpenFaaS function.

The real chain is Prometheus -> Alertmanager -> gateway ``/system/alert``:

* Rule (openfaas/faas-netes ``chart/openfaas/templates/prometheus-cfg.yaml``, CE only)::

      - alert: APIHighInvocationRate
        expr: sum(rate(gateway_function_invocation_total{code="200"}[10s])) BY (function_name) > 5
        for: 5s

  evaluated every ``evaluation_interval: 15s`` (same file). With ``for: 5s`` shorter than
  the evaluation interval, an alert turns *pending* at the first evaluation over the
  threshold and *firing* at the next one still over it (15 s later); one evaluation under
  the threshold resolves it.
* Alertmanager (``chart/openfaas/templates/alertmanager-cfg.yaml``): ``group_by:
  ['alertname', 'cluster', 'service']`` (so every function's alert is in **one** group),
  ``group_wait: 5s``, ``group_interval: 10s``, ``repeat_interval: 30s``,
  ``send_resolved: true``. A notification is sent at a group flush when the set of alerts
  changed or ``repeat_interval`` passed since the last one; it lists every firing alert
  and every newly resolved one.
* Gateway (openfaas/faas ``gateway/handlers/alerthandler.go``, ``CalculateReplicas``):
  ``maxReplicas = min(maxReplicas, scaling.DefaultMaxReplicas)`` is applied to every
  function, whatever its ``com.openfaas.scale.max`` label; then for each alert in a
  notification, ``firing`` -> ``current + ceil(maxReplicas / 100 x factor)`` (capped at
  ``maxReplicas``), ``resolved`` -> ``minReplicas``; a factor of 0 sends a firing function
  to ``minReplicas`` too (the ``step > 0`` test). Defaults (``gateway/scaling/ranges.go``):
  ``DefaultScalingFactor = 10`` (``com.openfaas.scale.factor``), ``DefaultMaxReplicas =
  5``, ``DefaultMinReplicas = 1``. So a CE function steps by ``ceil(5/100 x 10) = 1``
  replica per notification, up to 5. (Older gateways and docs.openfaas.com's "Legacy
  scaling for the Community Edition" page say 20% and the function's own max, 20 by
  default; the code has used the values above since 2023.) ``scale_factor_pct=20,
  replica_cap=None`` reproduces the old behaviour.

Mapping: ``gateway_function_invocation_total{code="200"}`` counts *completed* invocations,
so the rate is the stage's ``departure_rate`` over the snapshot window (10 s by default,
as in the rule). Deviation, on purpose: a stage whose rate is unknown keeps its alert
state (Prometheus would see no series, resolve the alert and the gateway would drop the
function to its minimum; house style §3.3 forbids that accident). The stage's own
``max_replicas`` also bounds the count (the cap is ``min(max_replicas, replica_cap)``), as
the label does upstream.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import Field

from quartfaas.control.baselines._common import (
    EPS,
    BaselineParams,
    bounded,
    build_params,
    decision,
    due,
    find,
    hold,
    next_due,
    set_to,
    stale_reason,
)
from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot


class AlertStatus(StrEnum):
    INACTIVE = "inactive"
    PENDING = "pending"
    FIRING = "firing"


class OpenFaaSCEParams(BaselineParams):
    threshold_rps: float = Field(
        default=5.0, ge=0, le=1e6, description="APIHighInvocationRate '> 5'"
    )
    for_s: float = Field(default=5.0, ge=0, le=3600, description="the rule's 'for: 5s'")
    evaluation_interval_s: float = Field(
        default=15.0, gt=0, le=3600, description="Prometheus global evaluation_interval"
    )
    group_wait_s: float = Field(default=5.0, ge=0, le=3600, description="Alertmanager group_wait")
    group_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="Alertmanager group_interval"
    )
    repeat_interval_s: float = Field(
        default=30.0, gt=0, le=86_400, description="Alertmanager repeat_interval"
    )
    scale_factor_pct: int = Field(
        default=10,
        ge=0,
        le=100,
        description="com.openfaas.scale.factor, % of max replicas per alert",
    )
    replica_cap: int | None = Field(
        default=5,
        ge=1,
        le=10_000,
        description="DefaultMaxReplicas, applied to every function (None: the stage's max)",
    )


@dataclass(frozen=True, slots=True)
class AlertState:
    name: str
    status: AlertStatus = AlertStatus.INACTIVE
    active_since: float | None = None
    resolved_unsent: bool = False


@dataclass(frozen=True, slots=True)
class CEState:
    next_eval_at: float
    alerts: tuple[AlertState, ...]
    next_flush_at: float | None = None  # None: Alertmanager holds no group
    last_sent_at: float | None = None
    changed: bool = False  # alert set changed since the last notification


class OpenFaaSCE:
    """OpenFaaS CE: APIHighInvocationRate alert -> step up; resolved -> min replicas."""

    name: str = "openfaas-ce"

    def __init__(self, params: OpenFaaSCEParams | None = None) -> None:
        self.params = params or OpenFaaSCEParams()

    def initial_state(self, snapshot: PipelineSnapshot) -> CEState:
        return CEState(snapshot.now, tuple(AlertState(s.name) for s in snapshot.stages))

    def decide(self, snapshot: PipelineSnapshot, state: CEState) -> tuple[Decision, CEState]:
        stale = stale_reason(snapshot, self.params)
        if stale is not None:
            return hold_all(snapshot, self.name, stale), state
        notes: dict[str, str] = {}
        if due(snapshot.now, state.next_eval_at):
            state = self._evaluate(snapshot, state, notes)
        if state.next_flush_at is None or not due(snapshot.now, state.next_flush_at):
            return self._quiet(snapshot, state, notes), state
        return self._flush(snapshot, state, notes)

    def _evaluate(self, snapshot: PipelineSnapshot, st: CEState, notes: dict[str, str]) -> CEState:
        """One Prometheus rule evaluation for every stage."""
        p, now = self.params, snapshot.now
        alerts, changed, next_flush = [], st.changed, st.next_flush_at
        for s in snapshot.stages:
            a = find(st.alerts, s.name) or AlertState(s.name)
            rate = s.departure_rate
            if rate is None:
                notes[s.name] = f"no-data: completion rate unknown, alert stays {a.status}"
                alerts.append(a)
                continue
            over = rate > p.threshold_rps
            cmp = f"rate {rate:.2f} {'>' if over else '<='} {p.threshold_rps:g} req/s"
            if over:
                since = a.active_since if a.status != AlertStatus.INACTIVE else now
                assert since is not None
                status = a.status
                if status != AlertStatus.FIRING:
                    status = AlertStatus.PENDING
                    if now - since >= p.for_s - EPS:
                        status, changed = AlertStatus.FIRING, True
                        if next_flush is None:  # a new Alertmanager group waits group_wait
                            next_flush = now + p.group_wait_s
                a = AlertState(s.name, status, since, a.resolved_unsent)
            elif a.status == AlertStatus.FIRING:
                a, changed = AlertState(s.name, resolved_unsent=True), True
            else:
                a = AlertState(s.name, resolved_unsent=a.resolved_unsent)
            notes[s.name] = f"{cmp}, alert {a.status}"
            alerts.append(a)
        nxt = next_due(st.next_eval_at, now, p.evaluation_interval_s)
        return CEState(nxt, tuple(alerts), next_flush, st.last_sent_at, changed)

    def _quiet(self, snapshot: PipelineSnapshot, st: CEState, notes: dict[str, str]) -> Decision:
        stages = [
            hold(s, "hold: " + notes.get(s.name, self._status(st, s.name))) for s in snapshot.stages
        ]
        return decision(snapshot, self.name, stages, "hold: no alert notification", hold=True)

    def _status(self, st: CEState, name: str) -> str:
        a = find(st.alerts, name)
        return f"alert {a.status if a else AlertStatus.INACTIVE}"

    def _flush(
        self, snapshot: PipelineSnapshot, st: CEState, notes: dict[str, str]
    ) -> tuple[Decision, CEState]:
        """An Alertmanager group flush: maybe a notification, handled by the gateway."""
        p, now = self.params, snapshot.now
        assert st.next_flush_at is not None
        firing = {a.name for a in st.alerts if a.status == AlertStatus.FIRING}
        resolved = {a.name for a in st.alerts if a.resolved_unsent}
        repeat = st.last_sent_at is None or now - st.last_sent_at >= p.repeat_interval_s - EPS
        send = bool(firing or resolved) and (st.changed or repeat)
        alive = bool(firing) or (bool(resolved) and not send)
        next_flush = next_due(st.next_flush_at, now, p.group_interval_s) if alive else None
        if not send:
            st = CEState(st.next_eval_at, st.alerts, next_flush, st.last_sent_at, st.changed)
            return self._quiet(snapshot, st, notes), st
        decisions: list[StageDecision] = []
        for s in snapshot.stages:
            if s.name in firing:
                decisions.append(self._firing(s))
            elif s.name in resolved:
                n, note = bounded(s, s.min_replicas)
                decisions.append(set_to(s, n, f"alert resolved: back to min_replicas{note}"))
            else:
                decisions.append(hold(s, "hold: " + notes.get(s.name, self._status(st, s.name))))
        alerts = tuple(AlertState(a.name, a.status, a.active_since, False) for a in st.alerts)
        new = CEState(st.next_eval_at, alerts, next_flush, now, False)
        why = "alert notification" if st.changed else "alert notification (repeat_interval)"
        return decision(snapshot, self.name, decisions, why), new

    def _firing(self, s: StageSnapshot) -> StageDecision:
        """``CalculateReplicas`` for a firing alert."""
        p = self.params
        top = s.max_replicas if p.replica_cap is None else min(s.max_replicas, p.replica_cap)
        step = math.ceil(top / 100 * p.scale_factor_pct - EPS)
        if step <= 0:
            n, note = bounded(s, s.min_replicas)
            return set_to(s, n, f"alert firing with scale factor 0: set to min_replicas{note}")
        n, note = bounded(s, min(s.replicas + step, top))
        return set_to(s, n, f"alert firing: +{step} ({p.scale_factor_pct}% of max {top}){note}")


def make(**overrides: Any) -> OpenFaaSCE:
    return OpenFaaSCE(build_params(OpenFaaSCEParams, OpenFaaSCE.name, overrides))

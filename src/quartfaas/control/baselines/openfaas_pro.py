"""The OpenFaaS Pro autoscaler (rps / capacity / cpu modes) as a pure policy.

Neighbours: shared helpers in ``_common.py``; registered as ``"openfaas-pro"`` in
``__init__.py``. Each pipeline stage is one OpenFaaS function.

The autoscaler itself is closed source; its behaviour is documented at
https://docs.openfaas.com/architecture/autoscaling/ (openfaas/docs
``docs/architecture/autoscaling.md``) and its load queries are the recording rules in
openfaas/faas-netes ``chart/openfaas/templates/prometheus-pro-cfg.yaml``:

* Labels and defaults: ``com.openfaas.scale.type`` ``rps`` (or ``capacity``, ``cpu``),
  ``com.openfaas.scale.target`` 50 (load per replica), ``com.openfaas.scale.target-proportion``
  0.90, ``com.openfaas.scale.min`` 1, ``com.openfaas.scale.max`` 20,
  ``com.openfaas.scale.zero`` false, ``com.openfaas.scale.zero-duration`` 15m,
  ``com.openfaas.scale.down.window`` off (at most 5m: scale down only to the highest
  recommendation recorded in the window).
* ``desired = ceil(ready pods x (mean load per pod / (target x target-proportion)))``, i.e.
  ``ceil(load / (target x proportion))``; a result below min is brought up to min (zero
  only through scale-to-zero after ``zero-duration`` without traffic).
* Load (``job:function_current_load:sum``, each wrapped in ``ceil``): ``rps`` =
  ``rate(gateway_function_invocation_total[30s])`` (completed requests per second),
  ``capacity`` = ``max_over_time(gateway_function_invocation_inflight[45s:5s])``,
  ``cpu`` = ``irate(pod_cpu_usage_seconds_total[1m]) x 1000`` (milli-CPU, summed over pods).
* The gateway scales a function at 0 back to min on its first request
  (``scale_from_zero``, on by default), without waiting for the autoscaler.

Not documented: the autoscaler's own period. ``interval_s`` defaults to 15 s, the
Prometheus ``evaluation_interval`` that refreshes the recording rule it reads (an
assumption; a faster loop would only re-read the same value).

Mapping onto a stage: rps = ``departure_rate``; capacity = the highest
``in_flight + queue_len`` sampled over the last 45 s (kept in the policy state);
cpu = ``cpu_utilisation x cpu_per_replica x 1000 x ready_replicas``. Unknown load ->
hold. The default target (50 per replica) is the real default; for model stages that
serve a few requests per second a caller will usually pass e.g. ``scale_type="capacity",
target=<max concurrency>`` as the docs suggest for functions with ``max_inflight``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import Field

from quartfaas.control.baselines._common import (
    EPS,
    BaselineParams,
    PeriodicState,
    Window,
    between,
    bounded,
    build_params,
    carried,
    decision,
    each_stage,
    hold,
    ongoing,
    period,
    push,
    set_to,
    stabilise,
    stale_reason,
    window_max,
)
from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot


class OpenFaaSProParams(BaselineParams):
    scale_type: Literal["rps", "capacity", "cpu"] = Field(
        default="rps", description="com.openfaas.scale.type"
    )
    target: float = Field(
        default=50.0, gt=0, le=1e9, description="com.openfaas.scale.target per replica"
    )
    target_proportion: float = Field(
        default=0.9, gt=0, le=10, description="com.openfaas.scale.target-proportion"
    )
    scale_zero: bool = Field(default=False, description="com.openfaas.scale.zero")
    zero_duration_s: float = Field(
        default=900.0, gt=0, le=86_400, description="com.openfaas.scale.zero-duration"
    )
    down_window_s: float = Field(
        default=0.0, ge=0, le=300, description="com.openfaas.scale.down.window (0: off)"
    )
    interval_s: float = Field(
        default=15.0, gt=0, le=3600, description="autoscaler period (undocumented; see docstring)"
    )
    capacity_window_s: float = Field(
        default=45.0, gt=0, le=3600, description="max_over_time window of the capacity load"
    )


@dataclass(frozen=True, slots=True)
class ProStageState:
    name: str
    inflight: Window  # (t, in-flight + queued) over the capacity window
    recommendations: Window  # (t, desired) over the down window
    last_traffic_at: float


ProState = PeriodicState[ProStageState]  # next_at: the next autoscaler run


class OpenFaaSPro:
    """OpenFaaS Pro autoscaler: proportional to load per replica, per stage."""

    name: str = "openfaas-pro"

    def __init__(self, params: OpenFaaSProParams | None = None) -> None:
        self.params = params or OpenFaaSProParams()

    def initial_state(self, snapshot: PipelineSnapshot) -> ProState:
        return ProState(
            snapshot.now,
            tuple(ProStageState(s.name, (), (), snapshot.now) for s in snapshot.stages),
        )

    def decide(self, snapshot: PipelineSnapshot, state: ProState) -> tuple[Decision, ProState]:
        now, p = snapshot.now, self.params
        stale = stale_reason(snapshot, p)
        if stale is not None:
            return hold_all(snapshot, self.name, stale), state

        def record(s: StageSnapshot, st: ProStageState) -> ProStageState:
            traffic = ongoing(s) > 0 or s.arrivals > 0 or (s.arrival_rate or 0.0) > 0
            return ProStageState(
                s.name,
                push(st.inflight, now, ongoing(s), p.capacity_window_s),
                st.recommendations,
                now if traffic else st.last_traffic_at,
            )

        recorded = carried(
            snapshot, state.stages, lambda name: ProStageState(name, (), (), now), record
        )
        evaluate, nxt = period(state.next_at, now, p.interval_s)

        def step(s: StageSnapshot, st: ProStageState) -> tuple[StageDecision, ProStageState]:
            if s.replicas == 0 and ongoing(s) > 0:
                n, note = bounded(s, max(1, s.min_replicas))
                return set_to(s, n, f"gateway scale_from_zero: {ongoing(s)} waiting{note}"), st
            if evaluate:
                return self._evaluate(s, st, now)
            return hold(s, between("autoscaler runs", nxt, now)), st

        decisions, stages = each_stage(snapshot, recorded, step)
        acting = evaluate or any(d.replicas != d.current for d in decisions)
        reason = "autoscaler run" if evaluate else "hold: between autoscaler runs"
        return (
            decision(snapshot, self.name, decisions, reason, hold=not acting),
            ProState(nxt, stages),
        )

    def _load(self, s: StageSnapshot, st: ProStageState, now: float) -> tuple[float | None, str]:
        p = self.params
        if p.scale_type == "rps":
            if s.departure_rate is None:
                return None, "completion rate unknown"
            return math.ceil(s.departure_rate - EPS), f"rps {s.departure_rate:.2f}"
        if p.scale_type == "capacity":
            peak = window_max(st.inflight, now, p.capacity_window_s)
            if peak is None:
                return None, "no in-flight sample"
            return math.ceil(peak - EPS), f"in-flight max {peak:g} over {p.capacity_window_s:g} s"
        if s.cpu_utilisation is None:
            return None, "cpu_utilisation unknown"
        milli = s.cpu_utilisation * s.cpu_per_replica * 1000.0 * s.ready_replicas
        return math.ceil(milli - EPS), f"cpu {milli:.0f} mCPU"

    def _evaluate(
        self, s: StageSnapshot, st: ProStageState, now: float
    ) -> tuple[StageDecision, ProStageState]:
        p = self.params
        if p.scale_zero and now - st.last_traffic_at >= p.zero_duration_s - EPS:
            return set_to(
                s,
                0,
                f"no traffic for zero-duration {p.zero_duration_s:g} s: scale to zero "
                "(OpenFaaS Pro's own behaviour, com.openfaas.scale.zero=true)",
            ), st
        load, what = self._load(s, st, now)
        if load is None:
            return hold(s, f"hold: no-data: {what}"), st
        per = p.target * p.target_proportion
        desired = math.ceil(load / per - EPS)
        note = f"{what}: load {load:g} / ({p.target:g} x {p.target_proportion:g}) -> {desired}"
        target, bound_note = bounded(s, desired)
        recs = st.recommendations
        if p.down_window_s > 0:
            recs, top = stabilise(recs, now, float(target), p.down_window_s)
            if target < s.replicas:
                highest = int(top)
                if highest > target:
                    target = min(s.replicas, highest)
                    note += f"; down window {p.down_window_s:g} s keeps {target}"
        new = ProStageState(s.name, st.inflight, recs, st.last_traffic_at)
        return set_to(s, target, note + bound_note, score=load / per), new


def make(**overrides: Any) -> OpenFaaSPro:
    return OpenFaaSPro(build_params(OpenFaaSProParams, OpenFaaSPro.name, overrides))

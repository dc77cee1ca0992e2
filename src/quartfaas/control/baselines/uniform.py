"""The prototype's uniform pipeline scaling (``sdag_scale``) as a pure policy.

Neighbours: shared helpers in ``_common.py``; registered as ``"uniform"`` in
``__init__.py``. Source: the Quart prototype's legacy "DaSheng" scaler
(``src/quart/legacy/scaler.py``, ``sdag_scale``), summarised in
``/work/shared/reference/quart-prototype.md`` §5:

* one replica count for **all** stages of a pipeline:
  ``ceil(rps0 x (exec_time[model] + 0.01 x N))``, with ``rps0`` the request rate of
  submod-0 and ``N`` the number of stages, clamped to [1, 3];
* scale-down cooldown 6 min; the loop runs every 3 s.

Fixes and mapping (documented deviations):

* ``exec_time`` is the pipeline's *measured* service time, the sum of the stages'
  ``service_mean_s``, instead of the prototype's ``MODEL_EXEC_TIME`` dict, whose key (the
  first token of the function name, upper-cased) misses "OPT" and falls back to 0.1 s.
* the clamp is each stage's own ``[min_replicas, max_replicas]`` rather than [1, 3].
* ``rps0`` is stage 0's ``arrival_rate``; if it or any service time is unknown, hold.
* the cooldown: the common count may go down only when it has not changed for
  ``cooldown_s``; it goes up at once. A (re)started controller counts its start as a change,
  so it does not shed replicas in its first 6 minutes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from quartfaas.control.baselines._common import (
    EPS,
    BaselineParams,
    bounded,
    build_params,
    decision,
    due,
    next_due,
    off_period,
    set_to,
    stale_reason,
)
from quartfaas.control.policy import Decision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot


class UniformParams(BaselineParams):
    interval_s: float = Field(default=3.0, gt=0, le=3600, description="loop period of sdag_scale")
    cooldown_s: float = Field(
        default=360.0, ge=0, le=86_400, description="scale-down cooldown (6 min in the prototype)"
    )
    overhead_per_stage_s: float = Field(
        default=0.01, ge=0, le=10, description="the 0.01 s per stage added to exec_time"
    )


@dataclass(frozen=True, slots=True)
class UniformState:
    next_eval_at: float
    count: int  # the common count last decided
    changed_at: float  # when it last changed


class Uniform:
    """One replica count for every stage, from stage 0's rate and the pipeline's time."""

    name: str = "uniform"

    def __init__(self, params: UniformParams | None = None) -> None:
        self.params = params or UniformParams()

    def initial_state(self, snapshot: PipelineSnapshot) -> UniformState:
        first = min(snapshot.stages, key=lambda s: s.index) if snapshot.stages else None
        count = first.replicas if first is not None else 0
        return UniformState(snapshot.now, count, snapshot.now)

    def decide(
        self, snapshot: PipelineSnapshot, state: UniformState
    ) -> tuple[Decision, UniformState]:
        p, now = self.params, snapshot.now
        if not due(now, state.next_eval_at):
            return off_period(snapshot, self.name, state.next_eval_at, "sdag_scale runs"), state
        nxt = next_due(state.next_eval_at, now, p.interval_s)
        waiting = UniformState(nxt, state.count, state.changed_at)
        stale = stale_reason(snapshot, p)
        if stale is not None:
            return hold_all(snapshot, self.name, stale), waiting
        if not snapshot.stages:
            return hold_all(snapshot, self.name, "hold: pipeline has no stages"), waiting
        first = min(snapshot.stages, key=lambda s: s.index)
        means = [s.service_mean_s for s in snapshot.stages]
        if first.arrival_rate is None:
            return hold_all(snapshot, self.name, "hold: no-data: stage-0 rate unknown"), waiting
        if any(m is None for m in means):
            missing = [s.name for s in snapshot.stages if s.service_mean_s is None]
            reason = f"hold: no-data: service time unknown for {', '.join(missing)}"
            return hold_all(snapshot, self.name, reason), waiting
        n = len(snapshot.stages)
        exec_time = sum(m for m in means if m is not None)
        raw = math.ceil(first.arrival_rate * (exec_time + p.overhead_per_stage_s * n) - EPS)
        note = (
            f"ceil({first.arrival_rate:.2f} req/s x ({exec_time:.3f} s + "
            f"{p.overhead_per_stage_s:g} x {n})) = {raw}"
        )
        count, changed_at = raw, state.changed_at
        if raw < state.count and now - state.changed_at < p.cooldown_s - EPS:
            count = state.count
            note += (
                f"; scale-down cooldown ({now - state.changed_at:.0f}/{p.cooldown_s:g} s): "
                f"keep {count}"
            )
        if count != state.count:
            changed_at = now
        stages = []
        for s in snapshot.stages:
            target, bound_note = bounded(s, count)
            stages.append(set_to(s, target, note + bound_note))
        return (
            decision(snapshot, self.name, stages, f"uniform count {count}"),
            UniformState(nxt, count, changed_at),
        )


def make(**overrides: Any) -> Uniform:
    return Uniform(build_params(UniformParams, Uniform.name, overrides))

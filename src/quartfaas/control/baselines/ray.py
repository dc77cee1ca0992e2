"""Ray Serve's default request-based autoscaling as a pure policy, one deployment per stage.

Neighbours: shared helpers in ``_common.py``; registered as ``"ray"`` in ``__init__.py``.

What Ray Serve does, and where (ray-project/ray):

* ``python/ray/serve/config.py`` (``AutoscalingConfig``): ``target_ongoing_requests``
  = ``DEFAULT_TARGET_ONGOING_REQUESTS`` = 2 (``serve/_private/constants.py``),
  ``metrics_interval_s`` 10, ``look_back_period_s`` 30, ``upscale_delay_s`` 30,
  ``downscale_delay_s`` 600, ``smoothing_factor`` 1.0 (``upscaling_factor`` /
  ``downscaling_factor`` default to it), ``downscale_to_zero_delay_s`` unset.
* ``python/ray/serve/autoscaling_policy.py``:
  ``replica_queue_length_autoscaling_policy`` wants
  ``current x total_num_requests / (target_ongoing_requests x current)`` replicas;
  ``_apply_scaling_factors`` moves ``ceil(current + factor x (desired - current))`` (and at
  least one step down when a smaller count is wanted); ``_apply_bounds`` clips to
  ``[min_replicas, max_replicas]``; ``_apply_delay_logic`` acts only after the same
  direction has been wanted for ``upscale_delay_s`` / ``downscale_delay_s`` against the
  *current target* (not the running count), never below 1 except 1 -> 0;
  ``_get_cold_start_scale_up_replicas`` scales a deployment with 0 running replicas and
  waiting requests at once, bypassing the delays.
* ``CONTROL_LOOP_INTERVAL_S`` 0.1 s (``serve/_private/constants.py``): the policy runs
  every 0.1 s, so here it runs at every tick of our loop. Ray counts the delays in
  control-loop ticks (``decision_counter > int(upscale_delay_s / CONTROL_LOOP_INTERVAL_S)``);
  this policy compares timestamps instead (house style §3.1), which gives the same delay.

Metrics: ``total_num_requests`` is ongoing requests (queued at the handles + executing in
the replicas) averaged over ``look_back_period_s``, as last pushed; pushes happen every
``metrics_interval_s``. Here a stage's ongoing requests are ``in_flight + queue_len``,
sampled at every tick; every ``metrics_interval_s`` the mean over the look-back period
becomes the value the policy sees until the next push.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from pydantic import Field, model_validator

from quartfaas.control.baselines._common import (
    EPS,
    BaselineParams,
    Window,
    build_params,
    clamp,
    decision,
    find,
    hold,
    ongoing,
    push,
    set_to,
    stale_reason,
    window_mean,
)
from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot


class RayParams(BaselineParams):
    target_ongoing_requests: float = Field(
        default=2.0, gt=0, le=1e6, description="target_ongoing_requests per replica"
    )
    metrics_interval_s: float = Field(
        default=10.0, gt=0, le=3600, description="metrics_interval_s: how often metrics are pushed"
    )
    look_back_period_s: float = Field(
        default=30.0,
        gt=0,
        le=3600,
        description="look_back_period_s: averaging window of the metric",
    )
    upscale_delay_s: float = Field(default=30.0, ge=0, le=86_400, description="upscale_delay_s")
    downscale_delay_s: float = Field(
        default=600.0, ge=0, le=86_400, description="downscale_delay_s"
    )
    downscale_to_zero_delay_s: float | None = Field(
        default=None,
        ge=0,
        le=86_400,
        description="downscale_to_zero_delay_s (1 -> 0); None: downscale_delay_s",
    )
    upscaling_factor: float = Field(
        default=1.0, gt=0, le=100, description="upscaling_factor (smoothing_factor 1.0 by default)"
    )
    downscaling_factor: float = Field(
        default=1.0,
        gt=0,
        le=100,
        description="downscaling_factor (smoothing_factor 1.0 by default)",
    )

    @model_validator(mode="after")
    def _window_covers_interval(self) -> RayParams:
        if self.look_back_period_s < self.metrics_interval_s:
            raise ValueError(
                f"look_back_period_s ({self.look_back_period_s}) must be >= "
                f"metrics_interval_s ({self.metrics_interval_s})"
            )
        return self


@dataclass(frozen=True, slots=True)
class RayStageState:
    name: str
    target: int  # the deployment's target_num_replicas, as Ray's controller keeps it
    samples: Window  # (t, ongoing requests) over the look-back period
    reported: float | None  # total_num_requests as last pushed
    reported_at: float | None
    direction: int  # +1 wanting up, -1 wanting down, 0 neither (Ray's counter sign)
    since: float | None  # when the current direction started being wanted


@dataclass(frozen=True, slots=True)
class RayState:
    stages: tuple[RayStageState, ...]


class RayServe:
    """Ray Serve default autoscaling policy with its delays and smoothing, per stage."""

    name: str = "ray"

    def __init__(self, params: RayParams | None = None) -> None:
        self.params = params or RayParams()

    def initial_state(self, snapshot: PipelineSnapshot) -> RayState:
        return RayState(
            tuple(
                RayStageState(s.name, s.replicas, (), None, None, 0, None) for s in snapshot.stages
            )
        )

    def decide(self, snapshot: PipelineSnapshot, state: RayState) -> tuple[Decision, RayState]:
        stale = stale_reason(snapshot, self.params)
        if stale is not None:
            return hold_all(snapshot, self.name, stale), state
        decisions: list[StageDecision] = []
        stages: list[RayStageState] = []
        for s in snapshot.stages:
            prev = find(state.stages, s.name) or RayStageState(
                s.name, s.replicas, (), None, None, 0, None
            )
            d, st = self._stage(s, self._record(s, prev, snapshot.now), snapshot.now)
            decisions.append(d)
            stages.append(st)
        return decision(snapshot, self.name, decisions, "Ray Serve control loop"), RayState(
            tuple(stages)
        )

    def _record(self, s: StageSnapshot, st: RayStageState, now: float) -> RayStageState:
        p = self.params
        samples = push(st.samples, now, ongoing(s), p.look_back_period_s)
        reported, at = st.reported, st.reported_at
        if at is None or now - at >= p.metrics_interval_s - EPS:
            reported, at = window_mean(samples, now, p.look_back_period_s), now
        return RayStageState(s.name, st.target, samples, reported, at, st.direction, st.since)

    def _stage(
        self, s: StageSnapshot, st: RayStageState, now: float
    ) -> tuple[StageDecision, RayStageState]:
        p = self.params
        running = s.ready_replicas
        if running == 0:
            # _get_cold_start_scale_up_replicas: Ray's handles push metrics at once when
            # there is no replica, so waiting requests scale up now, bypassing the delays.
            target = st.target
            if ongoing(s) > 0:
                target = max(math.ceil(p.upscaling_factor - EPS), st.target)
            target = clamp(target, s.min_replicas, s.max_replicas)
            new = RayStageState(s.name, target, st.samples, st.reported, st.reported_at, 0, None)
            why = f"{ongoing(s)} waiting" if ongoing(s) > 0 else "idle"
            return set_to(s, target, f"cold start (0 running, {why}): target {target}"), new
        if st.reported is None:
            return hold(s, "hold: no-data: no metrics pushed yet"), st

        total = st.reported
        desired = total / p.target_ongoing_requests  # current x error_ratio
        # _apply_scaling_factors (against the running count, as Ray does).
        delta = desired - running
        factor = p.upscaling_factor if delta > 0 else p.downscaling_factor
        scaled = math.ceil(running + factor * delta - EPS)
        if math.ceil(desired - EPS) < running and scaled == running:
            scaled -= 1
        want = clamp(scaled, s.min_replicas, s.max_replicas)
        note = (
            f"{total:.2f} ongoing (mean over {p.look_back_period_s:g} s) / "
            f"target {p.target_ongoing_requests:g} -> {want}"
        )
        # _apply_delay_logic, against the current target.
        target, direction, since = st.target, st.direction, st.since
        if want > target:
            if direction != 1:
                direction, since = 1, now
            assert since is not None
            if now - since >= p.upscale_delay_s - EPS:
                target, direction, since = want, 0, None
                note += f"; wanted for {p.upscale_delay_s:g} s: scale up"
            else:
                note += f"; upscale delay {now - since:.0f}/{p.upscale_delay_s:g} s"
        elif want < target:
            if direction != -1:
                direction, since = -1, now
            assert since is not None
            to_zero = target == 1
            delay = p.downscale_delay_s
            if to_zero and p.downscale_to_zero_delay_s is not None:
                delay = p.downscale_to_zero_delay_s
            if not to_zero:
                want = max(1, want)
            if now - since >= delay - EPS:
                target, direction, since = want, 0, None
                note += f"; wanted for {delay:g} s: scale down"
            else:
                note += f"; downscale delay {now - since:.0f}/{delay:g} s"
        else:
            direction, since = 0, None
        target = clamp(target, s.min_replicas, s.max_replicas)
        new = RayStageState(
            s.name, target, st.samples, st.reported, st.reported_at, direction, since
        )
        return set_to(s, target, note, score=total / max(running, 1)), new


def make(**overrides: Any) -> RayServe:
    return RayServe(build_params(RayParams, RayServe.name, overrides))

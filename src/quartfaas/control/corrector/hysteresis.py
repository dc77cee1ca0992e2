"""Hysteresis between a plan and scale actions (pure; timestamps, never tick counts).

Neighbours: ``planner.py`` proposes a replica count per stage every tick; this decides
what to ask for. Rules (issue 12, item 4):

* replicas already starting count toward the plan: ``have = ready + starting``;
* **scale up at once** when the increase is clear: a plan above ``have`` is the target
  this tick if a plan for the load *less* its noise band also asks for more than
  ``have`` (``up_clear``; the caller's second plan, the upper Schmitt threshold). An
  increase within the noise band (a noisy window at a boundary) is followed only once
  the plan has asked for more for ``upscale_confirm_s`` without a break, and then to
  the *lowest* plan seen in that high period. At 5 req/s a 10 s window holds ~50
  requests and the measured load moves by +-40%; following every such window flapped a
  stage 2<->3 ten times in 30 minutes of constant Poisson load (issue 12, item 4);
* **scale down late**: a plan below ``have`` is followed only once the plan has asked
  for fewer for ``downscale_delay_s`` without a break (``now - lower_since >= delay``),
  and then only to the *highest* plan seen in that low period, so one quiet tick does
  not set the size;
* a plan equal to or above ``have`` ends a low period; one at or below it ends a high
  period.
"""

from __future__ import annotations

from dataclasses import dataclass

from quartfaas.frozen import fast_init


@fast_init
@dataclass(frozen=True, slots=True)
class HysteresisState:
    """When the plan first asked for fewer than ``have``, and the most it asked since."""

    lower_since_s: float | None = None
    lower_peak: int | None = None
    higher_since_s: float | None = None
    higher_floor: int | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class Step:
    """The count to ask for, and why."""

    target: int
    reason: str


def step(  # noqa: PLR0917 - the documented positional order
    ready: int,
    starting: int,
    planned: int,
    now: float,
    state: HysteresisState,
    downscale_delay_s: float,
    *,
    up_clear: bool = True,
    upscale_confirm_s: float = 0.0,
) -> tuple[Step, HysteresisState]:
    """One stage's target this tick and the next state."""
    if ready < 0 or starting < 0 or planned < 0 or downscale_delay_s < 0 or upscale_confirm_s < 0:
        raise ValueError(
            f"need ready, starting, planned, delays >= 0, got {ready}, {starting}, "
            f"{planned}, {downscale_delay_s}, {upscale_confirm_s}"
        )
    have = ready + starting
    if planned > have:
        since = state.higher_since_s
        if up_clear or upscale_confirm_s == 0.0 or (since is not None and now < since):
            why = f"up {have} -> {planned} at once"
            if starting:
                why += f" ({starting} starting counted)"
            return Step(planned, why), HysteresisState()
        if since is None:
            return (
                Step(have, f"plan {planned} > {have} within the noise band: high since now"),
                HysteresisState(higher_since_s=now, higher_floor=planned),
            )
        floor = planned if state.higher_floor is None else min(state.higher_floor, planned)
        high_for = now - since
        if high_for >= upscale_confirm_s:
            return (
                Step(floor, f"up {have} -> {floor} after {high_for:.3g}s high (lowest plan then)"),
                HysteresisState(),
            )
        return (
            Step(
                have,
                f"plan {planned} > {have} within the noise band for {high_for:.3g}s "
                f"< {upscale_confirm_s:g}s",
            ),
            HysteresisState(higher_since_s=since, higher_floor=floor),
        )
    if planned == have:
        return Step(have, "plan met"), HysteresisState()
    since = state.lower_since_s
    if since is None or now < since:
        return Step(have, f"plan {planned} < {have}: low since now"), HysteresisState(now, planned)
    peak = planned if state.lower_peak is None else max(state.lower_peak, planned)
    low_for = now - since
    if low_for >= downscale_delay_s:
        return (
            Step(peak, f"down {have} -> {peak} after {low_for:.3g}s low (highest plan then)"),
            HysteresisState(),
        )
    return (
        Step(have, f"plan {planned} < {have} for {low_for:.3g}s < {downscale_delay_s:g}s"),
        HysteresisState(since, peak),
    )

"""Hysteresis between a plan and scale actions (pure; timestamps, never tick counts).

Neighbours: ``planner.py`` proposes a replica count per stage every tick; this decides
what to ask for. Rules (issue 12, item 4):

* replicas already starting count toward the plan: ``have = ready + starting``;
* **scale up at once**: a plan above ``have`` is the target this tick;
* **scale down late**: a plan below ``have`` is followed only once the plan has asked
  for fewer for ``downscale_delay_s`` without a break (``now - lower_since >= delay``),
  and then only to the *highest* plan seen in that low period, so one quiet tick does
  not set the size;
* a plan equal to or above ``have`` ends a low period.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class HysteresisState:
    """When the plan first asked for fewer than ``have``, and the most it asked since."""

    lower_since_s: float | None = None
    lower_peak: int | None = None


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
) -> tuple[Step, HysteresisState]:
    """One stage's target this tick and the next state."""
    if ready < 0 or starting < 0 or planned < 0 or downscale_delay_s < 0:
        raise ValueError(
            f"need ready, starting, planned, delay >= 0, got {ready}, {starting}, "
            f"{planned}, {downscale_delay_s}"
        )
    have = ready + starting
    if planned > have:
        why = f"up {have} -> {planned} at once"
        if starting:
            why += f" ({starting} starting counted)"
        return Step(planned, why), HysteresisState()
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

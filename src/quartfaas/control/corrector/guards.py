"""Guards between a raw replica target and what the corrector asks for (pure).

Neighbours: ``corrector.py`` computes a raw target per stage (queueing model + PID +
backlog) and runs it through ``apply_guards``; the guards' memory (``GuardMemory``) lives
in the corrector's frozen state. The smoother and compensator post-process *after* this.

The chain, in this order (house style §3.5)::

    raw target -> rate_limit -> bounds -> cooldown -> downscale_delay -> target

1. ``rate_limit``: at most ``max_step_up`` added / ``max_step_down`` removed per tick.
2. ``bounds``: within ``[min_replicas, max_replicas]`` of the stage.
3. ``cooldown``: no scale-up within ``up_cooldown_s`` of the last scale-up; no scale-down
   within ``down_cooldown_s`` of the last change in *either* direction (never undo a
   fresh scale-up). A scale-up is not delayed by a recent scale-down: capacity for the
   SLO comes first.
4. ``downscale_delay``: the raw target must have stayed below the current count for
   ``downscale_delay_s`` (``now - below_since >= delay``, timestamps, never tick counts);
   it then goes down only to the *highest* raw target seen in that low period, so one
   quiet tick does not set the size.

Guards 3 and 4 "block" by returning the current count clamped to the bounds, so a stage
outside its bounds (the spec changed) is always brought back inside: bounds win over
cooldowns. Each guard returns the new value and, when it changed it, a reason fragment.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from quartfaas.control.config import ControllerConfig
from quartfaas.frozen import fast_init


class GuardResult(NamedTuple):
    """A guard's output: the value, and a reason fragment when the guard changed it."""

    value: int
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class GuardLimits:
    """The per-stage settings the guards read (bounds from the stage, the rest from config)."""

    min_replicas: int
    max_replicas: int
    max_step_up: int = 8
    max_step_down: int = 2
    up_cooldown_s: float = 2.0
    down_cooldown_s: float = 30.0
    downscale_delay_s: float = 15.0

    @classmethod
    def from_config(
        cls, cfg: ControllerConfig, min_replicas: int, max_replicas: int
    ) -> GuardLimits:
        return cls(
            min_replicas,
            max(min_replicas, max_replicas),
            cfg.max_step_up,
            cfg.max_step_down,
            cfg.up_cooldown_s,
            cfg.down_cooldown_s,
            cfg.downscale_delay_s,
        )


@fast_init
@dataclass(frozen=True, slots=True)
class GuardMemory:
    """Timestamps the cooldowns and the downscale delay compare ``now`` against."""

    last_up_s: float | None = None
    last_down_s: float | None = None
    below_since_s: float | None = None
    below_peak: int | None = None


def _clamp(x: int, lo: int, hi: int) -> int:
    return lo if x < lo else hi if x > hi else x


def rate_limit(current: int, proposed: int, max_step_up: int, max_step_down: int) -> GuardResult:
    if proposed > current + max_step_up:
        return GuardResult(current + max_step_up, f"capped by max_step_up {max_step_up}")
    if proposed < current - max_step_down:
        return GuardResult(current - max_step_down, f"capped by max_step_down {max_step_down}")
    return GuardResult(proposed)


def bounds(proposed: int, min_replicas: int, max_replicas: int) -> GuardResult:
    if proposed > max_replicas:
        return GuardResult(max_replicas, f"capped at max_replicas {max_replicas}")
    if proposed < min_replicas:
        return GuardResult(min_replicas, f"raised to min_replicas {min_replicas}")
    return GuardResult(proposed)


def cooldown(
    current: int, proposed: int, now: float, memory: GuardMemory, limits: GuardLimits
) -> GuardResult:
    hold = _clamp(current, limits.min_replicas, limits.max_replicas)
    if proposed > current and memory.last_up_s is not None:
        since = now - memory.last_up_s
        if since < limits.up_cooldown_s and proposed > hold:
            return GuardResult(
                hold, f"up cooldown ({since:.1f}s < up_cooldown_s {limits.up_cooldown_s:g}s)"
            )
    if proposed < current:
        last = max(
            (t for t in (memory.last_up_s, memory.last_down_s) if t is not None), default=None
        )
        if last is not None:
            since = now - last
            if since < limits.down_cooldown_s and proposed < hold:
                return GuardResult(
                    hold,
                    f"down cooldown ({since:.1f}s < down_cooldown_s {limits.down_cooldown_s:g}s)",
                )
    return GuardResult(proposed)


def downscale_delay(
    current: int, proposed: int, now: float, memory: GuardMemory, limits: GuardLimits
) -> GuardResult:
    """Needs ``memory`` already updated for this tick (``note_raw_target``)."""
    if proposed >= current:
        return GuardResult(proposed)
    hold = _clamp(current, limits.min_replicas, limits.max_replicas)
    since = memory.below_since_s
    if since is None or now - since < limits.downscale_delay_s:
        low_for = 0.0 if since is None else now - since
        if proposed >= hold:
            return GuardResult(proposed)
        return GuardResult(
            hold,
            f"held: low for {low_for:.1f}s < downscale_delay_s {limits.downscale_delay_s:g}s",
        )
    peak = memory.below_peak
    if peak is not None and peak > proposed:
        floor = _clamp(min(peak, current), limits.min_replicas, limits.max_replicas)
        if floor > proposed:
            return GuardResult(floor, f"down only to {floor} (highest target while low)")
    return GuardResult(proposed)


def note_raw_target(memory: GuardMemory, current: int, raw: int, now: float) -> GuardMemory:
    """Track how long (and how high at most) the raw target has been below ``current``."""
    if raw >= current:
        if memory.below_since_s is None and memory.below_peak is None:
            return memory
        return GuardMemory(memory.last_up_s, memory.last_down_s, None, None)
    if memory.below_since_s is None:
        return GuardMemory(memory.last_up_s, memory.last_down_s, now, raw)
    peak = raw if memory.below_peak is None else max(memory.below_peak, raw)
    return GuardMemory(memory.last_up_s, memory.last_down_s, memory.below_since_s, peak)


def note_action(memory: GuardMemory, current: int, target: int, now: float) -> GuardMemory:
    """Record a scale action; a scale-down starts a fresh low period."""
    if target > current:
        return GuardMemory(now, memory.last_down_s, memory.below_since_s, memory.below_peak)
    if target < current:
        return GuardMemory(memory.last_up_s, now, None, None)
    return memory


class Guarded(NamedTuple):
    """The end of the chain: the guarded target and every guard's reason, in order."""

    value: int
    reasons: tuple[str, ...]


def apply_guards(
    current: int, raw: int, now: float, memory: GuardMemory, limits: GuardLimits
) -> tuple[Guarded, GuardMemory]:
    """Run the chain (module docstring order); return the target, reasons and new memory."""
    if (
        raw == current
        and memory.below_since_s is None
        and limits.min_replicas <= current <= limits.max_replicas
    ):
        return Guarded(current, ()), memory  # the common steady tick: every guard passes
    memory = note_raw_target(memory, current, raw, now)
    reasons: list[str] = []
    r = rate_limit(current, raw, limits.max_step_up, limits.max_step_down)
    if r.reason:
        reasons.append(r.reason)
    r = bounds(r.value, limits.min_replicas, limits.max_replicas)
    if r.reason:
        reasons.append(r.reason)
    r = cooldown(current, r.value, now, memory, limits)
    if r.reason:
        reasons.append(r.reason)
    r = downscale_delay(current, r.value, now, memory, limits)
    if r.reason:
        reasons.append(r.reason)
    return Guarded(r.value, tuple(reasons)), note_action(memory, current, r.value, now)

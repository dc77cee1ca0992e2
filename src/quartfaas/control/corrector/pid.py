"""A PID step on frozen state: the Replica Corrector's feedback term (pure, no clock).

Neighbours: ``corrector.py`` calls ``pid_step`` once per stage per tick with the stage's
measured tail latency (``snapshot.py``), its budget (``budget.py``) and ``snapshot.now``;
the gains are ``config.PIDGains``. The output is a replica *correction* added to the
queueing model's feed-forward estimate (``queueing.py``).

Fixes to the prototype's PID (reference §1.1, §6 item 4):

* **Sign.** ``error = measurement/setpoint - 1``: a stage slower than its budget has a
  positive error and a positive output (more replicas). The prototype used
  ``target - observed`` and *added* it, scaling the wrong way.
* **Derivative on measurement**, not on error, so a change of setpoint (budgets move when
  measured service times move) gives no kick; both the current and the previous
  measurement are divided by the *current* setpoint.
* **No derivative on the first tick** (no previous measurement) and none when
  ``dt <= 0`` (same snapshot twice, or a clock that went backwards); the prototype's
  microsecond first ``dt`` gave a huge kick.
* **Anti-windup.** The integral is kept as its contribution to the output (replicas) and
  clamped to ``±integral_limit``; in addition it only integrates until the output
  reaches ``out_max``/``out_min``, never further into saturation (conditional integration).
  So after a long saturated period the output leaves saturation as soon as the error
  changes sign, instead of first unwinding a huge integral.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

from quartfaas.control.config import PIDGains


@dataclass(frozen=True, slots=True)
class PIDState:
    """What a PID remembers between ticks.

    ``integral`` is ``ki·∫error dt`` (already in output units, so a gain change does not
    rescale history); ``last_measurement``/``last_time`` are ``None`` before the first tick.
    """

    integral: float = 0.0
    last_measurement: float | None = None
    last_time: float | None = None
    last_output: float = 0.0


class PIDTerms(NamedTuple):
    """The parts of one step's output, for reasons and tests."""

    error: float
    p: float
    i: float
    d: float
    output: float
    saturated: bool


def _clamp(x: float, lo: float, hi: float) -> float:
    return lo if x < lo else hi if x > hi else x


def pid_terms(  # noqa: PLR0917 - same positional order as pid_step
    state: PIDState,
    measurement: float,
    setpoint: float,
    now: float,
    gains: PIDGains,
    out_min: float,
    out_max: float,
    *,
    freeze_integral: bool = False,
    max_dt: float | None = None,
) -> tuple[PIDTerms, PIDState]:
    """One PID step returning its terms. ``freeze_integral`` skips integration this tick
    (the corrector sets it while new replicas are still starting, so the time their
    capacity takes to show up in the latency is not integrated as error). ``max_dt`` caps
    the time integrated in one step (after a gap in the data the error over the gap was
    never observed; the corrector passes its measurement window)."""
    if not setpoint > 0 or not math.isfinite(setpoint):
        raise ValueError(f"setpoint must be a positive finite number, got {setpoint}")
    if out_min > out_max:
        raise ValueError(f"out_min ({out_min}) must be <= out_max ({out_max})")
    if not math.isfinite(measurement):
        raise ValueError(f"measurement must be finite, got {measurement}")
    error = measurement / setpoint - 1.0
    dt = None if state.last_time is None else now - state.last_time
    p = gains.kp * error
    d = 0.0
    if dt is not None and dt > 0 and state.last_measurement is not None:
        # d(error)/dt with the setpoint held: (m - m_prev)/setpoint/dt.
        d = gains.kd * (measurement - state.last_measurement) / setpoint / dt
    integral = state.integral
    lim = gains.integral_limit
    if dt is not None and dt > 0 and not freeze_integral:
        span = dt if max_dt is None else min(dt, max_dt)
        candidate = integral + gains.ki * error * span
        # Conditional integration: integrate only until the output reaches its bound, never
        # further into saturation (an integral already past it is kept, not pulled back).
        # Stopping *at* the bound rather than skipping the whole step keeps the output
        # monotone in the measurement.
        if error > 0:
            candidate = min(candidate, max(integral, out_max - p - d))
        elif error < 0:
            candidate = max(candidate, min(integral, out_min - p - d))
        integral = candidate
    integral = _clamp(integral, -lim, lim)
    unsat = p + integral + d
    output = _clamp(unsat, out_min, out_max)
    # ``last_time`` only moves forward, so a clock glitch cannot make the next dt huge.
    last_time = now if state.last_time is None or now > state.last_time else state.last_time
    terms = PIDTerms(error, p, integral, d, output, output != unsat)
    return terms, PIDState(integral, measurement, last_time, output)


def pid_step(  # noqa: PLR0917 - the positional order is the documented API
    state: PIDState,
    measurement: float,
    setpoint: float,
    now: float,
    gains: PIDGains,
    out_min: float,
    out_max: float,
) -> tuple[float, PIDState]:
    """``(output, next_state)``; output in ``[out_min, out_max]``, positive when too slow."""
    terms, nxt = pid_terms(state, measurement, setpoint, now, gains, out_min, out_max)
    return terms.output, nxt


def bumpless_state(
    measurement: float | None,
    setpoint: float,
    now: float,
    gains: PIDGains,
    *,
    wanted_output: float,
    allow_negative: bool = True,
) -> PIDState:
    """State for a (re)started controller whose first output should be ``wanted_output``.

    The integral is preset so that ``P + I`` equals what the actuator already does
    (bumpless transfer), clamped to the integral limit. ``allow_negative=False`` keeps a
    restart from holding back a needed increase (negative presets are dropped).
    """
    p = 0.0 if measurement is None else gains.kp * (measurement / setpoint - 1.0)
    lo = -gains.integral_limit if allow_negative else 0.0
    integral = _clamp(wanted_output - p, lo, gains.integral_limit)
    last_time = now if measurement is not None else None
    return PIDState(integral, measurement, last_time, p + integral)

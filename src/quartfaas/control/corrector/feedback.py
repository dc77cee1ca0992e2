"""Feedback that corrects the tail model's inputs, not the replica count (pure, no clock).

Neighbours: the tail model (``tailmodel.py``) predicts each stage's sojourn quantile and
the end-to-end one from ``StageLoad`` inputs; ``planner.py`` plans on those inputs.
Measured tails that differ from the modelled ones mean the inputs are off (a slower
service than measured means, CPU contention, burstier arrivals). Instead of adding raw
replicas (the old PID), this learns per stage an **effective service-time factor** ``f``
that multiplies the stage's measured service mean before planning.

Per update (``update``), for each stage:

* the error is ``log(measured / modelled)`` of the stage's tail; a stage without its own
  measurement takes the end-to-end error (all stages share it);
* **filter**: ``log f += w·error`` with ``w = 1 - exp(-dt/time_constant_s)`` (an EWMA in
  time, so the gain does not depend on the tick rate); ``dt`` comes from snapshot times,
  is capped at ``max_dt_s`` (a gap in data is not evidence), and an update closer than
  ``min_dt_s`` after the last accepted one is ignored (no derivative-style kick);
* **bound**: ``f`` stays within ``[1/(1 + max_rel), 1 + max_rel]``. The planned count
  grows about in proportion to ``f``, so ``max_rel`` bounds the correction relative to
  the stage's size (0.5: at most about half the stage again, whatever its size).

A measured tail of an idle stage or a non-positive value is no data: that stage's factor
is kept. The state is a frozen dataclass returned, never mutated.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from quartfaas.control.corrector.tailmodel import StageLoad
from quartfaas.frozen import fast_init


@dataclass(frozen=True, slots=True)
class FeedbackConfig:
    time_constant_s: float = 60.0
    min_dt_s: float = 2.0
    max_dt_s: float = 30.0
    max_rel: float = 0.5

    def __post_init__(self) -> None:
        if not (self.time_constant_s > 0 and self.min_dt_s >= 0 and self.max_dt_s > 0):
            raise ValueError(f"bad feedback timing: {self}")
        if not 0 < self.max_rel < math.inf:
            raise ValueError(f"max_rel must be > 0, got {self.max_rel}")

    @property
    def bounds(self) -> tuple[float, float]:
        return 1.0 / (1.0 + self.max_rel), 1.0 + self.max_rel


@fast_init
@dataclass(frozen=True, slots=True)
class TailObservation:
    """Measured and modelled sojourn quantile of one stage (``None``: not measured)."""

    name: str
    measured_s: float | None
    modelled_s: float | None


@fast_init
@dataclass(frozen=True, slots=True)
class FeedbackSnapshot:
    """What one update reads: per-stage tails, the end-to-end tails, and ``now``."""

    now: float
    stages: tuple[TailObservation, ...]
    e2e_measured_s: float | None = None
    e2e_modelled_s: float | None = None


@fast_init
@dataclass(frozen=True, slots=True)
class FeedbackState:
    """Learned factors by stage name, and the time of the last accepted update."""

    factors: tuple[tuple[str, float], ...] = ()
    last_now: float | None = None

    def factor(self, name: str) -> float:
        for n, f in self.factors:
            if n == name:
                return f
        return 1.0


def _log_error(measured: float | None, modelled: float | None) -> float | None:
    if measured is None or modelled is None:
        return None
    if not (measured > 0 and modelled > 0 and math.isfinite(measured) and math.isfinite(modelled)):
        return None
    return math.log(measured / modelled)


def update(
    state: FeedbackState, snap: FeedbackSnapshot, cfg: FeedbackConfig
) -> tuple[FeedbackState, str]:
    """One filtered step of every stage's factor; returns the new state and a reason."""
    if state.last_now is not None:
        dt = snap.now - state.last_now
        if dt < cfg.min_dt_s:
            return state, f"feedback held: {dt:.3g}s since the last update < {cfg.min_dt_s:g}s"
        dt = min(dt, cfg.max_dt_s)
    else:
        dt = cfg.min_dt_s if cfg.min_dt_s > 0 else cfg.max_dt_s
    w = 1.0 - math.exp(-dt / cfg.time_constant_s)
    lo, hi = cfg.bounds
    e2e = _log_error(snap.e2e_measured_s, snap.e2e_modelled_s)
    out: list[tuple[str, float]] = []
    moved: list[str] = []
    known = dict(state.factors)
    for obs in snap.stages:
        f = known.get(obs.name, 1.0)
        err = _log_error(obs.measured_s, obs.modelled_s)
        if err is None:
            err = e2e
        if err is not None:
            nf = min(max(f * math.exp(w * err), lo), hi)
            if abs(nf - f) > 1e-3 * f:
                moved.append(f"{obs.name} x{nf:.3g}")
            f = nf
        out.append((obs.name, f))
    reason = "model factors: " + (", ".join(moved) if moved else "unchanged")
    return FeedbackState(tuple(out), snap.now), reason


def corrected(stages: Sequence[StageLoad], state: FeedbackState) -> tuple[StageLoad, ...]:
    """The stages with each service mean multiplied by its learned factor."""
    factors = dict(state.factors)
    if not factors:
        return tuple(stages)
    out = []
    for s in stages:
        f = factors.get(s.name, 1.0)
        out.append(s if f == 1.0 else s.with_load(s.arrival_rate, s.service_mean_s * f))
    return tuple(out)

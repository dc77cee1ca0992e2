"""Shared pieces of the baseline policies: parameters, periods, bounds, windows, holds.

Neighbours: every module in ``control/baselines/`` builds on these; they read
``control/snapshot.py`` and return ``control/policy.py`` decisions. Nothing here reads a
clock: periods and windows compare ``snapshot.now`` with timestamps kept in the policies'
frozen state (house style §3.1), so the same code runs live (ticks ~1 s apart on the
monotonic clock) and in the simulator (ticks at simulated times).

Conventions the baselines share:

* **Own period.** Each real system evaluates at its own cadence (HPA 15 s, KPA 2 s, ...).
  ``due``/``next_due`` keep a fixed grid of evaluation times, like Go's ``time.Ticker``,
  so live jitter does not make the period drift; between evaluations a policy returns a
  ``hold`` decision (the loop applies nothing, exactly as the real system does nothing).
* **Holds** keep ``replicas == current``; decisions made at an evaluation are clamped to
  the stage's ``[min_replicas, max_replicas]`` (house style §3.5: raw target, rate limits,
  bounds, cooldowns, in that order inside each policy).
* **Windows** are tuples of ``(t, value)`` pairs, pruned to their time span and capped in
  length so a long run cannot grow the state without bound.
* **Stabilisation** (HPA's downscale stabilisation, OpenFaaS Pro's down window) is one
  rule: act on the highest recommendation over a trailing window (``stabilise``).
* **State** of a periodic baseline is ``PeriodicState``: the next evaluation time and one
  frozen record per stage, carried over by name (``carried``) and stepped in stage order
  (``each_stage``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot
from quartfaas.errors import SpecError

# Tolerance for comparing simulated timestamps that are sums of float periods.
EPS = 1e-6
# Hard cap on any time-keyed window kept in state (samples or recommendations).
MAX_WINDOW_SAMPLES = 4096

Window = tuple[tuple[float, float], ...]


class BaselineParams(BaseModel):
    """Parameters every baseline accepts (frozen, unknown names rejected)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    stale_after_s: float = Field(
        default=15.0,
        gt=0,
        le=86_400,
        description="snapshots whose data is older than this are treated as missing (hold)",
    )


P = TypeVar("P", bound=BaselineParams)


def build_params(cls: type[P], policy: str, overrides: dict[str, Any]) -> P:
    """``cls(**overrides)`` with pydantic errors turned into one ``SpecError``."""
    try:
        return cls(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or '(params)'}: {e['msg']}" for e in exc.errors()
        )
        valid = ", ".join(sorted(cls.model_fields))
        raise SpecError(
            f"invalid parameters for baseline {policy!r}: {problems} (valid parameters: {valid})"
        ) from exc


class HasName(Protocol):
    @property
    def name(self) -> str: ...


S = TypeVar("S", bound=HasName)


def find(states: Iterable[S], name: str) -> S | None:
    """The per-stage state called ``name`` (``None`` for a stage seen for the first time)."""
    for st in states:
        if st.name == name:
            return st
    return None


@dataclass(frozen=True)  # no slots: a slotted frozen Generic breaks PeriodicState[T](...)
class PeriodicState(Generic[S]):
    """A periodic baseline's state: when it next evaluates, and one record per stage."""

    next_at: float
    stages: tuple[S, ...]


def carried(
    snapshot: PipelineSnapshot,
    states: Iterable[S],
    fresh: Callable[[str], S],
    update: Callable[[StageSnapshot, S], S] | None = None,
) -> tuple[S, ...]:
    """Each snapshot stage's record (by name; ``fresh(name)`` for a new stage), in stage
    order, passed through ``update`` (what the system records every tick) if given."""
    out = []
    for s in snapshot.stages:
        st = find(states, s.name) or fresh(s.name)
        out.append(update(s, st) if update is not None else st)
    return tuple(out)


def each_stage(
    snapshot: PipelineSnapshot,
    states: Sequence[S],
    step: Callable[[StageSnapshot, S], tuple[StageDecision, S]],
) -> tuple[list[StageDecision], tuple[S, ...]]:
    """``step`` applied to every stage and its record, in stage order."""
    decisions: list[StageDecision] = []
    new: list[S] = []
    for s, st in zip(snapshot.stages, states, strict=True):
        d, n = step(s, st)
        decisions.append(d)
        new.append(n)
    return decisions, tuple(new)


def stale_reason(snapshot: PipelineSnapshot, params: BaselineParams) -> str | None:
    """Why the whole snapshot must be ignored, or ``None`` when it is usable."""
    if not snapshot.has_data:
        return "no-data: the collector could not read any measurement"
    if snapshot.data_age_s is not None and snapshot.data_age_s > params.stale_after_s:
        return (
            f"no-data: measurements are {snapshot.data_age_s:.1f} s old "
            f"(> stale_after_s {params.stale_after_s:g})"
        )
    return None


def due(now: float, next_at: float) -> bool:
    """True when an evaluation scheduled at ``next_at`` should run at ``now``."""
    return now >= next_at - EPS


def next_due(next_at: float, now: float, period_s: float) -> float:
    """The next grid point after an evaluation at ``now`` (re-aligned if ticks were missed)."""
    nxt = next_at + period_s
    if nxt <= now + EPS:
        nxt = now + period_s
    return nxt


def period(next_at: float, now: float, period_s: float) -> tuple[bool, float]:
    """Whether the evaluation at ``next_at`` is due at ``now``, and the next one after that."""
    is_due = due(now, next_at)
    return is_due, next_due(next_at, now, period_s) if is_due else next_at


def between(what: str, next_at: float, now: float) -> str:
    """The reason of a hold between two evaluations."""
    return f"hold: between {what} (next in {next_at - now:.1f} s)"


def clamp(n: int, lo: int, hi: int) -> int:
    return max(lo, min(hi, n))


def bounded(s: StageSnapshot, raw: int) -> tuple[int, str]:
    """``raw`` clamped to the stage's bounds, and a note saying so when it was clamped."""
    n = clamp(raw, s.min_replicas, s.max_replicas)
    if n > raw:
        return n, f"; raised to min_replicas {s.min_replicas}"
    if n < raw:
        return n, f"; capped at max_replicas {s.max_replicas}"
    return n, ""


def hold(s: StageSnapshot, reason: str) -> StageDecision:
    return StageDecision(stage=s.name, current=s.replicas, replicas=s.replicas, reason=reason)


def set_to(s: StageSnapshot, replicas: int, reason: str, score: float = 0.0) -> StageDecision:
    return StageDecision(
        stage=s.name, current=s.replicas, replicas=replicas, reason=reason, score=score
    )


def decision(
    snapshot: PipelineSnapshot,
    policy: str,
    stages: Sequence[StageDecision],
    reason: str,
    *,
    hold: bool = False,
) -> Decision:
    return Decision(now=snapshot.now, policy=policy, stages=tuple(stages), hold=hold, reason=reason)


def off_period(snapshot: PipelineSnapshot, policy: str, next_at: float, what: str) -> Decision:
    """The decision between two evaluations: nothing to apply, and when the next one is."""
    reason = f"hold: between {what} (next in {max(0.0, next_at - snapshot.now):.1f} s)"
    return hold_all(snapshot, policy, reason)


def ongoing(s: StageSnapshot) -> int:
    """Requests in the stage now: executing plus queued (Knative/Ray "concurrency")."""
    return s.in_flight + s.queue_len


def push(window: Window, t: float, value: float, span_s: float) -> Window:
    """Append ``(t, value)`` and drop samples older than ``span_s`` (and beyond the cap)."""
    kept = [(ts, v) for ts, v in window if ts > t - span_s - EPS and ts <= t + EPS]
    kept.append((t, value))
    if len(kept) > MAX_WINDOW_SAMPLES:
        kept = kept[-MAX_WINDOW_SAMPLES:]
    return tuple(kept)


def stabilise(window: Window, now: float, value: float, span_s: float) -> tuple[Window, float]:
    """Record the recommendation ``value`` and return the highest one over the last
    ``span_s`` (this one included): a scale-down waits until the whole window agrees."""
    kept = push(window, now, value, span_s)
    return kept, max(v for _, v in kept)


def in_window(window: Window, now: float, span_s: float) -> list[tuple[float, float]]:
    """Samples with ``now - span_s < t <= now``."""
    return [(t, v) for t, v in window if now - span_s + EPS < t <= now + EPS]


def bucket_mean(window: Window, now: float, span_s: float, bucket_s: float = 1.0) -> float | None:
    """Mean over ``bucket_s`` buckets (each bucket the mean of its samples), ``None`` if empty.

    Averaging per bucket first makes the result independent of how many ticks fell into a
    second, as Knative's 1 s buckets are (``config.BucketSize``).
    """
    buckets: dict[int, list[float]] = {}
    for t, v in in_window(window, now, span_s):
        buckets.setdefault(math.floor(t / bucket_s + EPS), []).append(v)
    if not buckets:
        return None
    return sum(sum(vs) / len(vs) for vs in buckets.values()) / len(buckets)


def window_max(window: Window, now: float, span_s: float) -> float | None:
    vals = [v for _, v in in_window(window, now, span_s)]
    return max(vals) if vals else None


def window_mean(window: Window, now: float, span_s: float) -> float | None:
    vals = [v for _, v in in_window(window, now, span_s)]
    return sum(vals) / len(vals) if vals else None


def fmt(x: float | None, digits: int = 2) -> str:
    return "unknown" if x is None else f"{x:.{digits}f}"

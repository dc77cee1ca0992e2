"""Pre-fork depth: how many warmed children each stage template keeps, and why.

A stage template (``dataplane/forkserver.py``) hands a warmed, pre-forked child over as a
new replica in milliseconds; a fresh fork must also warm up (a forward pass) before it is
ready. A burst that asks for ``k`` replicas at once is fast only if ``k`` warmed children
are already waiting, so the pool's depth follows the forecast rather than a constant.

Pure (no I/O, no clock: ``now`` is data) and fed by the decision the policy just made
and the pool's measured state. Per stage, in this order (each step shows in ``reason``):

1. **Want.** With a forecast of the replicas the stage needs over the next horizon
   (``forecast``), the pool holds what the forecast needs beyond this tick's target:
   ``forecast - target`` (this tick's starts take their children now; the pool refills
   for the next). Without one, the step just taken is expected again while load ramps:
   ``target - current``. ``forecast_from_snapshot`` gives the forecast the loop uses: the
   extra servers that the arrival rate already measured upstream will need when it
   reaches the stage (the smoother's rate rule, ``λ̂ = max(measured, upstream)``), plus
   the upstream backlog and a rising rate's trend.
2. **Floor.** At least ``floor`` (``cache.prefork``: the one child today's pool keeps).
3. **Stage bound.** At most ``max_replicas - target``: more children than the stage may
   ever run are waste.
4. **Memory bound.** Each warmed child's private memory is measured (its shared pages
   are the template's weights, counted once by the ``KeysManager``); the pool may use at
   most the cache's free bytes under ``memory_threshold_frac``:
   ``floor(cache_free_bytes / child_private_bytes)``. Memory beats the floor.
5. **Shrink delay.** A lower depth is applied once it has been asked for
   ``shrink_delay_s`` in a row (a pool that flaps forks and warms for nothing); a memory
   bound applies at once.

The loop (``control/loop.py``) applies the depths through a backend with a pool
(``control.backend.PoolScalable``) and logs each one with its reason; the simulator's
pool model (``sim/prefork_pool.py``) takes the same depths.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from quartfaas.control.policy import Decision
from quartfaas.control.snapshot import PipelineSnapshot

MIB = 1024**2


@dataclass(frozen=True, slots=True)
class PoolConfig:
    """Settings of the pool decision (``floor`` is the spec's ``cache.prefork``)."""

    floor: int = 1
    max_depth: int = 64
    shrink_delay_s: float = 10.0
    target_utilisation: float = 0.7  # per-slot load the forecast sizes extra servers for
    horizon_s: float = 10.0  # upstream backlog reaches the stage within this (the forecast)
    trend_s: float = 5.0  # a rising rate is extrapolated this far ahead (the forecast)

    def __post_init__(self) -> None:
        if self.floor < 0:
            raise ValueError(f"floor must be >= 0, got {self.floor}")
        if self.max_depth < self.floor:
            raise ValueError(f"max_depth ({self.max_depth}) must be >= floor ({self.floor})")
        if not (self.shrink_delay_s >= 0 and math.isfinite(self.shrink_delay_s)):
            raise ValueError(f"shrink_delay_s must be finite and >= 0, got {self.shrink_delay_s}")
        if not (self.horizon_s > 0 and math.isfinite(self.horizon_s)):
            raise ValueError(f"horizon_s must be finite and > 0, got {self.horizon_s}")
        if not 0 < self.target_utilisation <= 1:
            raise ValueError(f"target_utilisation must be in (0, 1], got {self.target_utilisation}")


@dataclass(frozen=True, slots=True)
class PoolInput:
    """One stage as the pool decision sees it."""

    stage: str
    target: int  # the policy's replica target this tick
    current: int  # live replicas (ready + starting) before this tick's starts
    max_replicas: int
    forecast: int | None = None  # replicas needed over the next horizon (None: unknown)
    child_private_bytes: int | None = None  # measured, one warmed child (None: not yet)
    cache_free_bytes: int | None = None  # KeysManager capacity - cached bytes (None: unknown)


@dataclass(frozen=True, slots=True)
class PoolDecision:
    """How many warmed children the stage's template keeps, and why."""

    stage: str
    depth: int
    reason: str


@dataclass(frozen=True, slots=True)
class StagePool:
    """What the decision remembers about one stage's pool."""

    depth: int
    lower_since: float | None = None  # when a lower depth was first asked for


@dataclass(frozen=True, slots=True)
class PoolState:
    stages: tuple[tuple[str, StagePool], ...] = ()
    rates: tuple[tuple[str, float, float], ...] = ()  # (stage, now, arrival rate) last tick

    def rate(self, stage: str) -> tuple[float, float] | None:
        for name, at, lam in self.rates:
            if name == stage:
                return at, lam
        return None

    def get(self, stage: str) -> StagePool | None:
        for name, pool in self.stages:
            if name == stage:
                return pool
        return None


def remember_rates(state: PoolState, snapshot: PipelineSnapshot) -> PoolState:
    """``state`` with this snapshot's measured arrival rates (for the next tick's trend)."""
    rates = tuple(
        (s.name, snapshot.now, s.arrival_rate)
        for s in snapshot.stages
        if s.arrival_rate is not None and math.isfinite(s.arrival_rate)
    )
    return PoolState(state.stages, rates)


def _want(inp: PoolInput) -> tuple[int, str]:
    if inp.forecast is not None:
        return inp.forecast - inp.target, f"forecast {inp.forecast} - target {inp.target}"
    return inp.target - inp.current, f"no forecast: target {inp.target} - current {inp.current}"


def memory_bound(inp: PoolInput) -> int | None:
    """Most children the cache's free memory holds (None: not measured yet)."""
    if inp.child_private_bytes is None or inp.cache_free_bytes is None:
        return None
    if inp.child_private_bytes <= 0:
        return None
    return max(0, inp.cache_free_bytes // inp.child_private_bytes)


def decide_stage(
    inp: PoolInput, prev: StagePool | None, now: float, cfg: PoolConfig
) -> tuple[PoolDecision, StagePool]:
    """One stage's depth (see the module docstring for the order of the steps)."""
    want, why = _want(inp)
    depth = max(want, cfg.floor)
    notes = [f"{why} = {want}"]
    if depth > want:
        notes.append(f"floor {cfg.floor}")
    stage_cap = max(0, inp.max_replicas - inp.target)
    cap = min(stage_cap, cfg.max_depth)
    if depth > cap:
        depth = cap
        notes.append(f"stage bound max_replicas {inp.max_replicas} - target {inp.target}")
    mem = memory_bound(inp)
    if mem is not None and depth > mem:
        depth = mem
        assert inp.child_private_bytes is not None and inp.cache_free_bytes is not None
        notes.append(
            f"memory bound: {inp.cache_free_bytes / MIB:.0f} MiB free in the cache / "
            f"{inp.child_private_bytes / MIB:.1f} MiB per warmed child"
        )
    lower_since: float | None = None
    if prev is not None and depth < prev.depth:
        memory_forced = mem is not None and prev.depth > mem
        since = prev.lower_since if prev.lower_since is not None else now
        held = now - since
        if not memory_forced and held < cfg.shrink_delay_s:
            notes.append(
                f"keeps {prev.depth} (asked {depth} for {held:.1f} s < shrink delay "
                f"{cfg.shrink_delay_s:.0f} s)"
            )
            depth, lower_since = prev.depth, since
        else:
            notes.append(f"shrinks {prev.depth}->{depth}")
    elif prev is not None and depth > prev.depth:
        notes.append(f"grows {prev.depth}->{depth}")
    depth = max(0, depth)
    reason = f"pool {depth}: " + "; ".join(notes)
    return PoolDecision(inp.stage, depth, reason), StagePool(depth, lower_since)


def decide_pool(
    inputs: Sequence[PoolInput], state: PoolState, now: float, cfg: PoolConfig
) -> tuple[tuple[PoolDecision, ...], PoolState]:
    """Every stage's depth and the next state (stages not in ``inputs`` are forgotten).

    The memory bound is shared: stages are served in ``inputs`` order and each takes its
    children's memory out of the free bytes the next one sees.
    """
    out: list[PoolDecision] = []
    kept: list[tuple[str, StagePool]] = []
    spent = 0
    for given in inputs:
        inp = given
        if inp.cache_free_bytes is not None:
            inp = _with_free(inp, max(0, inp.cache_free_bytes - spent))
        d, pool = decide_stage(inp, state.get(inp.stage), now, cfg)
        if inp.child_private_bytes is not None:
            spent += d.depth * inp.child_private_bytes
        out.append(d)
        kept.append((inp.stage, pool))
    return tuple(out), PoolState(tuple(kept), state.rates)


def _with_free(inp: PoolInput, free: int) -> PoolInput:
    return PoolInput(
        inp.stage, inp.target, inp.current, inp.max_replicas, inp.forecast,
        inp.child_private_bytes, free,
    )  # fmt: skip


def forecast_from_snapshot(
    snapshot: PipelineSnapshot,
    decision: Decision,
    cfg: PoolConfig,
    state: PoolState | None = None,
) -> dict[str, int]:
    """Replicas each stage needs over the next horizon, where the snapshot says more.

    The rate already measured at an upstream stage reaches this one within the horizon
    (every request visits every stage), and so do the requests queued or in service
    upstream: ``λ̂ = max(λ_stage, λ_upstream) + backlog_upstream / horizon_s``. A rate that
    rose since the last tick (``state``, from ``remember_rates``) keeps rising for
    ``trend_s``: ``+ max(0, dλ/dt) · trend_s`` (bursts ramp over seconds; a start that
    waits for the rate to arrive is late). The extra rate needs
    ``ceil((λ̂ - λ) · E[S] / (slots · target_utilisation))`` more replicas than the
    target. Stages without a measured rate or service time get no forecast (the pool
    falls back to the step rule).
    """
    out: dict[str, int] = {}
    upstream = 0.0
    backlog = 0
    for s in snapshot.stages:
        lam = s.arrival_rate
        mean = s.service_mean_s
        try:
            target = decision.target(s.name)
        except KeyError:
            continue
        if lam is not None and mean is not None and mean > 0 and math.isfinite(lam):
            rising = 0.0
            prev = state.rate(s.name) if state is not None else None
            if prev is not None and snapshot.now > prev[0]:
                rising = max(0.0, (lam - prev[1]) / (snapshot.now - prev[0])) * cfg.trend_s
            lam_hat = max(upstream, lam) + backlog / cfg.horizon_s + rising
            extra_rate = max(0.0, lam_hat - lam)
            slots = max(1, s.max_concurrency) * cfg.target_utilisation
            extra = math.ceil(extra_rate * mean / slots - 1e-9) if extra_rate > 0 else 0
            out[s.name] = min(max(target, s.max_replicas), target + extra)
        if lam is not None and math.isfinite(lam):
            upstream = max(upstream, lam)
        backlog += s.queue_len + s.in_flight
    return out


def pool_inputs(
    snapshot: PipelineSnapshot,
    decision: Decision,
    forecasts: Mapping[str, int],
    memory: Mapping[str, tuple[int | None, int | None]],
) -> tuple[PoolInput, ...]:
    """``PoolInput`` per decided stage; ``memory[stage] = (child private, cache free)``."""
    out = []
    for d in decision.stages:
        try:
            s = snapshot.stage(d.stage)
        except KeyError:
            continue
        child, free = memory.get(d.stage, (None, None))
        out.append(
            PoolInput(d.stage, d.replicas, s.replicas, s.max_replicas, forecasts.get(d.stage),
                      child, free)
        )  # fmt: skip
    return tuple(out)


__all__ = [
    "PoolConfig",
    "PoolDecision",
    "PoolInput",
    "PoolState",
    "StagePool",
    "decide_pool",
    "decide_stage",
    "forecast_from_snapshot",
    "memory_bound",
    "pool_inputs",
    "remember_rates",
]

"""Which stages to keep or pre-warm in which servers' host memory (pure decision).

Quart starts replicas in well under a second only when the stage's weights are already in
the target server's host memory (a fork from a live template). This module decides, from
predicted demand, where those copies should be *before* a burst arrives: prewarm actions
(load a stage into a server's cache) and the evictions that make room, each with a reason.
It is pure: servers come as ``placement.ServerState`` (their ``KeysManager.view()``),
demand as ``StageDemand`` (e.g. from the controller's critical stages and a burstiness
predictor); nothing here loads or evicts. The owner of each host's ``KeysManager`` applies
a plan by calling ``evict`` for each eviction, then ``admit`` for each prewarm: the plan
frees enough room that ``admit`` evicts nothing more, and it never exceeds a server's
threshold or touches a pinned entry.

Method:

1. Expected starts of stage ``s`` soon: ``max(0, expected_replicas - current_replicas)``
   plus ``burst_prob x max(1, burst_extra_frac x max(expected, current))``.
2. Copies wanted: ``ceil(starts / starts_per_copy)`` (a copy serves the GPUs of one
   server), at least ``critical_min_copies`` for a critical stage.
3. The k-th copy serves ``min(starts_per_copy, starts - (k-1) x starts_per_copy)`` starts
   (a critical stage's first copies at least ``critical_floor_starts``); on server ``j`` it
   is worth that x (start from disk/remote on ``j`` - start by fork), seconds.
4. Copies already cached take the first ranks, best servers first; the rest are candidates
   on servers not caching ``s`` where some GPU could take a replica now.
5. Candidates are taken by value per byte, highest first. One fits on a server if the
   cache has room after evicting unpinned entries worth less per byte (stages without
   demand are worth 0; ties go least recently used first), at most
   ``max_prewarms_per_server`` loads per server, and the net new bytes fit in the
   server's free host memory. Candidates worth less than ``min_benefit_s`` are skipped.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from quartfaas.control.placement.keys_manager import gib
from quartfaas.control.placement.model import (
    PlacementConfig,
    ServerState,
    StartSource,
)


@dataclass(frozen=True, slots=True)
class StageDemand:
    """Predicted demand for one stage over the planning horizon."""

    key: str
    size_bytes: int
    expected_replicas: float  # replicas needed soon (e.g. the scaler's target)
    current_replicas: int = 0
    burst_prob: float = 0.0  # probability of a burst needing extra replicas
    critical: bool = False
    gpu_memory_bytes: int | None = None  # default: the placement rule (size x 1.4, capped)


@dataclass(frozen=True, slots=True)
class CacheAction:
    server: str
    key: str
    size_bytes: int
    benefit_s: float  # expected start seconds saved (0 for an eviction of an unwanted stage)
    reason: str


@dataclass(frozen=True, slots=True)
class CachePlan:
    prewarm: tuple[CacheAction, ...]
    evict: tuple[CacheAction, ...]
    skipped: tuple[str, ...] = ()  # wanted copies that found no room, with why


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class CachePlanConfig(_Frozen):
    starts_per_copy: int = Field(
        default=2, ge=1, le=1024, description="starts one cached copy is expected to serve soon"
    )
    burst_extra_frac: float = Field(
        default=0.5, ge=0, le=100, description="a burst asks for this share more replicas (>= 1)"
    )
    critical_min_copies: int = Field(
        default=1, ge=0, le=1024, description="cached copies a critical stage always keeps"
    )
    critical_floor_starts: float = Field(
        default=0.5, ge=0, le=1024, description="starts a critical stage's first copies count for"
    )
    max_prewarms_per_server: int = Field(
        default=2, ge=0, le=1024, description="most loads started on one server per plan"
    )
    min_benefit_s: float = Field(
        default=0.5, ge=0, le=3600, description="skip copies expected to save less than this"
    )
    placement: PlacementConfig = Field(
        default_factory=PlacementConfig, description="GPU memory rule and start costs"
    )


def expected_starts(d: StageDemand, cfg: CachePlanConfig) -> float:
    """Replica starts of ``d``'s stage expected soon (step 1 of the method)."""
    grow = max(0.0, d.expected_replicas - d.current_replicas)
    burst = d.burst_prob * max(
        1.0, cfg.burst_extra_frac * max(d.expected_replicas, d.current_replicas)
    )
    return grow + burst


def _gpu_req(d: StageDemand, pc: PlacementConfig) -> int:
    if d.gpu_memory_bytes is not None:
        return d.gpu_memory_bytes
    return min(math.ceil(d.size_bytes * pc.gpu_memory_factor), pc.gpu_memory_cap_bytes)


@dataclass(slots=True)
class _Server:
    """Mutable working copy of one server's cache while planning."""

    state: ServerState
    entries: dict[str, tuple[int, bool, int]]  # key -> (size, pinned, recency rank)
    used: int
    host_free: int
    loads: int = 0


def plan_cache(
    servers: Sequence[ServerState],
    demand: Mapping[str, StageDemand],
    config: CachePlanConfig | None = None,
) -> CachePlan:
    """Prewarm and evict actions for every server's host-memory cache (see the module)."""
    cfg = config or CachePlanConfig()
    pc = cfg.placement
    cost = pc.cost
    srv = {
        s.name: _Server(
            s,
            {e.key: (e.size_bytes, e.pinned, i) for i, e in enumerate(s.cache.entries)},
            s.cache.used_bytes,
            s.host_free_bytes,
        )
        for s in sorted(servers, key=lambda s: s.name)
    }

    def saving(d: StageDemand, s: ServerState) -> tuple[float, StartSource]:
        src = (
            StartSource.DISK if s.disk_keys is None or d.key in s.disk_keys else StartSource.REMOTE
        )
        return cost.seconds(src, d.size_bytes) - cost.seconds(StartSource.FORK, d.size_bytes), src

    # value per byte of each (server, key) copy: existing ones, then candidates
    density: dict[tuple[str, str], float] = {}
    cands: list[tuple[float, str, str, float, str]] = []  # (-density, key, server, benefit, why)
    for key in sorted(demand):
        d = demand[key]
        starts = expected_starts(d, cfg)
        copies = math.ceil(starts / cfg.starts_per_copy - 1e-9) if starts > 0 else 0
        if d.critical:
            copies = max(copies, cfg.critical_min_copies)
        if copies == 0:
            continue

        def served(k: int, d: StageDemand = d, starts: float = starts) -> float:
            n = min(float(cfg.starts_per_copy), max(0.0, starts - (k - 1) * cfg.starts_per_copy))
            if d.critical and k <= cfg.critical_min_copies:
                n = max(n, cfg.critical_floor_starts)
            return n

        size = max(d.size_bytes, 1)
        have = sorted(
            (s for s in srv.values() if key in s.entries),
            key=lambda s: (-saving(d, s.state)[0], s.state.name),
        )
        for k, s in enumerate(have, start=1):
            density[(s.state.name, key)] = (
                served(k) * saving(d, s.state)[0] / size if k <= copies else 0.0
            )
        req = _gpu_req(d, pc)
        elig = sorted(
            (
                s
                for s in srv.values()
                if key not in s.entries
                and d.size_bytes <= s.state.cache.capacity_bytes
                and any(g.free_bytes >= req for g in s.state.gpus)
            ),
            key=lambda s: (-saving(d, s.state)[0], -_free_gpus(s.state, req), s.state.name),
        )
        for k, s in zip(range(len(have) + 1, copies + 1), elig, strict=False):
            sv, src = saving(d, s.state)
            benefit = served(k) * sv
            why = (
                f"stage {key}: {starts:.2f} expected starts soon"
                f"{' (critical)' if d.critical else ''}; copy {k} of {copies}; "
                f"saves {sv:.2f} s per start on {s.state.name} ({src.value} -> fork), "
                f"{served(k):.2f} starts -> {benefit:.2f} s"
            )
            cands.append((-benefit / size, key, s.state.name, benefit, why))

    prewarm: list[CacheAction] = []
    evict: list[CacheAction] = []
    skipped: list[str] = []
    cands.sort()
    for neg_density, key, name, benefit, why in cands:
        s = srv[name]
        size = demand[key].size_bytes
        if benefit < cfg.min_benefit_s:
            skipped.append(f"{why}: below min_benefit_s {cfg.min_benefit_s}")
            continue
        if s.loads >= cfg.max_prewarms_per_server:
            skipped.append(f"{why}: {name} already has {s.loads} loads in this plan")
            continue
        cap = s.state.cache.capacity_bytes
        need = s.used + size - cap
        victims: list[tuple[str, int]] = []
        if need > 0:
            order = sorted(
                (density.get((name, vk), 0.0), rank, vk, sz)
                for vk, (sz, pinned, rank) in s.entries.items()
                if not pinned and density.get((name, vk), 0.0) < -neg_density
            )
            freed = 0
            for _, _, vk, sz in order:
                if freed >= need:
                    break
                victims.append((vk, sz))
                freed += sz
            if freed < need:
                skipped.append(
                    f"{why}: no room on {name} (cache {gib(s.used)} of {gib(cap)}, "
                    f"{gib(freed)} held by entries worth less)"
                )
                continue
        net = size - sum(sz for _, sz in victims)
        if net > s.host_free:
            skipped.append(f"{why}: {name} has only {gib(s.host_free)} free host memory")
            continue
        s.host_free -= net
        for vk, sz in victims:
            del s.entries[vk]
            s.used -= sz
            val = density.pop((name, vk), 0.0) * sz
            evict.append(
                CacheAction(
                    name,
                    vk,
                    sz,
                    0.0,
                    f"makes room for {key} on {name} ({-neg_density * 2**30:.3f} s/GiB "
                    f"expected vs {val / max(sz, 1) * 2**30:.3f} s/GiB for {vk})",
                )
            )
        s.entries[key] = (size, False, len(s.entries) + 10**9)  # newest
        s.used += size
        s.loads += 1
        density[(name, key)] = -neg_density
        prewarm.append(CacheAction(name, key, size, benefit, why))
    return CachePlan(tuple(prewarm), tuple(evict), tuple(skipped))


def _free_gpus(s: ServerState, req: int) -> int:
    return sum(1 for g in s.gpus if g.free_bytes >= req)

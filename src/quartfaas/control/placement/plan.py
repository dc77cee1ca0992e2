"""Turning a searched assignment into a ``PlacementPlan``: stops, reasons, infeasibility.

Shared by Quart's solver (``search.py``) and the baselines
(``baselines.py``) so that every placer reports the same way: each placement
says its start tier, expected start time and objective terms; each unplaced stage says
which constraint blocked it, with the numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from quartfaas.control.placement.keys_manager import gib
from quartfaas.control.placement.model import (
    Infeasible,
    Placement,
    PlacementPlan,
    Replica,
    StartSource,
    Stop,
)
from quartfaas.control.placement.problem import Problem
from quartfaas.control.placement.work import Work

Slot = tuple[str, int, int]  # (stage key, server index, gpu index)
# A stop rule: (stage, candidates, work) -> (index of the replica to stop, why).
StopRule = Callable[[str, list[Replica], Work], tuple[int, str]]

_WHY = {
    StartSource.FORK: "host-memory hit, fork",
    StartSource.DISK: "load from local disk",
    StartSource.REMOTE: "fetch from remote storage",
}


def apply_stops(p: Problem, work: Work, rule: StopRule) -> list[Stop]:
    """Pick ``request.stop[stage]`` replicas per stage with ``rule``, one at a time."""
    stops: list[Stop] = []
    for key in sorted(p.request.stop):
        want = p.request.stop[key]
        cands = [r for r in p.request.replicas if r.stage == key]
        have = len(cands)
        for _ in range(min(want, have)):
            i, why = rule(key, cands, work)
            r = cands.pop(i)
            work.stop(r)
            if want > have:
                why += f"; asked to stop {want} replicas but only {have} exist"
            stops.append(Stop(r.stage, r.server, r.gpu, r.replica_id, why))
    return stops


def terms(work: Work, key: str, j: int, g: int) -> str:
    """The objective terms of one placed replica, measured against the final plan."""
    work.remove(key, j, g)
    start = work.p.start_s(key, j)
    spread = work.spread(key, j, g)
    dkl = work.dkl(key, j, +1)
    work.add(key, j, g)
    src = work.p.source(key, j)
    return (
        f"{src.value} start {start:.2f} s ({_WHY[src]}); spread +{spread:.2f} s; "
        f"dispersion {dkl:+.3f} nats"
    )


def diagnose(work: Work, key: str, requested: int, placed: int) -> str:
    """Why no more replicas of ``key`` fit, counted over every server and GPU."""
    p = work.p
    st, req = p.stages[key], p.req[key]
    n_gpu = sum(len(gs) for gs in p.gpus)
    mem = anti = 0
    largest = 0
    cpu_srv: list[str] = []
    cache_srv: list[str] = []
    for j, s in enumerate(p.servers):
        block = work.server_block(key, j)
        if block == "cpu":
            cpu_srv.append(f"{s.name} ({work.cpu_free[j]:.1f} free)")
        elif block == "cache":
            new = gib(p.used0[j] + work.new_bytes[j])
            cache_srv.append(f"{s.name} (cache {new} of {gib(p.cap[j])} used)")
        for g in range(len(p.gpus[j])):
            why = work.gpu_block(key, j, g)
            if why == "anti-affinity":
                anti += 1
            elif why == "memory":
                mem += 1
                largest = max(largest, work.gpu_free[j][g])
    need = (
        f"needs {gib(req)} GPU memory"
        + (
            f" ({gib(st.size_bytes)} x {p.config.gpu_memory_factor})"
            if st.gpu_memory_bytes is None
            else ""
        )
        + f" and {st.cpu_cores:g} CPU cores"
    )
    parts = [f"of {n_gpu} GPUs on {len(p.servers)} servers"]
    if mem:
        parts.append(f"{mem} have too little free memory (largest free {gib(largest)})")
    if anti:
        parts.append(f"{anti} already run {key}")
    if cpu_srv:
        parts.append(f"servers short of CPU: {', '.join(cpu_srv)}")
    if cache_srv:
        parts.append(
            f"servers whose host cache cannot take {gib(st.size_bytes)}: {', '.join(cache_srv)}"
        )
    return (
        f"{requested - placed} of {requested} replicas of {key} not placed: {need}; "
        + "; ".join(parts)
    )


def assemble(
    work: Work,
    slots: Sequence[Slot | None],
    order: Sequence[str],
    *,
    placer: str,
    solver: str,
    stops: list[Stop],
    why: Callable[[Work, str, int, int], str] | None = None,
) -> PlacementPlan:
    """Build the plan from the final ``work`` and the chosen slot of each replica."""
    p = work.p
    placements: list[Placement] = []
    admitted: set[tuple[str, int]] = set()
    for slot in slots:
        if slot is None:
            continue
        key, j, g = slot
        src = p.source(key, j)
        admits = src is not StartSource.FORK and (key, j) not in admitted
        admitted.add((key, j))
        prefix = f"{why(work, key, j, g)}; " if why is not None else ""
        placements.append(
            Placement(
                stage=key,
                server=p.servers[j].name,
                gpu=p.gpus[j][g].gpu_id,
                source=src,
                expected_start_s=p.start_s(key, j),
                reason=f"{placer}: {prefix}{terms(work, key, j, g)}",
                admits=admits,
            )
        )
    placements.sort(key=lambda pl: (pl.stage, pl.server, pl.gpu))
    placed_n: dict[str, int] = {}
    for pl in placements:
        placed_n[pl.stage] = placed_n.get(pl.stage, 0) + 1
    infeasible = []
    requested = {k: order.count(k) for k in dict.fromkeys(order)}
    for key, n in sorted(requested.items()):
        got = placed_n.get(key, 0)
        if got < n:
            infeasible.append(Infeasible(key, n, got, diagnose(work, key, n, got)))
    unplaced = sum(1 for s in slots if s is None)
    return PlacementPlan(
        placer=placer,
        solver=solver,
        placements=tuple(placements),
        stops=tuple(stops),
        evictions=tuple(work.evictions()),
        infeasible=tuple(infeasible),
        cost=work.cost(unplaced),
    )

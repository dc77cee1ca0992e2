"""Quart's cache-aware placement: greedy + local search, exact branch and bound when small.

The objective and constraints are in ``state.py``; ``placement.py`` documents
the method and the measured optimality gap. This module only searches:

1. ``greedy``: replicas in canonical order (critical, largest GPU need, key), each to its
   cheapest feasible slot given those already placed. If some are left unplaced, the
   construction is redone with the most constrained stages first and the better kept.
2. ``improve`` (``local.py``): rounds of local search, each move kept only if it
   strictly lowers the objective: *relocate* one replica to its cheapest slot; *eject*
   (when relocations stall): move a replica, alone or with its stage-mates on its server,
   onto a server where it is blocked after moving the blockers elsewhere (one replica off
   a full GPU or a CPU-short server, or all replicas of one stage off a full host cache);
   *clear*: for an unplaced replica, empty one server of the plan's replicas, place it,
   and re-place the others.
3. ``exact``: when the search space (per stage, the subsets of at most ``count`` of its
   initially feasible GPUs, multiplied over stages) has at most ``exact_max_leaves``
   leaves, a depth-first branch and bound seeded with the greedy plan. Replicas of one
   stage are interchangeable, so they take strictly increasing slots (a replica left
   unplaced is last). The bound adds, to the cost so far, each remaining replica's
   cheapest start and a dispersion of 0 for every unfinished stage (n x KL >= 0).
"""

from __future__ import annotations

import math

from quartfaas.control.placement.local import improve
from quartfaas.control.placement.model import (
    UNPLACED_PENALTY_S,
    PlacementConfig,
    PlacementPlan,
    PlacementRequest,
    Replica,
)
from quartfaas.control.placement.plan import Slot, apply_stops, assemble
from quartfaas.control.placement.problem import EPS, Problem
from quartfaas.control.placement.work import Work


def greedy(work: Work, order: list[str]) -> list[Slot | None]:
    slots: list[Slot | None] = []
    for key in order:
        b = work.best_slot(key)
        if b is None:
            slots.append(None)
            continue
        work.add(key, b[1], b[2])
        slots.append((key, b[1], b[2]))
    return slots


def space_size(work: Work, order: list[str], cap: int) -> tuple[int, list[list[tuple[int, int]]]]:
    """Leaves of the exact search (stopping once over ``cap``) and each stage's slots."""
    cands: dict[str, list[tuple[int, int]]] = {}
    size = 1
    for key in dict.fromkeys(order):
        c = [
            (j, g)
            for j in range(len(work.p.servers))
            if work.server_block(key, j) is None
            for g in range(len(work.p.gpus[j]))
            if work.gpu_block(key, j, g) is None
        ]
        cands[key] = c
        k = order.count(key)
        size *= sum(math.comb(len(c), i) for i in range(min(k, len(c)) + 1))
        if size > cap:
            return cap + 1, []
    return size, [cands[key] for key in order]


def exact(
    work: Work, order: list[str], slots: list[Slot | None], max_nodes: int
) -> tuple[list[Slot | None], bool]:
    """Branch and bound over assignments; returns (best slots, search completed)."""
    lam = work.lam
    for s in slots:
        if s is not None:
            work.remove(*s)
    stages = list(dict.fromkeys(order))
    root_nkl = {k: work.nkl(k) for k in stages}
    _, cands = space_size(work, order, 2**62)
    incumbent = list(slots)
    for s in slots:
        if s is not None:
            work.add(*s)
    best_obj = _rel(work, root_nkl, sum(s is None for s in slots))
    for s in slots:
        if s is not None:
            work.remove(*s)
    n = len(order)
    first = [d == 0 or order[d - 1] != order[d] for d in range(n)]
    # suffix lower bounds: cheapest start of every remaining replica, and -root n*KL of
    # every stage not begun (its final n*KL is >= 0)
    min_start = [
        min([work.p.start_s(order[d], j) for j, _ in cands[d]], default=UNPLACED_PENALTY_S)
        for d in range(n)
    ]
    suffix = [0.0] * (n + 1)
    for d in range(n - 1, -1, -1):
        suffix[d] = suffix[d + 1] + min_start[d] - (lam * root_nkl[order[d]] if first[d] else 0.0)
    chosen = [-1] * n
    nodes = 0
    aborted = False

    def dfs(d: int, cur: float) -> None:
        nonlocal best_obj, incumbent, nodes, aborted
        nodes += 1
        if nodes > max_nodes:
            aborted = True
            return
        if d == n:
            if cur < best_obj - EPS:
                best_obj = cur
                incumbent = [
                    (order[i], *cands[i][c]) if c < len(cands[i]) else None
                    for i, c in enumerate(chosen)
                ]
            return
        key = order[d]
        partial = 0.0 if first[d] else lam * work.nkl(key)
        if cur - partial + suffix[d] >= best_obj - EPS:
            return
        lo = 0 if first[d] else chosen[d - 1] + 1
        opts: list[tuple[float, int]] = []
        for c in range(lo, len(cands[d])):
            j, g = cands[d][c]
            if work.server_block(key, j) is None and work.gpu_block(key, j, g) is None:
                opts.append((work.server_cost(key, j) + work.gpu_cost(key, j, g), c))
        opts.sort()
        for m, c in opts:
            j, g = cands[d][c]
            chosen[d] = c
            work.add(key, j, g)
            dfs(d + 1, cur + m)
            work.remove(key, j, g)
            if aborted:
                return
        # leave this replica (and so the rest of its stage) unplaced
        skip = len(cands[d])
        e = d
        while e < n and order[e] == key:
            chosen[e] = skip
            e += 1
        dfs(e, cur + UNPLACED_PENALTY_S * (e - d))

    dfs(0, 0.0)
    for s in incumbent:
        if s is not None:
            work.add(*s)
    return incumbent, not aborted


def _rel(work: Work, root_nkl: dict[str, float], unplaced: int) -> float:
    disp = sum(work.nkl(k) - v for k, v in root_nkl.items())
    return work.start_total + work.spread_total + work.lam * disp + UNPLACED_PENALTY_S * unplaced


def _stop_rule(key: str, cands: list[Replica], work: Work) -> tuple[int, str]:
    """Stop the replica whose removal lowers spread + lambda x n*KL most.

    A critical stage keeps a replica on some server that caches its weights (that replica
    pins the entry, so a scale-up can still fork) unless every candidate would break it.
    Ties: the slower GPU, then the replica listed last (the newest).
    """
    p = work.p
    on_cached = [p.sidx[r.server] for r in cands if key in p.cache_keys[p.sidx[r.server]]]
    best: tuple[tuple[bool, float, float, int], int, str] | None = None
    for i, r in enumerate(cands):
        j = p.sidx[r.server]
        g = p.gidx[j][r.gpu]
        spread = work.spread(key, j, g)
        dk = work.dkl(key, j, -1)
        guarded = p.stages[key].critical and on_cached == [j]
        rank = (guarded, round(-spread + work.lam * dk, 9), p.gpus[j][g].speed, -i)
        why = (
            f"quart: removal changes spread by {-spread:+.2f} s and n*KL by {dk:+.3f} nats "
            f"(GPU speed {p.gpus[j][g].speed:g})"
        )
        if guarded:
            why += "; last replica of a critical stage on a server caching it (no other choice)"
        if best is None or rank < best[0]:
            best = (rank, i, why)
    assert best is not None
    return best[1], best[2]


class QuartPlacer:
    """Cache-aware placement minimising start latency + lambda x dispersion."""

    name = "quart"

    def __init__(self, config: PlacementConfig | None = None) -> None:
        self.config = config or PlacementConfig()

    def place(self, request: PlacementRequest) -> PlacementPlan:
        p = Problem(request, self.config)
        work = Work(p, request.replicas)
        stops = apply_stops(p, work, _stop_rule)
        order = p.new_replicas()
        passes = self.config.local_search_passes
        slots = greedy(work, order)
        improve(work, order, slots, passes)
        if None in slots:
            # Left some unplaced: retry with the most constrained stages first (fewest
            # feasible GPUs), the classic packing order, and keep the better plan.
            obj = work.objective(slots.count(None))
            _unplace(work, slots)
            alt = _most_constrained(work, order)
            alt_slots = greedy(work, alt)
            improve(work, alt, alt_slots, passes)
            if work.objective(alt_slots.count(None)) < obj - EPS:
                order, slots = alt, alt_slots
            else:
                _unplace(work, alt_slots)
                for sl in slots:
                    if sl is not None:
                        work.add(*sl)
        solver = "greedy+local"
        limit = self.config.exact_max_leaves
        if order and limit > 0:
            _unplace(work, slots)  # the space is measured with no new replica placed
            size, _ = space_size(work, order, limit)
            for sl in slots:
                if sl is not None:
                    work.add(*sl)
            if size <= limit:
                order = p.new_replicas()  # the exact search needs each stage's replicas together
                slots, done = exact(work, order, slots, max_nodes=50 * limit + 1000)
                solver = "exact" if done else "greedy+local (exact search cut short)"
        return assemble(work, slots, order, placer=self.name, solver=solver, stops=stops)


def _unplace(work: Work, slots: list[Slot | None]) -> None:
    for s in slots:
        if s is not None:
            work.remove(*s)


def _most_constrained(work: Work, order: list[str]) -> list[str]:
    """``order`` regrouped: stages with the fewest feasible GPUs first, then largest."""
    p = work.p
    n_ok = {
        key: sum(
            1
            for j in range(len(p.servers))
            if work.server_block(key, j) is None
            for g in range(len(p.gpus[j]))
            if work.gpu_block(key, j, g) is None
        )
        for key in dict.fromkeys(order)
    }
    return sorted(order, key=lambda k: (n_ok[k], -p.req[k], k))

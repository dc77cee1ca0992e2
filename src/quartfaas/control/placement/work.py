"""The working state every placer searches over: hard constraints and the objective.

``Problem`` is the request, validated and indexed once (servers sorted by name, GPUs by id,
so that ties break the same way whatever the input order). ``Work`` holds the counters a
search changes with ``add``/``remove``: GPU memory, CPU, replicas per GPU/server/stage,
and each server's host-memory cache.

The cache model is set-based so that a plan's cost and feasibility do not depend on the
order its starts are listed in: a start of stage ``s`` on server ``j`` is a *fork* iff
``s`` is in ``j``'s cache at decision time (using it protects the entry from eviction);
otherwise it loads from disk or remote storage and creates one entry for ``s`` on ``j``
(shared by every start of ``s`` there). The server is feasible while its new entries fit
under the cache capacity after evicting unpinned, unprotected entries in LRU order (the
rule of ``keys_manager.plan_admission``) and the net new bytes fit in free host memory.
A backend applying the plan should pin hits before admitting misses to get the same
evictions.

Objective (seconds): the expected start time of each new replica, plus pipeline spread
penalties (per pair of replicas of different stages of one pipeline sharing a server or
a GPU, counted once, pairs among untouched replicas excluded), plus
``lambda x sum_s n_s KL(P_s || Q)`` over touched stages (P_s: stage s's replicas over
servers, n_s their number, Q: target shares proportional to server capacity), plus
``UNPLACED_PENALTY_S`` per replica left unplaced.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from quartfaas.control.placement.keys_manager import CacheEntry, gib
from quartfaas.control.placement.model import (
    UNPLACED_PENALTY_S,
    Cost,
    PlannedEviction,
    Replica,
)
from quartfaas.control.placement.problem import EPS, Problem

_G_TABLE = [0.0] + [x * math.log(x) for x in range(1, 1025)]


def _g(x: int) -> float:
    """x log x (0 at 0), from a table for the replica counts seen in practice."""
    return _G_TABLE[x] if 0 <= x <= 1024 else x * math.log(x)


class Work:
    """Mutable counters of one candidate plan. ``add``/``remove`` keep every total exact."""

    def __init__(self, p: Problem, live: Iterable[Replica]) -> None:
        self.p = p
        self.lam = p.config.lambda_s_per_nat
        self.pen_srv = p.config.pipeline_server_penalty_s
        self.pen_gpu = p.config.pipeline_gpu_penalty_s
        ns = len(p.servers)
        self.gpu_free = [[g.free_bytes for g in gs] for gs in p.gpus]
        self.gpu_stage: list[list[dict[str, int]]] = [[{} for _ in gs] for gs in p.gpus]
        self.gpu_pipe: list[list[dict[str, int]]] = [[{} for _ in gs] for gs in p.gpus]
        self.srv_stage: list[dict[str, int]] = [{} for _ in range(ns)]
        self.srv_pipe: list[dict[str, int]] = [{} for _ in range(ns)]
        self.cpu_free = [s.cpu_free_cores for s in p.servers]
        self.hit_keys: list[dict[str, int]] = [{} for _ in range(ns)]
        self.new_keys: list[dict[str, int]] = [{} for _ in range(ns)]
        self.new_bytes = [0] * ns
        self.evictable = [sum(e.size_bytes for e in es if not e.pinned) for es in p.entries]
        self.stage_cnt: dict[str, list[int]] = {k: [0] * ns for k in p.stages}
        self.stage_n: dict[str, int] = dict.fromkeys(p.stages, 0)
        self.start_total = 0.0
        self.spread_total = 0.0
        self.placed = 0
        for r in live:
            self._count(r.stage, p.sidx[r.server], p.gidx[p.sidx[r.server]][r.gpu], +1)
        self.nkl0 = {k: self.nkl(k) for k in p.touched}

    # -- counters -----------------------------------------------------------------------

    def _count(self, key: str, j: int, g: int, d: int) -> None:
        for m in (self.gpu_stage[j][g], self.srv_stage[j]):
            m[key] = m.get(key, 0) + d
        st = self.p.stages.get(key)
        if st is not None and st.pipeline:
            for m in (self.gpu_pipe[j][g], self.srv_pipe[j]):
                m[st.pipeline] = m.get(st.pipeline, 0) + d
        if key in self.stage_cnt:
            self.stage_cnt[key][j] += d
            self.stage_n[key] += d

    def stop(self, r: Replica) -> None:
        """Take a stopped replica out of the counts. Its GPU memory and CPU stay held:
        a draining replica keeps them until it exits, after this decision."""
        j = self.p.sidx[r.server]
        self._count(r.stage, j, self.p.gidx[j][r.gpu], -1)

    # -- objective terms ---------------------------------------------------------------

    def nkl(self, key: str) -> float:
        """n x KL(P || Q) of ``key``'s replicas over servers (nats)."""
        cnt, n = self.stage_cnt[key], self.stage_n[key]
        if n == 0:
            return 0.0
        lq = self.p.log_q
        return sum(_g(c) - c * lq[j] for j, c in enumerate(cnt) if c) - _g(n)

    def dkl(self, key: str, j: int, d: int) -> float:
        """Change of ``nkl(key)`` when ``d`` (+1/-1) replicas are added on server ``j``."""
        c, n = self.stage_cnt[key][j], self.stage_n[key]
        return _g(c + d) - _g(c) - (_g(n + d) - _g(n)) - d * self.p.log_q[j]

    def spread(self, key: str, j: int, g: int) -> float:
        """Pipeline penalty of one replica of ``key`` on (j, g) against those present."""
        pipe = self.p.stages[key].pipeline
        if not pipe:
            return 0.0
        on_srv = self.srv_pipe[j].get(pipe, 0) - self.srv_stage[j].get(key, 0)
        on_gpu = self.gpu_pipe[j][g].get(pipe, 0) - self.gpu_stage[j][g].get(key, 0)
        return self.pen_srv * on_srv + self.pen_gpu * on_gpu

    def server_cost(self, key: str, j: int) -> float:
        """Start seconds + server spread + lambda x dispersion change of a start on ``j``."""
        pipe = self.p.stages[key].pipeline
        cost = self.p.start_s(key, j) + self.lam * self.dkl(key, j, +1)
        if pipe:
            cost += self.pen_srv * (self.srv_pipe[j].get(pipe, 0) - self.srv_stage[j].get(key, 0))
        return cost

    def server_costs(self, key: str) -> list[float]:
        """``server_cost(key, j)`` for every server, computed in one pass."""
        p = self.p
        pipe = p.stages[key].pipeline
        lam, pen_srv = self.lam, self.pen_srv
        cnt, n = self.stage_cnt[key], self.stage_n[key]
        dn = _g(n + 1) - _g(n)
        log_q, starts = p.log_q, p.start_list(key)
        out = [starts[j] + lam * (_g(c + 1) - _g(c) - dn - log_q[j]) for j, c in enumerate(cnt)]
        if pipe:
            for j in range(len(out)):
                out[j] += pen_srv * (self.srv_pipe[j].get(pipe, 0) - self.srv_stage[j].get(key, 0))
        return out

    def gpu_cost(self, key: str, j: int, g: int) -> float:
        pipe = self.p.stages[key].pipeline
        if not pipe:
            return 0.0
        return self.pen_gpu * (self.gpu_pipe[j][g].get(pipe, 0) - self.gpu_stage[j][g].get(key, 0))

    # -- hard constraints ----------------------------------------------------------------

    def server_block(self, key: str, j: int) -> str | None:
        """Why a start of ``key`` cannot go on server ``j`` at all ("cpu"/"cache"), or None."""
        if self.cpu_free[j] + EPS < self.p.stages[key].cpu_cores:
            return "cpu"
        return None if self.cache_ok(key, j) else "cache"

    def gpu_block(self, key: str, j: int, g: int) -> str | None:
        if self.gpu_stage[j][g].get(key, 0) > 0:
            return "anti-affinity"
        if self.gpu_free[j][g] < self.p.req[key]:
            return "memory"
        return None

    def cache_ok(self, key: str, j: int) -> bool:
        if self.new_keys[j].get(key, 0) or self.hit_keys[j].get(key, 0):
            return True  # the entry this start needs is already part of the plan
        size = self.p.stages[key].size_bytes
        if key in self.p.cache_keys[j]:
            return self._fits(j, 0, key)
        if size > self.p.cap[j]:
            return False
        return self._fits(j, size, None)

    def _fits(self, j: int, extra: int, protect: str | None) -> bool:
        new = self.new_bytes[j] + extra
        deficit = self.p.used0[j] + new - self.p.cap[j]
        freed = 0
        if deficit > 0:
            evictable = self.evictable[j]
            if protect is not None:
                e = next(e for e in self.p.entries[j] if e.key == protect)
                evictable -= 0 if e.pinned else e.size_bytes
            if deficit > evictable:
                return False
            freed = sum(v.size_bytes for v in self._victims(j, deficit, protect))
        return new - freed <= self.p.host_free[j]

    def _victims(self, j: int, deficit: int, protect: str | None = None) -> list[CacheEntry]:
        out: list[CacheEntry] = []
        freed = 0
        hits = self.hit_keys[j]
        for e in self.p.entries[j]:
            if freed >= deficit:
                break
            if e.pinned or e.key in hits or e.key == protect:
                continue
            out.append(e)
            freed += e.size_bytes
        return out

    # -- moves -------------------------------------------------------------------------

    def add(self, key: str, j: int, g: int) -> None:
        st = self.p.stages[key]
        self.start_total += self.p.start_s(key, j)
        self.spread_total += self.spread(key, j, g)
        self.gpu_free[j][g] -= self.p.req[key]
        self.cpu_free[j] -= st.cpu_cores
        keys = self.hit_keys[j] if key in self.p.cache_keys[j] else self.new_keys[j]
        first = keys.get(key, 0) == 0
        keys[key] = keys.get(key, 0) + 1
        if first and keys is self.new_keys[j]:
            self.new_bytes[j] += st.size_bytes
        elif first:
            e = next(e for e in self.p.entries[j] if e.key == key)
            self.evictable[j] -= 0 if e.pinned else e.size_bytes
        self._count(key, j, g, +1)
        self.placed += 1

    def remove(self, key: str, j: int, g: int) -> None:
        st = self.p.stages[key]
        self._count(key, j, g, -1)
        self.placed -= 1
        self.start_total -= self.p.start_s(key, j)
        self.spread_total -= self.spread(key, j, g)
        self.gpu_free[j][g] += self.p.req[key]
        self.cpu_free[j] += st.cpu_cores
        keys = self.hit_keys[j] if key in self.p.cache_keys[j] else self.new_keys[j]
        keys[key] -= 1
        if keys[key] == 0:
            del keys[key]
            if keys is self.new_keys[j]:
                self.new_bytes[j] -= st.size_bytes
            else:
                e = next(e for e in self.p.entries[j] if e.key == key)
                self.evictable[j] += 0 if e.pinned else e.size_bytes

    def best_slot(self, key: str, only: int | None = None) -> tuple[float, int, int] | None:
        """The cheapest feasible (cost, server, gpu) for one more replica of ``key``
        (on server ``only`` if given).

        The hot loop of every solver, so the cost terms of ``server_cost``/``gpu_cost`` and
        the checks of ``server_block``/``gpu_block`` are inlined; ties go to the first
        server, then GPU, in index order.
        """
        p = self.p
        st = p.stages[key]
        req, cpu, pipe = p.req[key], st.cpu_cores, st.pipeline
        lam, pen_srv, pen_gpu = self.lam, self.pen_srv, self.pen_gpu
        cnt, n = self.stage_cnt[key], self.stage_n[key]
        dn = _g(n + 1) - _g(n)
        log_q, starts = p.log_q, p.start_list(key)
        best_c, best_j, best_g = math.inf, -1, -1
        for j in range(len(starts)) if only is None else (only,):
            if self.cpu_free[j] + EPS < cpu:
                continue
            c = cnt[j]
            base = starts[j] + lam * (_g(c + 1) - _g(c) - dn - log_q[j])
            if pipe:
                base += pen_srv * (self.srv_pipe[j].get(pipe, 0) - self.srv_stage[j].get(key, 0))
            if base >= best_c - EPS:
                continue  # GPU penalties are >= 0: nothing on this server can win
            if not self.cache_ok(key, j):
                continue
            free, on_gpu, pipes = self.gpu_free[j], self.gpu_stage[j], self.gpu_pipe[j]
            for g in range(len(free)):
                if free[g] < req or on_gpu[g].get(key, 0):
                    continue
                cost = base + pen_gpu * pipes[g].get(pipe, 0) if pipe else base
                if cost < best_c - EPS:
                    best_c, best_j, best_g = cost, j, g
        return None if best_j < 0 else (best_c, best_j, best_g)

    # -- results -----------------------------------------------------------------------

    def objective(self, unplaced: int) -> float:
        """Search objective: the total cost minus the touched stages' initial n x KL."""
        disp = sum(self.nkl(k) - self.nkl0[k] for k in self.p.touched)
        return (
            self.start_total + self.spread_total + self.lam * disp + UNPLACED_PENALTY_S * unplaced
        )

    def cost(self, unplaced: int) -> Cost:
        return Cost(
            start_s=self.start_total,
            spread_s=self.spread_total,
            dispersion_nats=sum(self.nkl(k) for k in self.p.touched),
            lambda_s_per_nat=self.lam,
            unplaced=unplaced,
        )

    def evictions(self) -> list[PlannedEviction]:
        out: list[PlannedEviction] = []
        for j, s in enumerate(self.p.servers):
            deficit = self.p.used0[j] + self.new_bytes[j] - self.p.cap[j]
            if deficit <= 0:
                continue
            new = ", ".join(sorted(self.new_keys[j]))
            for e in self._victims(j, deficit):
                out.append(
                    PlannedEviction(
                        s.name,
                        e.key,
                        e.size_bytes,
                        f"least recently used unpinned entry; makes room for {new} "
                        f"({gib(self.new_bytes[j])} new, cache capacity {gib(self.p.cap[j])})",
                    )
                )
        return out

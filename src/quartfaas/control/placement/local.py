"""Local search over a complete placement plan (the "local improvement" of Quart's placer).

Used by ``placement_search.QuartPlacer`` after the greedy construction, and documented
there. Every accepted move strictly lowers the objective of ``work.Work``.
"""

from __future__ import annotations

import math

from quartfaas.control.placement.model import UNPLACED_PENALTY_S
from quartfaas.control.placement.plan import Slot
from quartfaas.control.placement.problem import EPS
from quartfaas.control.placement.work import Work


class Improver:
    """Local search over a complete plan: relocations, ejections and server clearing.

    ``slots[i]`` is replica ``i``'s (stage, server, gpu) or None; ``occ`` maps a server
    to the plan's replicas on it. Every accepted move strictly lowers the objective, so the
    search ends.
    """

    def __init__(self, work: Work, order: list[str], slots: list[Slot | None]) -> None:
        self.work, self.order, self.slots = work, order, slots
        self.occ: dict[int, set[int]] = {}  # server -> the plan's replicas on it
        for i, s in enumerate(slots):
            if s is not None:
                self.occ.setdefault(s[1], set()).add(i)

    def _put(self, i: int, slot: Slot | None) -> None:
        old = self.slots[i]
        if old is not None:
            self.occ[old[1]].discard(i)
        if slot is not None:
            self.occ.setdefault(slot[1], set()).add(i)
        self.slots[i] = slot

    def _lift(self, i: int) -> float:
        """Take replica ``i`` out of ``work``; returns the cost it had (M if unplaced)."""
        s = self.slots[i]
        if s is None:
            return UNPLACED_PENALTY_S
        key, j, g = s
        self.work.remove(key, j, g)
        return self.work.server_cost(key, j) + self.work.gpu_cost(key, j, g)

    def relocate(self, i: int) -> bool:
        """Move replica ``i`` to its cheapest feasible slot if that is strictly cheaper."""
        old = self.slots[i]
        here = self._lift(i)
        b = self.work.best_slot(self.order[i])
        if b is not None and b[0] < here - EPS:
            self.work.add(self.order[i], b[1], b[2])
            self._put(i, (self.order[i], b[1], b[2]))
            return True
        if old is not None:
            self.work.add(*old)
        return False

    def eject(self, i: int) -> bool:
        """Move ``i`` to a server where it is blocked by moving some of the plan's replicas
        off that server to their cheapest other slots (this covers swaps). What is moved
        off depends on the block: one replica from a GPU too full for ``i``; one replica
        when CPU is short; every replica of one stage when the host cache is full (they
        share one cache entry). ``i`` moves alone, or with the replicas of its stage on
        its server (they too share an entry, which only leaves with all of them). Only
        servers whose start + dispersion could pay are tried.
        """
        w, p = self.work, self.work.p
        key = self.order[i]
        old = self.slots[i]
        mates = (
            [k for k in sorted(self.occ.get(old[1], ())) if k != i and self.order[k] == key]
            if old is not None
            else []
        )
        best: tuple[float, list[tuple[int, Slot]]] | None = None
        for movers in ([i], [i, *mates]) if mates else ([i],):
            here = [self._lift(k) for k in movers]
            bases = w.server_costs(key)
            for j in range(len(p.servers)):
                if bases[j] - w.pen_srv >= here[0] - EPS:
                    continue  # even a free slot here would not pay
                for group in self._groups(i, j, bases[j]):
                    got = self._try(movers, j, sum(here), group)
                    if got is not None and (best is None or got[0] < best[0] - EPS):
                        best = got
            for k in reversed(movers):
                ks = self.slots[k]
                if ks is not None:
                    w.add(*ks)
        if best is None:
            return False
        for k, _ in best[1]:
            ks = self.slots[k]
            if ks is not None:
                w.remove(*ks)
        for k, slot in best[1]:
            w.add(*slot)
            self._put(k, slot)
        return True

    def _groups(self, i: int, j: int, base: float) -> list[list[int]]:
        """Sets of the plan's replicas on server ``j`` whose moving may unblock ``i``."""
        w, p = self.work, self.work.p
        key = self.order[i]
        on_j = [k for k in sorted(self.occ.get(j, ())) if k != i]
        block = w.server_block(key, j)
        if block == "cache":
            by_stage: dict[str, list[int]] = {}
            for k in on_j:
                by_stage.setdefault(self.order[k], []).append(k)
            return list(by_stage.values())
        if block == "cpu":
            return [[k] for k in on_j]
        # Only GPUs too full for i, and cheaper for it than j's best free GPU (pipeline
        # penalties), are worth emptying.
        req = p.req[key]
        fb = w.best_slot(key, only=j)
        room = math.inf if fb is None else fb[0] - base - EPS
        gpus = {
            g
            for g, free in enumerate(w.gpu_free[j])
            if free < req and not w.gpu_stage[j][g].get(key, 0) and w.gpu_cost(key, j, g) < room
        }
        out = []
        for k in on_j:
            s = self.slots[k]
            if s is not None and s[2] in gpus:
                out.append([k])
        return out

    def _try(
        self, movers: list[int], j: int, here: float, group: list[int]
    ) -> tuple[float, list[tuple[int, Slot]]] | None:
        """Objective change of: ``group`` off server ``j``, the (lifted) ``movers`` onto
        ``j``, ``group`` re-placed at their cheapest slots. ``work`` is left as found."""
        w = self.work
        lifted: list[Slot] = []
        delta = -here
        for k in group:
            ks = self.slots[k]
            assert ks is not None
            w.remove(*ks)
            lifted.append(ks)
            delta -= w.server_cost(ks[0], ks[1]) + w.gpu_cost(*ks)
        added: list[tuple[int, Slot]] = []
        gain = -here
        for m in movers:
            b = w.best_slot(self.order[m], only=j)
            if b is None:
                break
            w.add(self.order[m], b[1], b[2])
            added.append((m, (self.order[m], b[1], b[2])))
            gain += b[0]
        # the group was placed at its cheapest slots, so moving it rarely gains: go on
        # only when the movers alone would gain
        if len(added) == len(movers) and gain < -EPS:
            delta += gain + here
            for k, ks in zip(group, lifted, strict=True):
                bk = w.best_slot(ks[0])
                if bk is None:
                    break
                w.add(ks[0], bk[1], bk[2])
                added.append((k, (ks[0], bk[1], bk[2])))
                delta += bk[0]
        for _, sl in reversed(added):
            w.remove(*sl)
        for ks in lifted:
            w.add(*ks)
        if len(added) == len(group) + len(movers) and delta < -EPS:
            return delta, added
        return None

    def clear_for(self, i: int) -> bool:
        """Place unplaced ``i`` on a server after taking the plan's replicas off it and
        re-placing them anywhere (needed when a cache or CPU, not one GPU, blocks)."""
        w, p = self.work, self.work.p
        key = self.order[i]
        before = w.objective(0)
        best: tuple[float, list[tuple[int, Slot | None]]] | None = None
        for j in range(len(p.servers)):
            moved = sorted(self.occ.get(j, ()))
            if not moved:
                continue
            lifted = [(k, self.slots[k]) for k in moved]
            for _, s in lifted:
                assert s is not None
                w.remove(*s)
            trial: list[tuple[int, Slot | None]] = []
            b = w.best_slot(key, only=j)
            if b is not None:
                w.add(key, b[1], b[2])
                trial.append((i, (key, b[1], b[2])))
                for k, _ in lifted:
                    bk = w.best_slot(self.order[k])
                    if bk is not None:
                        w.add(self.order[k], bk[1], bk[2])
                    trial.append((k, None if bk is None else (self.order[k], bk[1], bk[2])))
                unplaced = sum(s is None for _, s in trial)
                delta = w.objective(unplaced) - before - UNPLACED_PENALTY_S
                if delta < -EPS and (best is None or delta < best[0] - EPS):
                    best = (delta, trial)
                for _, s in trial:
                    if s is not None:
                        w.remove(*s)
            for _, s in lifted:
                assert s is not None
                w.add(*s)
        if best is None:
            return False
        for k, _ in best[1][1:]:
            s = self.slots[k]
            assert s is not None
            w.remove(*s)
        for k, s in best[1]:
            if s is not None:
                w.add(*s)
            self._put(k, s)
        return True


def improve(work: Work, order: list[str], slots: list[Slot | None], passes: int) -> None:
    """Up to ``passes`` rounds of local search. A round relocates every replica and tries
    server clearing for unplaced ones; ejections (dearer) run in a round where no
    relocation paid, and in the last. Stops at the first round that changes nothing."""
    imp = Improver(work, order, slots)
    for r in range(passes):
        moved = False
        for i in range(len(slots)):
            moved = imp.relocate(i) or moved
        for i in range(len(slots)):
            if slots[i] is None:
                moved = imp.clear_for(i) or moved
        if not moved or r == passes - 1:
            for i in range(len(slots)):
                moved = imp.eject(i) or moved
        if not moved:
            break

"""Baseline placers with Quart's interface, for the experiments' comparisons.

Each places the replicas one at a time in the same canonical order as Quart and obeys the
same hard constraints (``work.Work``), so the comparison isolates the choice
rule; the plan's cost is measured with Quart's objective.

- ``random``: a feasible GPU uniformly at random (``random.Random(request.seed)``);
  stops random replicas.
- ``least-loaded``: the GPU with the most free memory; stops the replica on the GPU with
  the least free memory.
- ``bin-pack``: the GPU with the least free memory that still fits (most allocated);
  stops the replica on the GPU with the most free memory (emptying it).
- ``locality`` (ServerlessLLM-style): the fastest start tier (host-memory hit, then
  disk, then remote), ties by most free GPU memory; stops replicas on servers that do not
  cache the stage first, then the newest.

Ties always break by (server name, GPU id) for determinism.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import ClassVar

from quartfaas.control.placement.keys_manager import gib
from quartfaas.control.placement.model import (
    SOURCE_RANK,
    PlacementConfig,
    PlacementPlan,
    PlacementRequest,
    Replica,
)
from quartfaas.control.placement.plan import Slot, StopRule, apply_stops, assemble
from quartfaas.control.placement.problem import Problem
from quartfaas.control.placement.work import Work

# A choice rule: (work, stage, feasible (server, gpu) slots in index order, rng) -> index.
Choose = Callable[[Work, str, list[tuple[int, int]], random.Random], int]


def _feasible(work: Work, key: str) -> list[tuple[int, int]]:
    return [
        (j, g)
        for j in range(len(work.p.servers))
        if work.server_block(key, j) is None
        for g in range(len(work.p.gpus[j]))
        if work.gpu_block(key, j, g) is None
    ]


def _argmin(values: list[tuple[float, ...]]) -> int:
    return min(range(len(values)), key=lambda i: (values[i], i))


def _random(work: Work, key: str, slots: list[tuple[int, int]], rng: random.Random) -> int:
    return rng.randrange(len(slots))


def _least_loaded(work: Work, key: str, slots: list[tuple[int, int]], rng: random.Random) -> int:
    return _argmin([(-work.gpu_free[j][g],) for j, g in slots])


def _bin_pack(work: Work, key: str, slots: list[tuple[int, int]], rng: random.Random) -> int:
    return _argmin([(work.gpu_free[j][g],) for j, g in slots])


def _locality(work: Work, key: str, slots: list[tuple[int, int]], rng: random.Random) -> int:
    return _argmin([(SOURCE_RANK[work.p.source(key, j)], -work.gpu_free[j][g]) for j, g in slots])


def _why(name: str) -> Callable[[Work, str, int, int], str]:
    rule = {
        "random": "uniformly random feasible GPU",
        "least-loaded": "most free GPU memory",
        "bin-pack": "least free GPU memory that fits",
        "locality": "fastest start tier, then most free GPU memory",
    }[name]

    def why(work: Work, key: str, j: int, g: int) -> str:
        return f"{rule} ({gib(work.gpu_free[j][g])} left on the GPU after the plan)"

    return why


def _stop_by(name: str, rng: random.Random) -> StopRule:
    def rule(key: str, cands: list[Replica], work: Work) -> tuple[int, str]:
        p = work.p
        ix = [(p.sidx[r.server], p.gidx[p.sidx[r.server]][r.gpu]) for r in cands]
        if name == "random":
            return rng.randrange(len(cands)), "random: a uniformly random replica"
        if name == "least-loaded":
            i = _argmin([(work.gpu_free[j][g], -k) for k, (j, g) in enumerate(ix)])
            return i, "least-loaded: the replica on the GPU with the least free memory"
        if name == "bin-pack":
            i = _argmin([(-work.gpu_free[j][g], -k) for k, (j, g) in enumerate(ix)])
            return i, "bin-pack: the replica on the GPU with the most free memory"
        i = _argmin([(key in p.cache_keys[j], -k) for k, (j, _) in enumerate(ix)])
        return i, "locality: a replica on a server not caching the stage, newest first"

    return rule


class BaselinePlacer:
    """One of the baseline rules behind the ``Placer`` interface."""

    RULES: ClassVar[dict[str, Choose]] = {
        "random": _random,
        "least-loaded": _least_loaded,
        "bin-pack": _bin_pack,
        "locality": _locality,
    }

    def __init__(self, name: str, config: PlacementConfig | None = None) -> None:
        if name not in self.RULES:
            raise ValueError(f"unknown baseline {name!r}; valid: {sorted(self.RULES)}")
        self.name = name
        self.config = config or PlacementConfig()

    def place(self, request: PlacementRequest) -> PlacementPlan:
        p = Problem(request, self.config)
        work = Work(p, request.replicas)
        rng = random.Random(request.seed)
        stops = apply_stops(p, work, _stop_by(self.name, rng))
        order = p.new_replicas()
        choose = self.RULES[self.name]
        slots: list[Slot | None] = []
        for key in order:
            feas = _feasible(work, key)
            if not feas:
                slots.append(None)
                continue
            j, g = feas[choose(work, key, feas, rng)]
            work.add(key, j, g)
            slots.append((key, j, g))
        return assemble(
            work, slots, order, placer=self.name, solver=self.name, stops=stops, why=_why(self.name)
        )

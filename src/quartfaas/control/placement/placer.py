"""Replica placement as a pure decision: Quart's cache-aware scheduler and baselines.

Who calls it: the local backend and the simulator (``sim/backend.py``) when a scaling
decision adds or removes replicas; ``control/placement/cache_plan.py`` shares its start-cost model.
It reads frozen inputs and returns a frozen ``PlacementPlan``; it never reads a clock
and holds no state between calls.

Input (``PlacementRequest``): servers (GPUs with id, total/free memory and speed; host
memory through the server's ``KeysManager.view()``; free CPU cores; stage files on local
disk), live replicas (stage, server, gpu), each stage's needs (``StageReq``), and how many
replicas of which stages to start and to stop. Output: where each new replica goes, with
its start tier (``fork`` = host-memory hit, ``disk``, ``remote``), expected start seconds
and a reason; which replicas to stop and why; cache entries the starts will evict; and,
per stage that could not be fully placed, the blocking constraints with the numbers.

Hard constraints (every placer): a replica needs ``min(size x 1.4, 43 GiB)`` free GPU
memory (``PlacementConfig``; ``StageReq.gpu_memory_bytes`` overrides), its CPU cores
free on the server, and no replica of the same stage on that GPU (anti-affinity); a start
that is not a host-memory hit creates the stage's cache entry on the server, which must
fit under the server's cache threshold after evicting unpinned LRU entries (and in its
free host memory), else the server is infeasible for that stage. Replicas being stopped
keep their GPU memory in this decision (they drain first).

Spreading a pipeline: soft, a penalty per pair of replicas of different stages of one
pipeline on the same server (``pipeline_server_penalty_s``, 0.05 s) and a larger one on
the same GPU (``pipeline_gpu_penalty_s``, 0.5 s); no hard per-server limit, so a small
cluster still places everything.

Objective (Quart): minimise the sum of expected start seconds of the new replicas
(``StartCostModel``, from the delay table ``startup_delays.py`` the simulator also uses:
fork, CUDA context and the copy to the GPU; disk and remote a new process, the read, the
context and the copy) + spread penalties + ``lambda x sum_s n_s KL(P_s || Q)``
(lambda 0.5 s/nat), P_s being stage s's replicas over servers and Q the servers' shares
of capacity (speed-weighted free GPU fraction, smoothed so no share is 0). Using n x KL
(the log-likelihood ratio of the counts) makes dispersion grow with replicas as start
costs do. Each unplaced replica costs 10^4 s, so placing as many as possible comes first.
Unlike the prototype (reference §1.4), this is a real optimisation over all servers and
GPUs, GPU memory is decremented as replicas are placed, and the cache tier counts.

Solvers (``search.py``, ``local.py``): exact branch and bound when
the search space is small (``exact_max_leaves``, 20 000 leaves), else greedy + local search
(relocations, ejections of blockers, server clearing). Measured with
``python benchmarks/placement_time.py`` (seed 1) on 1000 random instances of 2-4 servers x
1-3 GPUs, 1-4 stages, 1-6 new replicas, tight GPU and host memory: greedy + local search
placed fewer replicas than the exact solver in 4 instances (0.4 %, packing puzzles that
need several simultaneous moves); where it placed as many it was optimal in 99.0 %, with
a mean relative gap of 0.03 % and a largest of 16.7 %. ``tests/property`` asserts on 200
seeded instances of the same family: fewer placed in <= 2 %, optimal in >= 95 %, mean
gap <= 2 %. Decision time on a 12-server (A40/V100/3090/A100, 4-8 GPUs each), 64-stage
cluster, one 2-vCPU machine: 5-6 ms for 64 new replicas (target < 10 ms), ~33 ms for 192.

Scale-down (Quart): per stage, repeatedly stop the replica whose removal lowers
spread + lambda x n KL most; a critical stage keeps one replica on a server caching its
weights (so a later scale-up can fork) unless there is no other choice; ties: slower GPU,
then the newest replica. Baselines (``baselines.py``) use simple rules.

Determinism: servers are sorted by name and GPUs by id, ties break by that order; only
``random`` uses ``request.seed``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

from quartfaas.control.placement.baselines import BaselinePlacer
from quartfaas.control.placement.model import (
    GPU,
    Cost,
    Infeasible,
    Placement,
    PlacementConfig,
    PlacementPlan,
    PlacementRequest,
    PlannedEviction,
    Replica,
    ServerState,
    StageReq,
    StartCostModel,
    StartSource,
    Stop,
    make_server,
)
from quartfaas.control.placement.problem import Problem
from quartfaas.control.placement.search import QuartPlacer
from quartfaas.control.placement.work import Work

__all__ = [
    "GPU",
    "PLACERS",
    "BaselinePlacer",
    "Cost",
    "Infeasible",
    "Placement",
    "PlacementConfig",
    "PlacementPlan",
    "PlacementRequest",
    "Placer",
    "PlannedEviction",
    "QuartPlacer",
    "Replica",
    "ServerState",
    "StageReq",
    "StartCostModel",
    "StartSource",
    "Stop",
    "evaluate",
    "get_placer",
    "make_server",
]


@runtime_checkable
class Placer(Protocol):
    name: str

    def place(self, request: PlacementRequest) -> PlacementPlan:
        """Where to start ``request.start`` replicas and which ``request.stop`` to stop."""
        ...


PLACERS: dict[str, Callable[[PlacementConfig | None], Placer]] = {
    "quart": QuartPlacer,
    "random": lambda c: BaselinePlacer("random", c),
    "least-loaded": lambda c: BaselinePlacer("least-loaded", c),
    "bin-pack": lambda c: BaselinePlacer("bin-pack", c),
    "locality": lambda c: BaselinePlacer("locality", c),
}


def get_placer(name: str, config: PlacementConfig | None = None) -> Placer:
    """The placer called ``name``; a ``ValueError`` lists the valid names otherwise."""
    factory = PLACERS.get(name)
    if factory is None:
        raise ValueError(f"unknown placer {name!r}; valid placers: {', '.join(sorted(PLACERS))}")
    return factory(config)


def evaluate(
    request: PlacementRequest,
    placements: Sequence[tuple[str, str, str]],
    config: PlacementConfig | None = None,
    stopped: Sequence[Replica] = (),
) -> Cost | None:
    """Quart's objective for given (stage, server, gpu) starts; None if any is infeasible.

    ``stopped`` replicas are removed first. Starts beyond ``request.start`` are an error;
    starts missing from it count as unplaced.
    """
    p = Problem(request, config or PlacementConfig())
    work = Work(p, request.replicas)
    for r in stopped:
        work.stop(r)
    wanted = dict(request.start)
    for key, server, gpu in placements:
        if wanted.get(key, 0) <= 0:
            raise ValueError(f"more starts of {key!r} than request.start asks for")
        wanted[key] -= 1
        j = p.sidx[server]
        g = p.gidx[j][gpu]
        if work.server_block(key, j) is not None or work.gpu_block(key, j, g) is not None:
            return None
        work.add(key, j, g)
    return work.cost(sum(wanted.values()))

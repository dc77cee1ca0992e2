"""Placement invariants (Hypothesis) and the solvers' optimality.

Constraints are re-checked here from the request alone (not through the placer's own
bookkeeping): GPU memory, anti-affinity, CPU, and the host-memory threshold replayed with
``plan_admission`` on each server's cache.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import random
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from quartfaas.control.placement import (
    GPU,
    PLACERS,
    PlacementConfig,
    PlacementPlan,
    PlacementRequest,
    Replica,
    StageReq,
    StartSource,
    evaluate,
    get_placer,
    make_server,
)
from quartfaas.control.placement.instances import small_instance
from quartfaas.control.placement.keys_manager import GIB, CacheEntry, CacheView, plan_admission
from quartfaas.control.placement.problem import Problem
from quartfaas.control.placement.search import exact
from quartfaas.control.placement.work import Work

CFG = PlacementConfig()
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def requests(
    draw: st.DrawFn,
    *,
    max_servers: int = 3,
    max_gpus: int = 2,
    max_stages: int = 3,
    max_start: int = 2,
    stops: bool = True,
) -> PlacementRequest:
    stages = [
        StageReq(
            f"s{i}",
            draw(st.integers(1, 8)) * GIB // 2,
            pipeline=draw(st.sampled_from(["", "p"])),
            critical=draw(st.booleans()),
            cpu_cores=draw(st.sampled_from([0.5, 1.0, 2.0])),
        )
        for i in range(draw(st.integers(1, max_stages)))
    ]
    servers = []
    for j in range(draw(st.integers(1, max_servers))):
        gpus = []
        for g in range(draw(st.integers(1, max_gpus))):
            total = draw(st.sampled_from([4, 8, 12, 24])) * GIB
            free = total * draw(st.integers(0, 4)) // 4
            gpus.append(GPU(f"g{g}", total, free, draw(st.sampled_from([0.7, 1.0, 1.4]))))
        host = draw(st.sampled_from([4, 8, 16])) * GIB
        cached: dict[str, int] = {}
        for s in stages:
            if draw(st.booleans()) and sum(cached.values()) + s.size_bytes <= 0.85 * host:
                cached[s.key] = s.size_bytes
        pinned = frozenset(k for k in cached if draw(st.booleans()))
        servers.append(
            make_server(
                f"n{j}",
                gpus=tuple(gpus),
                host_memory_bytes=host,
                host_free_bytes=draw(st.sampled_from([1, 4, 16])) * GIB,
                cpu_free_cores=draw(st.sampled_from([1.0, 2.0, 8.0])),
                cached=cached,
                pinned=pinned,
                disk_keys=draw(st.sampled_from([None, frozenset()])),
            )
        )
    slots = [(s.name, g.gpu_id) for s in servers for g in s.gpus]
    replicas = []
    for s in stages:
        for server, gpu in slots:
            if draw(st.integers(0, 3)) == 0:
                replicas.append(Replica(s.key, server, gpu, f"{s.key}-{server}-{gpu}"))
    start = {s.key: draw(st.integers(0, max_start)) for s in stages}
    count = Counter(r.stage for r in replicas)
    stop = {s.key: draw(st.integers(0, count[s.key])) for s in stages} if stops else {}
    return PlacementRequest(
        tuple(servers),
        tuple(stages),
        tuple(replicas),
        start=start,
        stop=stop,
        seed=draw(st.integers(0, 2**16)),
    )


def gpu_req(s: StageReq) -> int:
    return min(math.ceil(s.size_bytes * CFG.gpu_memory_factor), CFG.gpu_memory_cap_bytes)


def check_constraints(req: PlacementRequest, plan: PlacementPlan) -> None:
    stage = {s.key: s for s in req.stages}
    server = {s.name: s for s in req.servers}
    gpu = {(s.name, g.gpu_id): g for s in req.servers for g in s.gpus}
    placed = Counter(p.stage for p in plan.placements)
    for key, n in placed.items():
        assert n <= req.start.get(key, 0)
    for inf in plan.infeasible:
        assert inf.placed == placed[inf.stage] < inf.requested == req.start[inf.stage]
    mem: Counter[tuple[str, str]] = Counter()
    cpu: Counter[str] = Counter()
    for p in plan.placements:
        mem[(p.server, p.gpu)] += gpu_req(stage[p.stage])
        cpu[p.server] += int(stage[p.stage].cpu_cores * 2)
        assert (p.source is StartSource.FORK) == (p.stage in server[p.server].cache.keys)
    for k, used in mem.items():
        assert used <= gpu[k].free_bytes, f"GPU {k} over its free memory"
    for name, half_cores in cpu.items():
        assert half_cores / 2 <= server[name].cpu_free_cores + 1e-9
    stopped = Counter((s.stage, s.server, s.gpu) for s in plan.stops)
    live = Counter((r.stage, r.server, r.gpu) for r in req.replicas)
    assert not stopped - live, "stopped a replica that does not exist"
    new = Counter((p.stage, p.server, p.gpu) for p in plan.placements)
    for k, n in new.items():
        assert n + live[k] - stopped[k] == 1, f"anti-affinity broken on {k}"
    for key, n in req.stop.items():
        have = sum(1 for r in req.replicas if r.stage == key)
        assert sum(1 for s in plan.stops if s.stage == key) == min(n, have)
    # Host-memory threshold: replay on each server, hits pinned first, then misses.
    evicted = {(e.server, e.key) for e in plan.evictions}
    for s in req.servers:
        mine = [p for p in plan.placements if p.server == s.name]
        hits = frozenset(p.stage for p in mine if p.source is StartSource.FORK)
        view = s.cache
        gone: set[str] = set()
        new_bytes = 0
        for key in sorted({p.stage for p in mine} - hits):
            adm = plan_admission(view, key, stage[key].size_bytes, protect=hits)
            assert adm.admitted, f"{s.name}: {adm.reason}"
            gone.update(adm.evicted)
            new_bytes += stage[key].size_bytes - adm.evicted_bytes
            kept = tuple(e for e in view.entries if e.key not in adm.evicted)
            entry = CacheEntry(key, stage[key].size_bytes, 0.0, pins=1)
            view = CacheView(view.host_memory_bytes, view.capacity_bytes, (*kept, entry))
        assert view.used_bytes <= view.capacity_bytes
        assert new_bytes <= s.host_free_bytes
        assert gone == {k for n, k in evicted if n == s.name}


@SETTINGS
@given(req=requests(), name=st.sampled_from(sorted(PLACERS)))
def test_plans_respect_every_hard_constraint(req: PlacementRequest, name: str) -> None:
    check_constraints(req, get_placer(name).place(req))


@SETTINGS
@given(req=requests(), name=st.sampled_from(sorted(PLACERS)))
def test_deterministic_for_a_seed_and_any_input_order(req: PlacementRequest, name: str) -> None:
    placer = get_placer(name)
    plan = placer.place(req)
    assert placer.place(req) == plan
    flipped = dataclasses.replace(req, servers=req.servers[::-1], stages=req.stages[::-1])
    assert placer.place(flipped).placements == plan.placements


@SETTINGS
@given(req=requests(stops=False))
def test_prefers_a_cache_hit_when_one_is_feasible(req: PlacementRequest) -> None:
    key = req.stages[0].key
    one = dataclasses.replace(req, stages=req.stages[:1], start={key: 1}, stop={})
    one = dataclasses.replace(one, replicas=tuple(r for r in one.replicas if r.stage == key))
    cfg = PlacementConfig(lambda_s_per_nat=0.0)  # latency alone decides
    hit_ok = any(
        evaluate(one, [(key, s.name, g.gpu_id)], cfg) is not None
        for s in one.servers
        if key in s.cache.keys
        for g in s.gpus
    )
    plan = get_placer("quart", cfg).place(one)
    if hit_ok:
        assert plan.placements[0].source is StartSource.FORK
    # and with the default lambda a hit still wins when the servers' shares are equal
    if hit_ok and len({len(s.gpus) for s in one.servers}) == 1:
        equal = dataclasses.replace(
            one,
            servers=tuple(
                dataclasses.replace(
                    s, gpus=tuple(dataclasses.replace(g, speed=1.0) for g in s.gpus)
                )
                for s in one.servers
            ),
        )
        if len({sum(g.free_bytes / g.total_bytes for g in s.gpus) for s in equal.servers}) == 1:
            assert get_placer("quart").place(equal).placements[0].source is StartSource.FORK


def brute_force(req: PlacementRequest, cfg: PlacementConfig) -> float:
    order = [k for k, n in sorted(req.start.items()) for _ in range(n)]
    slots = [(s.name, g.gpu_id) for s in req.servers for g in s.gpus]
    best = math.inf
    for combo in itertools.product([None, *slots], repeat=len(order)):
        starts = [(k, *slot) for k, slot in zip(order, combo, strict=True) if slot is not None]
        cost = evaluate(req, starts, cfg)
        if cost is not None:
            best = min(best, cost.total_s)
    return best


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests(max_servers=3, max_gpus=2, max_stages=2, max_start=2, stops=False))
def test_exact_solver_is_optimal_against_brute_force(req: PlacementRequest) -> None:
    total = sum(req.start.values())
    if total == 0 or total > 3:
        return
    cfg = PlacementConfig(exact_max_leaves=10**6)
    plan = get_placer("quart", cfg).place(req)
    assert plan.solver == "exact"
    best = brute_force(req, cfg)
    assert plan.cost.total_s == pytest.approx(best, rel=1e-9, abs=1e-6)
    again = evaluate(req, [(p.stage, p.server, p.gpu) for p in plan.placements], cfg)
    assert again is not None and again.total_s == pytest.approx(plan.cost.total_s)
    # The branch and bound alone, started from an empty incumbent (not the greedy plan).
    prob = Problem(req, cfg)
    work = Work(prob, req.replicas)
    order = prob.new_replicas()
    slots, done = exact(work, order, [None] * len(order), max_nodes=10**6)
    assert done
    cost = work.cost(slots.count(None))
    assert cost.total_s == pytest.approx(best, rel=1e-9, abs=1e-6)


@SETTINGS
@given(req=requests(max_servers=4, max_gpus=3, max_stages=3, max_start=3))
def test_exact_is_never_worse_than_greedy(req: PlacementRequest) -> None:
    exact = get_placer("quart", PlacementConfig(exact_max_leaves=10**6)).place(req)
    greedy = get_placer("quart", PlacementConfig(exact_max_leaves=0)).place(req)
    assert greedy.solver == "greedy+local"
    if exact.solver == "exact":
        assert exact.cost.total_s <= greedy.cost.total_s + 1e-6


random_instance = small_instance  # the benchmark's family of small instances


def test_greedy_gap_on_a_seeded_sample_is_within_the_documented_bounds() -> None:
    """placement.py documents: on such instances greedy + local search places as many
    replicas as the exact solver in >= 98 % of cases and, where it does, is optimal in
    >= 95 % with a mean relative gap <= 2 %."""
    exact_cfg = PlacementConfig(exact_max_leaves=10**7)
    greedy_cfg = PlacementConfig(exact_max_leaves=0)
    rng = random.Random(20240601)
    n, fewer, gaps = 200, 0, []
    for _ in range(n):
        req = random_instance(rng)
        e = get_placer("quart", exact_cfg).place(req)
        g = get_placer("quart", greedy_cfg).place(req)
        assert e.solver == "exact"
        assert e.cost.total_s <= g.cost.total_s + 1e-6
        if g.cost.unplaced > e.cost.unplaced:
            fewer += 1
            continue
        gaps.append((g.cost.total_s - e.cost.total_s) / e.cost.total_s)
    assert fewer <= 0.02 * n
    assert sum(x < 1e-9 for x in gaps) >= 0.95 * len(gaps)
    assert sum(gaps) / len(gaps) <= 0.02


def test_branch_and_bound_alone_matches_brute_force_on_a_seeded_sample() -> None:
    """Hypothesis rarely finds instances where a wrong bound prunes the optimum, so the
    search (from an empty incumbent) is also checked on 200 seeded tiny instances."""
    cfg = PlacementConfig(exact_max_leaves=10**6)
    rng = random.Random(5)
    done_n = 0
    while done_n < 200:
        req = random_instance(rng)
        if sum(req.start.values()) > 3:
            continue
        done_n += 1
        prob = Problem(req, cfg)
        work = Work(prob, req.replicas)
        order = prob.new_replicas()
        slots, done = exact(work, order, [None] * len(order), max_nodes=10**6)
        assert done
        got = work.cost(slots.count(None)).total_s
        assert got == pytest.approx(brute_force(req, cfg), rel=1e-9, abs=1e-6)

"""Placement: hand-made cases, each checking the choice and the reason given."""

from __future__ import annotations

import dataclasses

import pytest

from quartfaas.control.placement import (
    GPU,
    PLACERS,
    PlacementConfig,
    PlacementRequest,
    Replica,
    StageReq,
    StartSource,
    evaluate,
    get_placer,
    make_server,
)
from quartfaas.control.placement.keys_manager import GIB


def place(req: PlacementRequest, name: str = "quart", **cfg: object):
    return get_placer(name, PlacementConfig(**cfg)).place(req)  # type: ignore[arg-type]


def test_registry_lists_every_placer_and_rejects_unknown_names() -> None:
    assert set(PLACERS) == {"quart", "random", "least-loaded", "bin-pack", "locality"}
    for name in PLACERS:
        assert get_placer(name).name == name
    with pytest.raises(ValueError, match="bin-pack, least-loaded, locality, quart, random"):
        get_placer("tetris")


def test_host_memory_hit_wins_and_says_so() -> None:
    servers = (
        make_server("a", gpus=2),
        make_server("b", gpus=2, cached={"s0": 4 * GIB}),
    )
    req = PlacementRequest(servers, (StageReq("s0", 4 * GIB),), start={"s0": 1})
    plan = place(req)
    (pl,) = plan.placements
    assert (pl.server, pl.source) == ("b", StartSource.FORK)
    assert "host-memory hit" in pl.reason and pl.reason.startswith("quart:")
    cost = PlacementConfig().cost
    assert pl.expected_start_s == pytest.approx(cost.seconds(StartSource.FORK, 4 * GIB))
    assert pl.expected_start_s < cost.seconds(StartSource.DISK, 4 * GIB) - 2.0 and not pl.admits
    assert plan.solver == "exact" and plan.ok


def test_start_cost_model_tiers() -> None:
    servers = (
        make_server("a", gpus=1, disk_keys=frozenset()),  # must fetch remotely
        make_server("b", gpus=1),  # on local disk
    )
    req = PlacementRequest(servers, (StageReq("s0", 4 * GIB),), start={"s0": 1})
    (pl,) = place(req).placements
    assert (pl.server, pl.source) == ("b", StartSource.DISK)
    cost = PlacementConfig().cost
    table = cost.table()
    assert pl.expected_start_s == pytest.approx(
        cost.process_start_s + 4 * GIB / cost.disk_bytes_per_s + cost.cuda_context_s
        + 4 * GIB / table.pageable_bytes_per_s
    )  # fmt: skip
    # the one table: the simulator's TableDelays gives the same start on the same link
    from quartfaas.control.backend import StartTier
    from quartfaas.sim.cluster import GpuType, TableDelays

    gpu = GpuType("x", 32.0, 1.0, cost.host_to_gpu_bytes_per_s / GIB)
    assert TableDelays().seconds(StartTier.COLD, 4.0, gpu, 0.0) == pytest.approx(
        pl.expected_start_s
    )
    assert TableDelays().seconds(StartTier.FORK, 4.0, gpu, 0.0) == pytest.approx(
        cost.seconds(StartSource.FORK, 4 * GIB)
    )
    assert cost.seconds(StartSource.REMOTE, 4 * GIB) > pl.expected_start_s
    assert pl.admits  # this start creates the cache entry on b


def test_gpu_memory_infeasible_gives_the_numbers() -> None:
    gpus = (GPU("g0", 24 * GIB, 10 * GIB), GPU("g1", 24 * GIB, 12 * GIB))
    req = PlacementRequest(
        (make_server("a", gpus=gpus),), (StageReq("s0", 10 * GIB),), start={"s0": 2}
    )
    plan = place(req)
    assert plan.placements == () and not plan.ok
    (inf,) = plan.infeasible
    assert (inf.requested, inf.placed) == (2, 0)
    assert "needs 14.00 GiB GPU memory (10.00 GiB x 1.4)" in inf.reason
    assert "2 have too little free memory (largest free 12.00 GiB)" in inf.reason
    assert plan.cost.unplaced == 2


def test_gpu_requirement_is_capped() -> None:
    big = StageReq("big", 40 * GIB)  # 56 GiB by the factor, capped at 43 GiB
    req = PlacementRequest(
        (make_server("a", gpus=1, gpu_bytes=48 * GIB),), (big,), start={"big": 1}
    )
    assert len(place(req).placements) == 1
    req2 = PlacementRequest(
        (make_server("a", gpus=1, gpu_bytes=42 * GIB),), (big,), start={"big": 1}
    )
    assert "needs 43.00 GiB" in place(req2).infeasible[0].reason


def test_anti_affinity_one_replica_of_a_stage_per_gpu() -> None:
    servers = (make_server("a", gpus=2, gpu_bytes=80 * GIB),)
    live = (Replica("s0", "a", "gpu0"),)
    req = PlacementRequest(servers, (StageReq("s0", 2 * GIB),), live, start={"s0": 2})
    plan = place(req)
    assert [(p.server, p.gpu) for p in plan.placements] == [("a", "gpu1")]
    assert "2 already run s0" in plan.infeasible[0].reason


def test_cpu_is_a_hard_constraint() -> None:
    servers = (make_server("a", gpus=4, cpu_free_cores=1.5),)
    req = PlacementRequest(servers, (StageReq("s0", GIB, cpu_cores=1.0),), start={"s0": 2})
    plan = place(req)
    assert len(plan.placements) == 1
    assert "servers short of CPU: a (0.5 free)" in plan.infeasible[0].reason


def test_host_threshold_blocks_a_miss_when_pinned_entries_fill_the_cache() -> None:
    full = make_server(
        "a",
        gpus=2,
        host_memory_bytes=10 * GIB,
        cached={"p1": 4 * GIB, "p2": 4 * GIB},
        pinned=frozenset({"p1", "p2"}),
        memory_threshold_frac=0.85,
    )
    req = PlacementRequest((full,), (StageReq("s0", 2 * GIB),), start={"s0": 1})
    plan = place(req)
    assert plan.placements == ()
    assert "host cache cannot take 2.00 GiB: a (cache 8.00 GiB of 8.50 GiB used)" in (
        plan.infeasible[0].reason
    )


def test_a_miss_evicts_lru_unpinned_entries_and_reports_them() -> None:
    srv = make_server(
        "a",
        gpus=2,
        host_memory_bytes=10 * GIB,
        cached={"old": 3 * GIB, "newer": 3 * GIB, "live": 2 * GIB},
        pinned=frozenset({"live"}),
    )
    req = PlacementRequest((srv,), (StageReq("s0", 2 * GIB),), start={"s0": 1})
    plan = place(req)
    assert plan.placements[0].source is StartSource.DISK
    (ev,) = plan.evictions
    assert (ev.server, ev.key) == ("a", "old") and "least recently used" in ev.reason


def test_a_hit_is_protected_from_another_starts_eviction() -> None:
    # s0 forks from the cached entry; s1's miss must not evict it, so s1 goes elsewhere.
    a = make_server("a", gpus=2, host_memory_bytes=10 * GIB, cached={"s0": 6 * GIB})
    b = make_server("b", gpus=2)
    req = PlacementRequest(
        (a, b), (StageReq("s0", 6 * GIB), StageReq("s1", 4 * GIB)), start={"s0": 1, "s1": 1}
    )
    plan = place(req)
    where = {p.stage: (p.server, p.source) for p in plan.placements}
    assert where["s0"] == ("a", StartSource.FORK)
    assert where["s1"][0] == "b" and plan.evictions == ()


def test_replicas_spread_over_equal_servers() -> None:
    servers = tuple(make_server(n, gpus=4) for n in "abc")
    req = PlacementRequest(servers, (StageReq("s0", 2 * GIB),), start={"s0": 3})
    plan = place(req)
    assert sorted(p.server for p in plan.placements) == ["a", "b", "c"]
    assert plan.cost.dispersion_nats == pytest.approx(0.0, abs=1e-9)
    # without the dispersion term, packing onto one server costs the same start time
    flat = place(req, lambda_s_per_nat=0.0)
    assert flat.cost.start_s == pytest.approx(plan.cost.start_s)


def test_speed_weighted_target_prefers_the_faster_server() -> None:
    servers = (make_server("slow", gpus=2, speed=0.7), make_server("fast", gpus=2, speed=1.6))
    req = PlacementRequest(servers, (StageReq("s0", 2 * GIB),), start={"s0": 1})
    assert place(req).placements[0].server == "fast"
    same = place(req, target="free-gpus")
    assert same.placements[0].server == "fast"  # equal share: tie goes to name order


def test_stages_of_one_pipeline_avoid_sharing_a_gpu() -> None:
    servers = (make_server("a", gpus=2, gpu_bytes=80 * GIB),)
    live = (Replica("s0", "a", "gpu0"),)
    stages = (StageReq("s0", GIB, pipeline="p"), StageReq("s1", GIB, pipeline="p"))
    plan = place(PlacementRequest(servers, stages, live, start={"s1": 1}))
    assert plan.placements[0].gpu == "gpu1"
    assert plan.cost.spread_s == pytest.approx(PlacementConfig().pipeline_server_penalty_s)


def test_scale_down_stops_the_replica_that_lowers_dispersion() -> None:
    servers = (make_server("a", gpus=2), make_server("b", gpus=2))
    live = (
        Replica("s0", "a", "gpu0", "r1"),
        Replica("s0", "a", "gpu1", "r2"),
        Replica("s0", "b", "gpu0", "r3"),
    )
    req = PlacementRequest(servers, (StageReq("s0", GIB),), live, stop={"s0": 1})
    plan = place(req)
    (stop,) = plan.stops
    assert stop.server == "a" and stop.replica_id == "r2"  # ties: the newest
    assert "n*KL" in stop.reason


def test_scale_down_keeps_a_critical_stage_on_a_server_caching_it() -> None:
    servers = (
        make_server("a", gpus=2, cached={"s0": GIB}, pinned=frozenset({"s0"})),
        make_server("b", gpus=2),
        make_server("c", gpus=2),
    )
    live = (
        Replica("s0", "a", "gpu0", "on-cache"),
        Replica("s0", "b", "gpu0", "r2"),
        Replica("s0", "c", "gpu0", "r3"),
    )
    crit = StageReq("s0", GIB, critical=True)
    plan = place(PlacementRequest(servers, (crit,), live, stop={"s0": 2}))
    assert {s.replica_id for s in plan.stops} == {"r2", "r3"}
    plan = place(PlacementRequest(servers, (crit,), live, stop={"s0": 3}))
    assert len(plan.stops) == 3
    assert any("no other choice" in s.reason for s in plan.stops)


def test_stopping_more_than_exist_says_so() -> None:
    servers = (make_server("a", gpus=1),)
    live = (Replica("s0", "a", "gpu0", "r1"),)
    plan = place(PlacementRequest(servers, (StageReq("s0", GIB),), live, stop={"s0": 3}))
    assert len(plan.stops) == 1 and "asked to stop 3 replicas but only 1 exist" in (
        plan.stops[0].reason
    )


def test_baseline_rules() -> None:
    servers = (
        make_server("a", gpus=(GPU("g0", 40 * GIB, 30 * GIB),)),
        make_server("b", gpus=(GPU("g0", 40 * GIB, 10 * GIB),), cached={"s0": 4 * GIB}),
        make_server("c", gpus=(GPU("g0", 40 * GIB, 20 * GIB),)),
    )
    req = PlacementRequest(servers, (StageReq("s0", 4 * GIB),), start={"s0": 1})
    assert place(req, "least-loaded").placements[0].server == "a"
    assert place(req, "bin-pack").placements[0].server == "b"
    assert place(req, "locality").placements[0].server == "b"
    assert place(req, "locality").placements[0].source is StartSource.FORK
    chosen = {
        place(dataclasses.replace(req, seed=s), "random").placements[0].server for s in range(40)
    }
    assert chosen == {"a", "b", "c"}
    again = place(dataclasses.replace(req, seed=7), "random")
    assert again == place(dataclasses.replace(req, seed=7), "random")


def test_input_order_does_not_change_the_plan() -> None:
    servers = (
        make_server("a", gpus=2, cached={"s1": 2 * GIB}),
        make_server("b", gpus=3),
        make_server("c", gpus=1, speed=1.4),
    )
    stages = (StageReq("s0", 3 * GIB, pipeline="p"), StageReq("s1", 2 * GIB, pipeline="p"))
    req = PlacementRequest(servers, stages, start={"s0": 2, "s1": 2})
    flipped = PlacementRequest(servers[::-1], stages[::-1], start={"s1": 2, "s0": 2})
    for name in PLACERS:
        assert place(req, name).placements == place(flipped, name).placements


def test_evaluate_matches_the_plan_and_rejects_infeasible_starts() -> None:
    servers = (make_server("a", gpus=2), make_server("b", gpus=2, cached={"s0": GIB}))
    req = PlacementRequest(servers, (StageReq("s0", GIB),), start={"s0": 2})
    plan = place(req)
    cost = evaluate(req, [(p.stage, p.server, p.gpu) for p in plan.placements])
    assert cost is not None and cost.total_s == pytest.approx(plan.cost.total_s)
    assert evaluate(req, [("s0", "a", "gpu0"), ("s0", "a", "gpu0")]) is None
    missing = evaluate(req, [("s0", "a", "gpu0")])
    assert missing is not None and missing.unplaced == 1
    with pytest.raises(ValueError, match="more starts"):
        evaluate(req, [("s0", "a", "gpu0"), ("s0", "a", "gpu1"), ("s0", "b", "gpu0")])


def test_request_validation() -> None:
    servers = (make_server("a", gpus=1),)
    with pytest.raises(ValueError, match="not in stages"):
        place(PlacementRequest(servers, (), start={"s0": 1}))
    with pytest.raises(ValueError, match="unknown a/gpu9"):
        place(PlacementRequest(servers, (StageReq("s0", 1),), (Replica("s0", "a", "gpu9"),)))
    with pytest.raises(ValueError, match="unique"):
        place(PlacementRequest(servers * 2, ()))
    with pytest.raises(ValueError, match="must be >= 0"):
        place(PlacementRequest(servers, (StageReq("s0", 1),), start={"s0": -1}))


def test_large_requests_use_the_greedy_solver() -> None:
    servers = tuple(make_server(f"n{i:02d}", gpus=8) for i in range(12))
    stages = tuple(StageReq(f"s{i}", 2 * GIB) for i in range(20))
    req = PlacementRequest(servers, stages, start={s.key: 2 for s in stages})
    plan = place(req)
    assert plan.solver == "greedy+local" and plan.ok and len(plan.placements) == 40

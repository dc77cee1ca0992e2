"""Cache planning: prewarm where demand is coming, evict only what is worth less."""

from __future__ import annotations

import random

import pytest

from quartfaas.control.placement import GPU, ServerState, make_server
from quartfaas.control.placement.cache_plan import (
    CachePlan,
    CachePlanConfig,
    StageDemand,
    expected_starts,
    plan_cache,
)
from quartfaas.control.placement.keys_manager import GIB, KeysManager
from quartfaas.control.placement.model import PlacementConfig, StartSource


def apply(servers: list[ServerState], plan: CachePlan) -> dict[str, KeysManager]:
    """Apply a plan as a backend would: evict, then admit; nothing else may be evicted."""
    out = {}
    for s in servers:
        km = KeysManager(
            s.cache.host_memory_bytes, s.cache.capacity_bytes / s.cache.host_memory_bytes
        )
        for e in s.cache.entries:
            assert km.admit(e.key, e.size_bytes, e.last_used).admitted
            for _ in range(e.pins):
                km.pin(e.key)
        out[s.name] = km
    for ev in plan.evict:
        assert out[ev.server].evict(ev.key).evicted, ev
    for pre in plan.prewarm:
        adm = out[pre.server].admit(pre.key, pre.size_bytes, 100.0)
        assert adm.admitted and adm.evicted == (), adm.reason
    return out


def test_no_demand_no_actions() -> None:
    servers = [make_server("a", cached={"s0": GIB})]
    plan = plan_cache(
        servers, {"s0": StageDemand("s0", GIB, expected_replicas=1, current_replicas=1)}
    )
    assert plan == CachePlan((), (), ())


def test_expected_starts_combines_growth_and_bursts() -> None:
    cfg = CachePlanConfig()
    d = StageDemand("s", GIB, expected_replicas=4, current_replicas=1, burst_prob=0.5)
    assert expected_starts(d, cfg) == pytest.approx(3 + 0.5 * max(1, 0.5 * 4))


def test_prewarm_goes_where_it_saves_most_and_says_why() -> None:
    servers = [
        make_server("disk", gpus=2),
        make_server("remote", gpus=2, disk_keys=frozenset()),
    ]
    demand = {"s0": StageDemand("s0", 4 * GIB, expected_replicas=2, current_replicas=1)}
    plan = plan_cache(servers, demand)
    (pre,) = plan.prewarm
    assert pre.server == "remote"  # a remote fetch is the slowest start to avoid
    assert "remote -> fork" in pre.reason and "1.00 expected starts" in pre.reason
    cost = PlacementConfig().cost  # the shared start-up delay table
    saved = cost.seconds(StartSource.REMOTE, 4 * GIB) - cost.seconds(StartSource.FORK, 4 * GIB)
    assert pre.benefit_s == pytest.approx(saved) and saved > 5.0


def test_copies_scale_with_expected_starts() -> None:
    servers = [make_server(n, gpus=4) for n in "abcd"]
    demand = {"s0": StageDemand("s0", 2 * GIB, expected_replicas=7, current_replicas=1)}
    plan = plan_cache(servers, demand, CachePlanConfig(starts_per_copy=2))
    assert len(plan.prewarm) == 3  # 6 starts / 2 per copy
    assert len({p.server for p in plan.prewarm}) == 3


def test_existing_copies_count_first() -> None:
    servers = [make_server("a", cached={"s0": 2 * GIB}), make_server("b"), make_server("c")]
    demand = {"s0": StageDemand("s0", 2 * GIB, expected_replicas=4, current_replicas=1)}
    plan = plan_cache(servers, demand, CachePlanConfig(starts_per_copy=2))
    assert [p.server for p in plan.prewarm] == ["b"]  # a's copy is one of the two wanted


def test_critical_stage_keeps_a_copy_without_predicted_growth() -> None:
    servers = [make_server("a")]
    demand = {"s0": StageDemand("s0", GIB, expected_replicas=1, current_replicas=1, critical=True)}
    plan = plan_cache(servers, demand)
    assert [p.key for p in plan.prewarm] == ["s0"] and "(critical)" in plan.prewarm[0].reason
    none = plan_cache(servers, demand, CachePlanConfig(critical_min_copies=0))
    assert none.prewarm == ()


def test_evicts_only_unpinned_entries_worth_less() -> None:
    srv = make_server(
        "a",
        host_memory_bytes=10 * GIB,  # 8.5 GiB cache
        cached={"idle": 3 * GIB, "live": 3 * GIB, "wanted": 2 * GIB},
        pinned=frozenset({"live"}),
    )
    demand = {
        "new": StageDemand("new", 3 * GIB, expected_replicas=3, current_replicas=1),
        "wanted": StageDemand("wanted", 2 * GIB, expected_replicas=9, current_replicas=1),
    }
    plan = plan_cache([srv], demand)
    assert [p.key for p in plan.prewarm] == ["new"]
    assert [e.key for e in plan.evict] == ["idle"]
    assert "makes room for new" in plan.evict[0].reason
    kms = apply([srv], plan)
    assert kms["a"].used_bytes <= kms["a"].capacity_bytes
    assert {"live", "wanted", "new"} <= {e.key for e in kms["a"].entries()}


def test_no_room_is_reported_not_forced() -> None:
    srv = make_server(
        "a", host_memory_bytes=8 * GIB, cached={"live": 6 * GIB}, pinned=frozenset({"live"})
    )
    demand = {"s0": StageDemand("s0", 2 * GIB, expected_replicas=3, current_replicas=1)}
    plan = plan_cache([srv], demand)
    assert plan.prewarm == () and plan.evict == ()
    assert any("no room on a" in s for s in plan.skipped)


def test_servers_without_gpu_room_are_not_used() -> None:
    full = make_server("full", gpus=(GPU("g0", 24 * GIB, GIB),))
    plan = plan_cache([full], {"s0": StageDemand("s0", 4 * GIB, expected_replicas=3)})
    assert plan.prewarm == ()


def test_loads_per_server_are_bounded_and_small_gains_skipped() -> None:
    servers = [make_server("a")]
    demand = {
        f"s{i}": StageDemand(f"s{i}", GIB, expected_replicas=2, current_replicas=1)
        for i in range(4)
    }
    plan = plan_cache(servers, demand, CachePlanConfig(max_prewarms_per_server=2))
    assert len(plan.prewarm) == 2
    assert sum("already has 2 loads" in s for s in plan.skipped) == 2
    tiny = plan_cache(servers, demand, CachePlanConfig(min_benefit_s=1000.0))
    assert tiny.prewarm == ()


def test_random_plans_never_exceed_thresholds_or_touch_pins() -> None:
    rng = random.Random(3)
    for _ in range(200):
        servers = []
        keys = [f"s{i}" for i in range(6)]
        sizes = {k: int(rng.uniform(0.5, 4) * GIB) for k in keys}
        for j in range(rng.randint(1, 4)):
            host = rng.choice([8, 16]) * GIB
            cached: dict[str, int] = {}
            for k in keys:
                if rng.random() < 0.4 and sum(cached.values()) + sizes[k] <= 0.85 * host:
                    cached[k] = sizes[k]
            pinned = frozenset(k for k in cached if rng.random() < 0.3)
            servers.append(
                make_server(f"n{j}", gpus=2, host_memory_bytes=host, cached=cached, pinned=pinned)
            )
        demand = {
            k: StageDemand(
                k,
                sizes[k],
                expected_replicas=rng.uniform(0, 6),
                current_replicas=rng.randint(0, 3),
                burst_prob=rng.random(),
                critical=rng.random() < 0.3,
            )
            for k in keys
            if rng.random() < 0.7
        }
        plan = plan_cache(servers, demand, CachePlanConfig(max_prewarms_per_server=3))
        pins = {(s.name, e.key) for s in servers for e in s.cache.entries if e.pinned}
        assert not {(e.server, e.key) for e in plan.evict} & pins
        kms = apply(servers, plan)
        for km in kms.values():
            assert km.used_bytes <= km.capacity_bytes
        assert plan_cache(servers, demand, CachePlanConfig(max_prewarms_per_server=3)) == plan

"""Pure parts of the Ray backend (no cluster): node choice, Serve metrics -> snapshot,
the Serve policy's decisions, the replicas' window statistics."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray")

from helpers import tiny_bert_spec
from quartfaas.backends.ray.nodes import LiveReplica, NodeInfo, choose_node, placement_rounds
from quartfaas.backends.ray.serve_app import window_stats
from quartfaas.backends.ray.serve_policy import (
    QuartServePolicy,
    ServeStageMetrics,
    stage_snapshot,
)
from quartfaas.backends.ray.weights import ObjectStoreCache, _Held
from quartfaas.control.backend import StartTier
from quartfaas.control.placement import StageReq, get_placer
from quartfaas.control.placement.keys_manager import GIB, KeysManager


def nodes() -> list[NodeInfo]:
    res = {"CPU": 2.0, "accel": 2.0, "object_store_memory": 4.0 * GIB}
    return [NodeInfo("a", "", res), NodeInfo("b", "", res), NodeInfo("head", "", {"CPU": 1.0})]


def test_quart_placer_prefers_the_node_holding_the_weights() -> None:
    req = StageReq("s0", GIB, pipeline="p", cpu_cores=0.5)
    km = KeysManager(4 * GIB)
    km.admit("s0", GIB, 0.0)
    choice = choose_node(
        get_placer("quart"), stage=req, stages=[req], nodes=nodes(),
        replicas=[LiveReplica("s0", "b", "slot0", 0.5, "s0-1")],
        caches={"b": km.view()}, accelerator="accel",
    )  # fmt: skip
    assert not isinstance(choice, str)
    node, slot, why = choice
    assert (node, slot) == ("b", "slot1")  # anti-affinity: not on slot0 again
    assert why.startswith("quart:")


def ids(group: list[NodeInfo]) -> list[str]:
    return [n.node_id for n in group]


def test_placement_tries_the_unsuspected_nodes_first() -> None:
    ns = nodes()
    assert [ids(g) for g in placement_rounds(ns, {}, now=10.0)] == [["a", "b", "head"]]
    rounds = placement_rounds(ns, {"b": 15.0}, now=10.0)
    assert [ids(g) for g in rounds] == [["a", "head"], ["a", "b", "head"]]
    # the suspicion ends at its time; a node suspected by all leaves one round of all
    assert [ids(g) for g in placement_rounds(ns, {"b": 15.0}, now=15.0)] == [["a", "b", "head"]]
    every = {"a": 20.0, "b": 20.0, "head": 20.0}
    assert [ids(g) for g in placement_rounds(ns, every, now=10.0)] == [["a", "b", "head"]]


def test_a_suspect_node_holding_the_weights_is_left_while_another_fits() -> None:
    # b holds the weights and a replica, so the quart placer picks b with all nodes; with
    # b suspected, the first round (a, head) places on a, the replica on b not in view
    req = StageReq("s0", GIB, pipeline="p", cpu_cores=0.5)
    km = KeysManager(4 * GIB)
    km.admit("s0", GIB, 0.0)
    on_b = [LiveReplica("s0", "b", "slot0", 0.5, "s0-1")]
    placed = []
    for group in placement_rounds(nodes(), {"b": 40.0}, now=10.0):
        choice = choose_node(
            get_placer("quart"), stage=req, stages=[req], nodes=group, replicas=on_b,
            caches={"b": km.view()}, accelerator="accel",
        )  # fmt: skip
        assert not isinstance(choice, str)
        placed.append(choice[0])
    assert placed == ["a", "b"]
    # nothing fits on the unsuspected nodes (no accelerator on head): a reason, so the
    # backend's next round (all nodes) places on the suspect node
    alone = choose_node(
        get_placer("quart"), stage=req, stages=[req], nodes=[nodes()[2]], replicas=on_b,
        caches={"b": km.view()}, accelerator="accel",
    )  # fmt: skip
    assert isinstance(alone, str)


def test_no_accelerator_anywhere_is_a_reason_not_a_crash() -> None:
    req = StageReq("s0", GIB, cpu_cores=0.5)
    choice = choose_node(
        get_placer("quart"), stage=req, stages=[req], nodes=nodes(), replicas=[],
        caches={}, accelerator="gpu-that-is-not-there",
    )  # fmt: skip
    assert isinstance(choice, str) and "no node" in choice


def metrics(name: str, lam: float, svc: float, replicas: int = 1) -> ServeStageMetrics:
    per = {f"r{i}": lam / replicas for i in range(replicas)}
    return ServeStageMetrics(
        name=name, running_replicas=replicas, target_replicas=replicas, min_replicas=1,
        max_replicas=8, queued=0.0, ongoing=lam * svc,
        custom={
            "quart_arrival_rate": per,
            "quart_service_mean_s": dict.fromkeys(per, svc),
            "quart_service_scv": dict.fromkeys(per, 0.0),
            "quart_latency_p99_s": dict.fromkeys(per, svc),
        },
    )  # fmt: skip


def test_stage_snapshot_sums_rates_and_weights_service() -> None:
    s = stage_snapshot(metrics("s1", 30.0, 0.05, replicas=3), 1, max_concurrency=1)
    assert s.arrival_rate == pytest.approx(30.0)
    assert s.service_mean_s == pytest.approx(0.05)
    assert s.ready_replicas == 3 and s.latency.p99_s == pytest.approx(0.05)
    empty = stage_snapshot(
        ServeStageMetrics("s", 1, 1, 1, 4, queued=0.0, ongoing=0.0), 0, max_concurrency=1
    )
    assert empty.arrival_rate is None  # unknown, not zero


def test_policy_scales_the_bottleneck_and_holds_without_data() -> None:
    policy = QuartServePolicy(["s0", "s1", "s2"], slo_p99_ms=400)
    ms = [metrics("s0", 25.0, 0.001), metrics("s1", 25.0, 0.06), metrics("s2", 25.0, 0.001)]
    d = policy.decide(ms, now=100.0)
    targets = {s.stage: s.replicas for s in d.stages}
    assert targets["s1"] >= 2 and targets["s0"] == 1 and targets["s2"] == 1
    assert "λ=" in next(s.reason for s in d.stages if s.stage == "s1")
    # no arrival data at all: hold, never a scale to zero
    fresh = QuartServePolicy(["s0"], slo_p99_ms=400)
    d0 = fresh.decide([ServeStageMetrics("s0", 2, 2, 1, 4, 0.0, 0.0)], now=5.0)
    assert d0.stages[0].replicas == 2


def test_policy_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="stages"):
        QuartServePolicy([], slo_p99_ms=100)
    with pytest.raises(ValueError, match="slo_p99_ms"):
        QuartServePolicy(["s"], slo_p99_ms=0)


def test_window_stats_drop_old_samples() -> None:
    samples = deque([(0.0, 0.1, 0.2), (9.0, 0.1, 0.1), (10.0, 0.3, 0.5)])
    arrivals = deque([0.0, 6.0, 8.0, 9.5])
    out = window_stats(samples, arrivals, now=12.0, window_s=5.0)
    assert len(samples) == 2 and len(arrivals) == 2
    assert out["quart_arrival_rate"] == pytest.approx(2 / 5.0)
    assert out["quart_service_mean_s"] == pytest.approx(0.2)
    assert out["quart_latency_p99_s"] == pytest.approx(0.5)
    assert window_stats(deque(), deque(), now=0.0, window_s=5.0) == {"quart_arrival_rate": 0.0}


def test_window_stats_of_a_backlog_longer_than_the_window() -> None:
    # 5 req/s arrive for 20 s, one 200 ms slot: each finishes ~10 s after it came. The
    # samples of the last 5 s are those that finished in it; the rate counts arrivals.
    arrivals = deque(k * 0.2 for k in range(100))
    samples = deque((t + 10.0, 0.2, 10.0) for t in arrivals if t + 10.0 <= 20.0)
    out = window_stats(samples, arrivals, now=20.0, window_s=5.0)
    assert out["quart_arrival_rate"] == pytest.approx(5.0, rel=0.05)
    assert out["quart_service_mean_s"] == pytest.approx(0.2)
    assert out["quart_latency_p99_s"] == pytest.approx(10.0)


def test_local_cluster_health_check_allows_more_misses_on_a_busy_host() -> None:
    from quartfaas.backends.ray.cluster import fast_health_check

    idle = fast_health_check(0.0)
    assert idle == {"health_check_period_ms": 500, "health_check_failure_threshold": 3}
    # two busy loops on 2 cores beside the tests: load ~1.5 per core
    assert fast_health_check(1.5)["health_check_failure_threshold"] == 8
    assert fast_health_check(100.0)["health_check_failure_threshold"] == 24  # capped
    assert fast_health_check(-1.0)["health_check_failure_threshold"] == 3
    now = fast_health_check()["health_check_failure_threshold"]  # this host's load now
    assert 3 <= now <= 24


class _Remote:
    """``actor.method.remote(*args)`` of a fake actor: an awaitable of ``fn(*args)``."""

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn

    def remote(self, *args: Any) -> Any:
        async def run() -> Any:
            return self.fn(*args)

        return run()


class FakeOwner:
    """A node's ``WeightOwner``: pulls fail for the refs of dead sources."""

    def __init__(self, dead: set[str]) -> None:
        self.dead = dead
        self.calls: list[tuple[str, str]] = []
        self.pull = _Remote(self._pull)
        self.load_file = _Remote(self._load_file)

    def _pull(self, stage: str, remote: list[str]) -> tuple[list[str], int, float]:
        self.calls.append(("pull", remote[0]))
        if remote[0] in self.dead:
            from ray.exceptions import RayError

            raise RayError(f"owner of {remote[0]} died")
        return [f"copy-of-{remote[0]}"], 100, 0.0

    def _load_file(self, stage: str, spec_json: str, index: int) -> tuple[list[str], int, float]:
        self.calls.append(("file", stage))
        return ["from-file"], 100, 0.0


def cache_with_holders(tmp_path: Path, holders: dict[str, str], owner: FakeOwner) -> Any:
    """An ``ObjectStoreCache`` whose nodes ``holders`` (node -> ref) hold stage 0."""
    spec = tiny_bert_spec(tmp_path, name="w", stages=2)
    cache = ObjectStoreCache(spec)
    stage = spec.stages[0].name
    for node in [*holders, "new"]:
        cache.add_node(node, GIB)
    for node, ref in holders.items():  # as a cold load on each would leave them
        cache._held[node] = {stage: _Held([ref], 100)}
        cache._keys[node].admit(stage, 100, 0.0)
    cache._owner = lambda node: owner  # no Ray actors: the fake answers for every node
    return cache, stage


def test_weights_are_pulled_from_an_unsuspected_holder_first(tmp_path: Path) -> None:
    owner = FakeOwner(dead=set())
    cache, stage = cache_with_holders(tmp_path, {"a": "ra", "b": "rb"}, owner)
    tier, refs = asyncio.run(cache.acquire(stage, "new", avoid={"a"}))
    assert tier is StartTier.REMOTE and refs == ["copy-of-rb"]
    assert owner.calls == [("pull", "rb")]


def test_a_dead_source_is_forgotten_and_the_next_holder_or_the_file_gives_the_weights(
    tmp_path: Path,
) -> None:
    owner = FakeOwner(dead={"rb"})
    cache, stage = cache_with_holders(tmp_path, {"a": "ra", "b": "rb"}, owner)
    tier, refs = asyncio.run(cache.acquire(stage, "new", avoid={"a"}))
    assert tier is StartTier.REMOTE and refs == ["copy-of-ra"]  # b failed, a (suspect) gave
    assert owner.calls == [("pull", "rb"), ("pull", "ra")]
    assert "b" not in cache.holders(stage) and stage not in cache.views()["b"].keys
    # every holder dead: the file
    owner2 = FakeOwner(dead={"rx"})
    cache2, stage2 = cache_with_holders(tmp_path / "2", {"x": "rx"}, owner2)
    tier, refs = asyncio.run(cache2.acquire(stage2, "new"))
    assert tier is StartTier.COLD and refs == ["from-file"]
    assert owner2.calls == [("pull", "rx"), ("file", stage2)]


def test_a_suspicion_that_ran_out_is_dropped() -> None:
    """``RayBackend.suspects`` keeps only live suspicions: one whose node outlived it is
    dropped when the suspect set is next read (it used to stay until the node died)."""
    from quartfaas.backends.ray.backend import RayBackend

    backend = object.__new__(RayBackend)  # no Ray: only the clock and the map are read
    now = [100.0]
    backend.clock = lambda: now[0]
    backend.suspects = {"a": 130.0, "b": 90.0}
    assert backend._suspected() == {"a"}
    assert backend.suspects == {"a": 130.0}
    now[0] = 130.0
    assert backend.suspect_nodes() == frozenset()
    assert backend.suspects == {}

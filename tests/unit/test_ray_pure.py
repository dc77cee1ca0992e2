"""Pure parts of the Ray backend (no cluster): node choice, Serve metrics -> snapshot,
the Serve policy's decisions, the replicas' window statistics."""

from __future__ import annotations

from collections import deque

import pytest

pytest.importorskip("ray")

from quartfaas.backends.ray.nodes import LiveReplica, NodeInfo, choose_node
from quartfaas.backends.ray.serve_app import window_stats
from quartfaas.backends.ray.serve_policy import (
    QuartServePolicy,
    ServeStageMetrics,
    stage_snapshot,
)
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

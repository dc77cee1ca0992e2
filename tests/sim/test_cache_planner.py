"""Quart's cache management in the simulator: pre-warm where starts are coming."""

from __future__ import annotations

import numpy as np

from quartfaas.control.placement.cache_plan import CachePlanConfig
from quartfaas.control.registry import make_policy
from quartfaas.sim.cache_planner import burst_probability
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.run import simulate
from quartfaas.workload import Workload


def test_burst_probability_grows_with_cv() -> None:
    assert burst_probability(None) == 0.0
    assert burst_probability(1.0) == 0.0
    assert 0.0 < burst_probability(2.5) < burst_probability(3.5) < 1.0
    assert burst_probability(8.0) == 1.0


def _run(prewarm: bool) -> tuple[dict[str, int], int, int]:
    pipe = pipeline_preset("llama-7b-me-5")
    cluster = cluster_preset("paper")
    arrivals = Workload.parse("mmpp:rate=40,cv=4", seed=3).arrivals(240.0)
    res = simulate(
        pipe, cluster, make_policy("quart-corrector"), np.asarray(arrivals), seed=3,
        cache_planning=CachePlanConfig() if prewarm else None,
    )  # fmt: skip
    tiers = {k.value if hasattr(k, "value") else str(k): v for k, v in res.starts_by_tier.items()}
    return tiers, res.completed, res.rejected


def test_prewarming_turns_cold_starts_into_forks_and_keeps_every_request() -> None:
    plain, done_a, rej_a = _run(False)
    warm, done_b, rej_b = _run(True)
    assert done_a + rej_a == done_b + rej_b  # conservation either way
    starts_plain = sum(plain.values())
    starts_warm = sum(warm.values())
    assert starts_plain > 0 and starts_warm > 0
    fork_share = lambda t, n: t.get("fork", 0) / n  # noqa: E731
    assert fork_share(warm, starts_warm) >= fork_share(plain, starts_plain)

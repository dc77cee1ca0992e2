"""Run a policy once on a small made-up pipeline before its first real tick.

The controller's small loops are numba kernels (``quartfaas/jit.py``), compiled on first
use and then cached on disk: on a fresh install the first Quart tick compiles them (2.8 s
measured on a 2-vCPU host), later processes load them (0.3 s). The live controller ticks
on the gateway's event loop, so that first tick would hold every request for that long;
``warm_up`` makes it happen while a runtime starts, before it serves load.

Pure: ``decide`` on a made-up snapshot, its decision and state thrown away; nothing is
applied and the policy keeps no state of its own (the loop holds it).
"""

from __future__ import annotations

import time

from quartfaas.control.policy import Policy
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, make_stage


def warm_pipeline(now: float = 0.0) -> PipelineSnapshot:
    """Three stages under load, two with Gamma-shaped service (SCV below 1) and one
    exponential, with latencies measured: enough for every part of a Quart tick (plan,
    down-scale threshold, smoother, feedback, compensator) to run."""
    latency = LatencyStats(count=200, mean_s=0.03, p50_s=0.025, p95_s=0.06, p99_s=0.08)
    stages = tuple(
        make_stage(
            f"warm-{i}",
            i,
            min_replicas=1,
            max_replicas=8,
            ready_replicas=2,
            arrival_rate=30.0,
            arrival_cv=1.2,
            departure_rate=30.0,
            service_mean_s=0.02,
            service_scv=scv,
            latency=latency,
            cpu_per_replica=1.0,
            cpu_utilisation=0.9,
        )
        for i, scv in enumerate((0.3, 0.6, 1.0))
    )
    return PipelineSnapshot(
        now=now, pipeline="warm-up", slo_p99_s=0.5, stages=stages, e2e=latency, source="warm-up"
    )


def warm_up(policy: Policy) -> float:
    """Two ticks of ``policy`` on ``warm_pipeline`` (the second one as a feedback tick
    would come); the seconds they took."""
    t0 = time.perf_counter()
    first = warm_pipeline(0.0)
    _, state = policy.decide(first, policy.initial_state(first))
    policy.decide(warm_pipeline(60.0), state)
    return time.perf_counter() - t0


__all__ = ["warm_pipeline", "warm_up"]

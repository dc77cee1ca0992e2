"""Quart in the simulator (issue 12): no flapping at constant load, and the smoother's
forecast sizing a downstream stage before a burst reaches it."""

from __future__ import annotations

import numpy as np
import pytest

from quartfaas.control.config import ControllerConfig
from quartfaas.control.registry import make_policy
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import SimPipeline, SimStage
from quartfaas.sim.run import SimResult, simulate
from quartfaas.workload.synthetic import mmpp, mmpp_for, poisson

CFG = ControllerConfig()


def _stage_p99(r: SimResult, k: int) -> float:
    """p99 of the time in stage ``k`` (queue + service): its finish minus the upstream's."""
    before = r.arrivals if k == 0 else r.stage_finish[k - 1]
    d = r.stage_finish[k] - before
    return float(np.quantile(d[np.isfinite(d)], 0.99))


def _e2e_p99(r: SimResult) -> float:
    return float(np.nanquantile(r.latency_s, 0.99))


@pytest.mark.parametrize(
    ("rate", "confirm_s"), [(20.0, 0.0), (5.0, 0.0), (20.0, 10.0), (5.0, 10.0)]
)
def test_at_most_one_action_per_stage_per_ten_minutes_at_constant_poisson_load(
    rate: float, confirm_s: float
) -> None:
    # At 5 req/s a 10 s window holds ~50 requests: its load and SCVs move by +-40%. The
    # service memory (the default) takes the service time's share of that noise away;
    # the down-scale band (3 standard errors of the load) keeps a stage from scaling down
    # to a count that the next noisy window scales up again. With the defaults (every
    # scale-up at once) and with the up-side noise band (upscale_confirm_s 10 s) no seed
    # of benchmarks/flapping.py moves a stage twice in 10 minutes; with a 2-standard-error
    # down band the defaults moved one twice on 3 of 6 seeds at 5 req/s.
    cfg = CFG.model_copy(update={"upscale_confirm_s": confirm_s})
    stages = tuple(
        SimStage(f"s{k}", k, service_s=s, service_scv=1.0, max_concurrency=1, max_replicas=16)
        for k, s in enumerate((0.1, 0.15, 0.08))
    )
    pipe = SimPipeline("p3", "synthetic", "X-3", stages, slo_p99_s=1.5)
    settle_s, end_s = 600.0, 2400.0  # 10 minutes to settle, then 30 minutes judged
    r = simulate(
        pipe,
        cluster_preset("small"),
        make_policy("quart", cfg, predictor="qna"),
        poisson(rate, end_s, seed=1),
        seed=0,
        controller=cfg,
    )
    for s in stages:
        times = [
            e.time
            for e in r.scale_events
            if e.stage == s.name and e.target != e.current and e.time >= settle_s
        ]
        for start in np.arange(settle_s, end_s - 599.0, 60.0):  # every 10-minute window
            inside = [t for t in times if start <= t < start + 600.0]
            assert len(inside) <= 1, (s.name, start, times)


def test_the_forecast_sizes_downstream_stages_before_the_burst_and_cuts_their_p99() -> None:
    stages = tuple(
        SimStage(f"s{k}", k, service_s=s, service_scv=0.2, max_concurrency=2, max_replicas=16)
        for k, s in enumerate((0.05, 0.08, 0.04))
    )
    pipe = SimPipeline("p3", "synthetic", "X-3", stages, slo_p99_s=1.0)
    arrivals = mmpp(mmpp_for(25.0, 3.0, on_frac=0.3), 300.0, seed=4)
    runs = {}
    for name, pol in (
        ("no-smoother", make_policy("quart", CFG, smoother=False, compensator=False)),
        ("quart", make_policy("quart", CFG, predictor="qna", compensator=False)),
    ):
        runs[name] = simulate(pipe, cluster_preset("small"), pol, arrivals, seed=0, controller=CFG)
    with_sm, without = runs["quart"], runs["no-smoother"]
    # Stage 0 sees the same arrivals either way and nothing forecasts it.
    assert _stage_p99(with_sm, 0) == _stage_p99(without, 0)
    # Stage 1, the first the forecast reaches, is sized before the bursts. Stage 2 is not
    # asserted: a stage 1 that drains bursts faster passes them on to it, so its p99
    # turns on when it scales down between bursts (x0.50 of the no-smoother run's with
    # the window's service time alone, x1.08 with the default service memory, which
    # sees no noisy service peak to hold its second replica for).
    assert _stage_p99(with_sm, 1) < 0.8 * _stage_p99(without, 1)
    assert _e2e_p99(with_sm) < _e2e_p99(without)
    ups = [
        e
        for e in with_sm.scale_events
        if e.stage in ("s1", "s2") and e.target > e.current and "[forecast:" in e.reason
    ]
    assert ups  # replicas added on the forecast, and the reason says so

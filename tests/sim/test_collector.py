"""SimCollector's snapshots against brute-force computations over the engine's records."""

from __future__ import annotations

import numpy as np
import pytest

from quartfaas.clock import FakeClock
from quartfaas.control.snapshot import LatencyStats
from quartfaas.sim.backend import SimBackend
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.collector import SimCollector
from quartfaas.sim.engine import Engine
from quartfaas.sim.pipelines import SimPipeline, SimStage


def _setup() -> tuple[Engine, SimBackend, SimCollector, FakeClock]:
    stages = (
        SimStage("a", 0, service_s=0.08, service_scv=1.0, max_concurrency=1, queue_bound=4),
        SimStage("b", 1, service_s=0.05, service_scv=1.0, max_concurrency=2, queue_bound=50),
    )
    pipe = SimPipeline("p", "synthetic", "TEST-2", stages, slo_p99_s=1.0)
    rng = np.random.default_rng(0)
    n = 3000
    arr = np.cumsum(rng.exponential(1 / 20.0, n))
    work = np.vstack([rng.exponential(0.08, n), rng.exponential(0.05, n)])
    engine = Engine(arr, work, [4, 50])
    clock = FakeClock()
    backend = SimBackend(cluster_preset("small"), pipe, engine, clock)
    backend.deploy_initial("a")
    backend.deploy_initial("a")
    backend.deploy_initial("b")
    return engine, backend, SimCollector(engine, backend, pipe, window_s=10.0), clock


def _cv(t: np.ndarray) -> float | None:
    if t.size < 3:
        return None
    g = np.diff(np.sort(t))
    return float(g.std() / g.mean())


@pytest.mark.parametrize("ticks", [[4.0], [15.0, 22.0, 30.0], [0.5 * i for i in range(1, 61)]])
def test_snapshot_matches_brute_force(ticks: list[float]) -> None:
    e, _backend, col, clock = _setup()
    for now in ticks:
        e.advance(now)
        clock.set(now)
        snap = col.collect(now)
    now = ticks[-1]
    begin = max(0.0, now - 10.0)
    span = now - begin
    assert snap.now == now and snap.source == "sim"
    for k, s in enumerate(snap.stages):
        arrived = e.arrivals if k == 0 else e.finish[k - 1]
        seen = ~np.isnan(arrived) & (arrived < now)
        in_win = seen & (arrived >= begin)
        assert s.arrivals == np.count_nonzero(in_win)
        assert s.arrival_rate == pytest.approx(s.arrivals / span)
        cv = _cv(arrived[in_win])
        assert (s.arrival_cv is None) == (cv is None)
        if cv is not None:
            assert s.arrival_cv == pytest.approx(cv)
        assert s.rejected == np.count_nonzero(in_win & (e.rejected_at == k))
        fin = e.finish[k]
        done = ~np.isnan(fin) & (fin < now) & (fin >= begin)
        svc = (fin - e.start[k])[done]
        assert s.service_mean_s == pytest.approx(svc.mean())
        assert s.service_scv == pytest.approx(svc.var() / svc.mean() ** 2)
        lat = (fin - arrived)[done]
        assert s.latency.count == lat.size
        assert s.latency.p50_s == pytest.approx(np.quantile(lat, 0.5))
        assert s.latency.p99_s == pytest.approx(np.quantile(lat, 0.99))
        assert s.departure_rate == pytest.approx(lat.size / span)
        accepted = seen & (e.rejected_at != k)
        assert s.queue_len == np.count_nonzero(accepted & np.isnan(e.start[k]))
        started = ~np.isnan(e.start[k])
        assert s.in_flight == np.count_nonzero(started & (fin >= now))
        assert (s.ready_replicas, s.starting_replicas) == ((2, 0) if k == 0 else (1, 0))
    last = e.finish[-1]
    done = ~np.isnan(last) & (last < now) & (last >= begin)
    lat = (last - e.arrivals)[done]
    assert snap.e2e.count == lat.size
    assert snap.e2e.p95_s == pytest.approx(np.quantile(lat, 0.95))
    assert snap.e2e.mean_s == pytest.approx(lat.mean())
    assert snap.stages[0].rejected > 0 or len(ticks) == 1  # the small bound does bite


def test_no_data_is_none_not_zero() -> None:
    _, _, col, _ = _setup()
    snap = col.collect(0.0)
    s = snap.stages[1]
    assert s.arrival_rate is None and s.service_mean_s is None and s.arrival_cv is None
    assert snap.e2e.count == 0 and snap.e2e.p99_s is None


def test_collect_refuses_time_travel() -> None:
    e, _, col, _ = _setup()
    e.advance(5.0)
    col.collect(5.0)
    with pytest.raises(ValueError, match="after"):
        col.collect(4.0)
    with pytest.raises(ValueError, match="advance"):
        col.collect(6.0)


@pytest.mark.parametrize("interval", [1.0, 0.5, 0.7])
def test_bucketed_window_equals_the_whole_window_recomputed(interval: float) -> None:
    """The per-bucket path (sim/windowbuckets.py) gives the figures of the full pass."""
    e, backend, fast, clock = _setup()
    slow = SimCollector(e, backend, fast.pipeline, window_s=10.0, buckets=False)
    for i in range(1, 120):
        now = i * interval
        e.advance(now)
        clock.set(now)
        a, b = fast.collect(now), slow.collect(now)
        _same_latency(a.e2e, b.e2e)
        for sa, sb in zip(a.stages, b.stages, strict=True):
            for field in ("arrivals", "rejected", "arrival_rate", "departure_rate"):
                assert getattr(sa, field) == getattr(sb, field)
            for field in ("arrival_cv", "departure_cv", "service_mean_s", "service_scv"):
                x, y = getattr(sa, field), getattr(sb, field)
                assert (x is None) == (y is None)
                if x is not None:
                    assert x == pytest.approx(y, rel=1e-9, abs=1e-12)
            _same_latency(sa.latency, sb.latency)
    if interval == 1.0:  # 10 s is a whole number of 1 s buckets: never the slow path
        assert fast.slow_path_calls == 0


def _same_latency(a: LatencyStats, b: LatencyStats) -> None:
    assert a.count == b.count
    assert (a.p50_s, a.p95_s, a.p99_s) == (b.p50_s, b.p95_s, b.p99_s)  # same order statistics
    if a.count:
        assert a.mean_s == pytest.approx(b.mean_s, rel=1e-12)

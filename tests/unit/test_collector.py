"""InProcessCollector against a fake GatewayView with hand-filled windows (no sleeping)."""

from __future__ import annotations

import asyncio
import statistics
from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import synthetic_spec
from quartfaas.control.snapshot import LatencyStats
from quartfaas.metrics.collector import (
    Collector,
    InProcessCollector,
    _sorted_gap_cv,
    latency_stats,
)
from quartfaas.metrics.gateway_metrics import GatewayMetrics, StageGauges
from quartfaas.metrics.windows import ValueWindow, gap_cv
from quartfaas.spec import PipelineSpec


@dataclass(frozen=True)
class FakeReplica:
    state: str
    cpu: float | None = None


@dataclass
class FakeBackend:
    replicas: dict[str, list[FakeReplica]] = field(default_factory=dict)

    def list_replicas(self, stage: str) -> list[FakeReplica]:
        return self.replicas.get(stage, [])


class FakeGateway:
    """What the collector reads: spec, metrics (real windows), gauges, backend."""

    def __init__(self, spec: PipelineSpec, start: float = 0.0) -> None:
        self.spec = spec
        self.gauge_values = {s.name: StageGauges(0, 0, 0, 0) for s in spec.stages}
        self.metrics = GatewayMetrics(
            spec.name,
            [s.name for s in spec.stages],
            window_s=spec.controller.window_s,
            now=start,
            read_gauges=self.gauges,
        )
        self.backend: FakeBackend | None = FakeBackend()

    def gauges(self) -> dict[str, StageGauges]:
        return dict(self.gauge_values)


def make_spec(n: int = 2, window_s: float = 10.0) -> PipelineSpec:
    return synthetic_spec(
        n,
        name="p",
        stage_overrides={
            0: {"min_replicas": 2, "max_replicas": 7, "max_concurrency": 3, "cpu": 1.5}
        },
        controller={"enabled": False, "window_s": window_s, "interval_s": 1.0},
        slo={"p99_ms": 250.0},
    )


ARRIVALS = [12.0, 12.5, 13.5, 14.0, 16.0, 17.2, 19.0, 21.0]  # window at now=21: (11, 21]
SERVICE = [0.010, 0.020, 0.030, 0.015, 0.025, 0.040, 0.010, 0.050]
LATENCY = [0.020, 0.030, 0.060, 0.025, 0.045, 0.090, 0.015, 0.120]


def filled() -> FakeGateway:
    gw = FakeGateway(make_spec())
    m = gw.metrics.stages["p-s0"]
    m.arrival(5.0)  # outside the window at now=21: must not count
    m.done(5.1, 0.5, 0.4)
    for t, svc, lat in zip(ARRIVALS, SERVICE, LATENCY, strict=True):
        m.arrival(t)
        m.done(t + 0.001, lat, svc)
    e2e = gw.metrics.e2e
    for t, lat in zip(ARRIVALS, LATENCY, strict=True):
        e2e.arrival(t)
        e2e.done(t + 0.002, 2 * lat)
    gw.gauge_values["p-s0"] = StageGauges(queue_len=5, inflight=3, ready=2, starting=1)
    assert gw.backend is not None
    gw.backend.replicas["p-s0"] = [
        FakeReplica("ready", 1.5),
        FakeReplica("ready", 1.5),
        FakeReplica("starting", 1.5),
        FakeReplica("draining", 1.5),
    ]
    return gw


def nearest(values: list[float], q: float) -> float:
    return float(np.quantile(np.asarray(values), q, method="inverted_cdf"))


def test_fields_come_from_the_windows_gauges_backend_and_spec() -> None:
    gw = filled()
    snap = InProcessCollector(gw).snapshot(21.5)
    s = snap.stage("p-s0")
    assert (s.name, s.index) == ("p-s0", 0)
    assert (s.min_replicas, s.max_replicas, s.max_concurrency) == (2, 7, 3)
    assert s.cpu_per_replica == 1.5
    assert (s.ready_replicas, s.starting_replicas, s.draining_replicas) == (2, 1, 1)
    assert (s.queue_len, s.in_flight) == (5, 3)
    assert s.arrivals == 8
    assert s.arrival_rate == pytest.approx(8 / 10.0)
    assert s.arrival_cv == pytest.approx(
        float(np.std(np.diff(ARRIVALS)) / np.mean(np.diff(ARRIVALS)))
    )
    assert s.departure_rate == pytest.approx(8 / 10.0)
    assert s.departure_cv == pytest.approx(s.arrival_cv)
    assert s.service_mean_s == pytest.approx(statistics.fmean(SERVICE))
    assert s.service_scv == pytest.approx(
        statistics.pvariance(SERVICE) / statistics.fmean(SERVICE) ** 2
    )
    assert s.latency.count == 8
    assert s.latency.mean_s == pytest.approx(statistics.fmean(LATENCY))
    assert s.latency.p50_s == nearest(LATENCY, 0.5)
    assert s.latency.p95_s == nearest(LATENCY, 0.95)
    assert s.latency.p99_s == max(LATENCY)
    assert s.cpu_utilisation is None
    assert snap.e2e.count == 8 and snap.e2e.p99_s == pytest.approx(2 * max(LATENCY))
    assert (snap.pipeline, snap.slo_p99_s, snap.window_s) == ("p", 0.25, 10.0)
    assert (snap.data_age_s, snap.source, snap.note) == (0.0, "in-process", "")
    assert snap.has_data


def test_no_data_gives_none_not_zero() -> None:
    gw = FakeGateway(make_spec(), start=100.0)
    c = InProcessCollector(gw)
    s = c.snapshot(100.0).stage("p-s1")  # nothing observed yet: no time, no samples
    assert s.arrival_rate is None and s.departure_rate is None
    later = c.snapshot(105.0)
    s = later.stage("p-s1")
    # 5 s observed without a request: the rate is a measured 0, everything else unknown.
    assert s.arrival_rate == 0.0 and s.departure_rate == 0.0
    assert s.arrival_cv is None and s.departure_cv is None
    assert s.service_mean_s is None and s.service_scv is None
    assert s.latency == LatencyStats()
    assert later.e2e == LatencyStats()
    assert s.arrivals == 0 and s.cpu_per_replica == 1.0


def test_two_arrivals_have_a_rate_but_no_cv() -> None:
    gw = FakeGateway(make_spec())
    m = gw.metrics.stages["p-s1"]
    m.arrival(1.0)
    m.arrival(2.0)
    s = InProcessCollector(gw).snapshot(4.0).stage("p-s1")
    assert s.arrival_rate == pytest.approx(2 / 4.0)  # young window: over the 4 s observed
    assert s.arrival_cv is None


def test_without_backend_draining_is_zero_and_cpu_from_spec() -> None:
    gw = filled()
    gw.backend = None
    s = InProcessCollector(gw).snapshot(21.5).stage("p-s0")
    assert s.draining_replicas == 0 and s.cpu_per_replica == 1.5
    assert s.ready_replicas == 2  # from the dispatcher gauges


def test_resized_replicas_report_their_cpu() -> None:
    gw = filled()
    assert gw.backend is not None
    gw.backend.replicas["p-s0"] = [FakeReplica("ready", 0.5), FakeReplica("starting", None)]
    assert InProcessCollector(gw).snapshot(21.5).stage("p-s0").cpu_per_replica == 0.5


def test_rejected_and_errors_are_windowed_between_collects() -> None:
    gw = FakeGateway(make_spec(window_s=10.0))
    m = gw.metrics.stages["p-s0"]
    c = InProcessCollector(gw)
    for _ in range(3):
        m.failed(429, 0.001)
    m.failed(504, 1.0)
    s = c.snapshot(1.0).stage("p-s0")
    assert (s.rejected, s.errors) == (3, 1)  # no earlier reading: totals since start
    m.failed(429, 0.001)
    s = c.snapshot(6.0).stage("p-s0")
    assert (s.rejected, s.errors) == (4, 1)
    m.failed(502, 0.5)
    # Baseline: the reading at t=1 (<= 12 - 10); only what came after it counts.
    s = c.snapshot(12.0).stage("p-s0")
    assert (s.rejected, s.errors) == (1, 1)
    # Nothing new for longer than the window: back to zero.
    s = c.snapshot(30.0).stage("p-s0")
    assert (s.rejected, s.errors) == (0, 0)


def test_collect_is_the_async_form_and_matches_the_protocol() -> None:
    gw = filled()
    c = InProcessCollector(gw)
    assert isinstance(c, Collector)
    snap = asyncio.run(c.collect(21.5))
    assert snap.stage("p-s0").arrivals == 8


def test_the_real_gateway_is_a_gateway_view() -> None:
    from quartfaas.dataplane.gateway import Gateway

    spec = make_spec()
    gw = Gateway(spec)  # no server started: the collector only reads
    snap = InProcessCollector(gw).snapshot(gw.clock.now())
    assert [s.name for s in snap.stages] == ["p-s0", "p-s1"]
    assert snap.stage("p-s0").ready_replicas == 0
    assert snap.stage("p-s0").min_replicas == 2


@settings(max_examples=60, deadline=None)
@given(
    # No values below 1e-9: windows._scv divides by mean², which underflows (reported).
    st.lists(st.just(0.0) | st.floats(1e-9, 10.0), min_size=0, max_size=300),
    st.sampled_from(["nearest", "linear"]),
)
def test_latency_stats_equal_the_window_stats(values: list[float], method: str) -> None:
    w = ValueWindow(100.0, method=method)  # type: ignore[arg-type]
    for i, v in enumerate(values):
        w.append(float(i) * 0.01, v)
    now = len(values) * 0.01
    ref = w.stats(now)
    got = latency_stats(w, now)
    assert got.count == ref.count
    for a, b in [
        (got.mean_s, ref.mean),
        (got.p50_s, ref.p50),
        (got.p95_s, ref.p95),
        (got.p99_s, ref.p99),
    ]:
        assert (a is None and b is None) or a == pytest.approx(b, rel=1e-12, abs=1e-15)


def test_service_scv_of_a_tiny_mean_is_none_not_a_crash() -> None:
    gw = FakeGateway(make_spec())
    gw.metrics.stages["p-s0"].done(1.0, 1e-3, 1e-200)
    s = InProcessCollector(gw).snapshot(2.0).stage("p-s0")
    assert s.service_mean_s == pytest.approx(1e-200) and s.service_scv is None


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0.0, 1e4, allow_nan=False), min_size=0, max_size=200))
def test_sorted_gap_cv_equals_gap_cv(times: list[float]) -> None:
    t = np.sort(np.asarray(times, dtype=np.float64))
    ref = gap_cv(t)
    got = _sorted_gap_cv(t)
    if ref is None:
        assert got is None
    else:
        assert got == pytest.approx(ref, rel=1e-6, abs=1e-9)


def test_a_64_stage_collect_with_full_windows_reads_every_window() -> None:
    """64 stages, 1000 events per 10 s window in each window of every stage. (Its cost is
    ``benchmarks/collect_cost.py``'s: speed targets live in benchmarks.)"""
    n, window_s, per_window = 64, 10.0, 1000
    gw = FakeGateway(make_spec(n, window_s=window_s))
    rng = np.random.default_rng(0)
    ts = np.sort(rng.uniform(0.0, 2 * window_s, 2 * per_window)).tolist()
    vals = rng.exponential(0.02, ts.__len__()).tolist()
    for m in [*gw.metrics.stages.values(), gw.metrics.e2e]:
        for t, v in zip(ts, vals, strict=True):
            m.arrivals.append(t)
            m.departures.append(t)
            m.service_s.append(t, v)
            m.latency_s.append(t, v)
    c = InProcessCollector(gw)
    now = 2 * window_s
    snap = c.snapshot(now)
    in_window = sum(1 for t in ts if now - window_s < t <= now)
    for s in snap.stages:
        assert s.arrivals == in_window
        assert s.latency.count == in_window
    assert snap.e2e.count == in_window
    again = c.snapshot(now + 1e-6)
    assert again.stages == snap.stages

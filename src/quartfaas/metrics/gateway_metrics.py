"""The gateway's metrics: per-stage controller inputs, next to the OpenFaaS series.

One ``CollectorRegistry`` per gateway (never the global one), so tests and several
gateways in one process do not mix. The OpenFaaS ``gateway_*`` families count calls from
outside the gateway only and are ``metrics/openfaas_series.InvocationSeries``, which the
gateway registers in this registry (it knows the namespace and the desired replicas).
Here, labelled by ``stage``:

- ``quartfaas_stage_arrivals_total{stage}``, ``quartfaas_stage_requests_total{stage,code}``,
  ``quartfaas_stage_latency_seconds{stage,code}``: every stage visit, pipeline hops
  included (``openfaas_series.StageHopSeries``), what the PromQL collector reads
- ``quartfaas_stage_queue_length{stage}`` / ``quartfaas_stage_inflight{stage}`` /
  ``quartfaas_stage_ready_replicas{stage}`` / ``quartfaas_stage_starting_replicas{stage}``
  gauges read at scrape time (no cost on the request path)
- ``quartfaas_stage_service_seconds{stage}`` histogram (worker compute time)
- ``quartfaas_stage_arrival_cv{stage}`` gauge (inter-arrival CV over the window)
- ``quartfaas_replica_start_seconds{stage,tier}`` histogram, and
  ``quartfaas_param_cache_hits_total{stage}`` / ``..._misses_total{stage}`` counters

The pipeline's own end-to-end window (``e2e``) feeds no stage series. Each stage also
keeps time-keyed windows (``metrics/windows.py``) that the in-process collector reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

from quartfaas.metrics.openfaas_series import StageHopSeries
from quartfaas.metrics.windows import EventWindow, ValueWindow

LATENCY_BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5,
    0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip
START_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


@dataclass(frozen=True, slots=True)
class StageGauges:
    queue_len: int
    inflight: int
    ready: int
    starting: int


class _ScrapeGauges(Collector):
    """Gauges computed when Prometheus scrapes, from the dispatcher's live state."""

    def __init__(
        self,
        read: Callable[[], dict[str, StageGauges]],
        cv: Callable[[], dict[str, float | None]],
    ) -> None:
        self._read = read
        self._cv = cv

    def describe(self) -> Iterator[Metric]:
        return iter(())  # values exist only at scrape time

    def collect(self) -> Iterator[Metric]:
        stages = self._read()
        families = {
            "queue_length": ("Requests waiting for a replica slot", "queue_len"),
            "inflight": ("Requests being served by replicas", "inflight"),
            "ready_replicas": ("Replicas ready to serve", "ready"),
            "starting_replicas": ("Replicas being started", "starting"),
        }
        for suffix, (doc, attr) in families.items():
            g = GaugeMetricFamily(f"quartfaas_stage_{suffix}", doc, labels=["stage"])
            for name, v in stages.items():
                g.add_metric([name], float(getattr(v, attr)))
            yield g
        cvg = GaugeMetricFamily(
            "quartfaas_stage_arrival_cv", "Inter-arrival CV over the window", labels=["stage"]
        )
        for name, cv in self._cv().items():
            if cv is not None:
                cvg.add_metric([name], cv)
        yield cvg


class StageMetrics:
    """Per-stage instruments with label children resolved once (cheap on the hot path)."""

    def __init__(self, gm: GatewayMetrics, stage: str, window_s: float, now: float) -> None:
        self.stage = stage
        is_stage = stage in gm.stage_names
        self._service = gm.service.labels(stage=stage) if is_stage else None
        self._hops = gm.hops if is_stage else None
        self.arrivals = EventWindow(window_s, start=now)
        self.departures = EventWindow(window_s, start=now)
        self.service_s = ValueWindow(window_s)
        self.latency_s = ValueWindow(window_s)
        self.wait_s = ValueWindow(window_s)
        self.invocations = 0
        self.last_at: float | None = None
        self.finished: dict[int, int] = {}
        self.rejected = 0
        self.errors = 0

    def arrival(self, t: float) -> None:
        self.invocations += 1
        self.last_at = t
        self.arrivals.append(t)
        if self._hops is not None:
            self._hops.arrived(self.stage)

    def done(
        self,
        t: float,
        latency_s: float,
        service_s: float | None = None,
        wait_s: float | None = None,
    ) -> None:
        self.finished[200] = self.finished.get(200, 0) + 1
        if self._hops is not None:
            self._hops.finished(self.stage, 200, latency_s)
        self.departures.append(t)
        self.latency_s.append(t, latency_s)
        if service_s is not None and self._service is not None:
            self._service.observe(service_s)
            self.service_s.append(t, service_s)
        if wait_s is not None:
            self.wait_s.append(t, wait_s)

    def failed(self, code: int, latency_s: float) -> None:
        self.finished[code] = self.finished.get(code, 0) + 1
        if self._hops is not None:
            self._hops.finished(self.stage, code, latency_s)
        if code == 429:
            self.rejected += 1
        else:
            self.errors += 1


class GatewayMetrics:
    """Every series the gateway exports, in its own registry."""

    def __init__(
        self,
        pipeline: str,
        stages: list[str],
        *,
        window_s: float,
        now: float,
        read_gauges: Callable[[], dict[str, StageGauges]],
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.stage_names = set(stages)
        self.hops = StageHopSeries(registry=r)
        self.service = Histogram(
            "quartfaas_stage_service_seconds", "Worker compute time per request", ["stage"],
            registry=r, buckets=LATENCY_BUCKETS,
        )  # fmt: skip
        self.replica_start = Histogram(
            "quartfaas_replica_start_seconds", "From start request to replica ready",
            ["stage", "tier"], registry=r, buckets=START_BUCKETS,
        )  # fmt: skip
        self.cache_hits = Counter(
            "quartfaas_param_cache_hits", "Replica starts served from host memory", ["stage"],
            registry=r,
        )  # fmt: skip
        self.cache_misses = Counter(
            "quartfaas_param_cache_misses", "Replica starts that loaded weights", ["stage"],
            registry=r,
        )  # fmt: skip
        self.pipeline = pipeline
        self.stages = {s: StageMetrics(self, s, window_s, now) for s in stages}
        self.e2e = StageMetrics(self, pipeline, window_s, now)
        r.register(_ScrapeGauges(read_gauges, self._cvs))
        self._now = now

    def functions(self) -> list[StageMetrics]:
        return [self.e2e, *self.stages.values()]

    def set_now(self, now: float) -> None:
        """The time scrape-time gauges (arrival CV) are evaluated at."""
        self._now = now

    def _cvs(self) -> dict[str, float | None]:
        return {name: m.arrivals.cv(self._now) for name, m in self.stages.items()}

    def replica_started(self, stage: str, tier: str, seconds: float, hit: bool) -> None:
        self.replica_start.labels(stage=stage, tier=tier).observe(seconds)
        (self.cache_hits if hit else self.cache_misses).labels(stage=stage).inc()

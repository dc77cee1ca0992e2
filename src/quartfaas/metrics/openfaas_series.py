"""The ``gateway_*`` series exactly as upstream's gateway exports them, for external calls.

Upstream (openfaas/faas ``gateway/metrics/metrics.go`` lines 47-88, ``exporter.go`` lines
54-77, ``gateway/handlers/notifiers.go`` lines 38-61):

- ``gateway_function_invocation_started{function_name}``: counter, exported under that
  exact name (no ``_total``), one per call started;
- ``gateway_function_invocation_total{function_name,code}``: counter, one per call
  finished, with its HTTP status;
- ``gateway_functions_seconds{function_name,code}``: histogram of the call's duration;
- ``gateway_service_count{function_name}``: gauge of each function's *desired* replicas
  (``FunctionStatus.replicas``, read from the provider's function list);
- ``function_name`` is ``name.namespace`` whenever the gateway has a namespace.

These count calls from *outside* the gateway only: a pipeline call is one call of the
pipeline, not one per stage. Stage visits, pipeline hops included, are counted by
``StageHopSeries`` as ``quartfaas_stage_*`` series, which the controller's PromQL
collector (``metrics/prometheus.py``) must read instead of ``gateway_*`` once wired.
Calls to unknown functions are counted with their status, as upstream's proxy counts whatever it
forwarded; to keep a scan of random names from growing the series without bound, at
most ``max_unknown`` distinct unknown names are kept and the rest share one label.

prometheus_client appends ``_total`` to every counter it exports, so the started counter
is emitted with its samples under the bare name and ``render`` rewrites its two
comment lines; ``FunctionStatus.invocationCount`` is ``invocation_count`` (upstream sums
``gateway_function_invocation_total`` over codes, ``gateway/metrics/add_metrics.go``
lines 59 and 92).
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

STARTED = "gateway_function_invocation_started"
OTHER_UNKNOWN = "_other_unknown"
#: Upstream uses client_golang's default buckets; these hold every one of them
#: (.005 ... 10) plus finer ones below 5 ms, where quartfaas' hops live.
BUCKETS = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.35, 0.5,
    0.75, 1.0, 1.5, 2.5, 5.0, 10.0, 30.0,
)  # fmt: skip


class _Histogram:
    """Cumulative-on-export bucket counts, sum and count (cheap ints on the hot path)."""

    __slots__ = ("count", "counts", "sum")

    def __init__(self, n_buckets: int) -> None:
        self.counts = [0] * (n_buckets + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0


class CallCounts:
    """Calls started and finished per name and status, with a latency histogram each."""

    def __init__(self, buckets: Sequence[float] = BUCKETS) -> None:
        self.buckets = tuple(buckets)
        self.started: dict[str, int] = {}
        self.finished: dict[tuple[str, int], int] = {}
        self.seconds: dict[tuple[str, int], _Histogram] = {}

    def start(self, name: str) -> None:
        self.started[name] = self.started.get(name, 0) + 1

    def finish(self, name: str, code: int, seconds: float) -> None:
        key = (name, code)
        self.finished[key] = self.finished.get(key, 0) + 1
        h = self.seconds.get(key)
        if h is None:
            h = self.seconds[key] = _Histogram(len(self.buckets))
        h.counts[bisect.bisect_left(self.buckets, seconds)] += 1
        h.sum += seconds
        h.count += 1

    def finished_count(self, name: str) -> int:
        return sum(n for (f, _), n in self.finished.items() if f == name)

    def histogram(self, family: HistogramMetricFamily, label: Callable[[str], str]) -> None:
        for (fn, code), h in sorted(self.seconds.items()):
            cumulative, acc = [], 0
            for bound, n in zip((*self.buckets, float("inf")), h.counts, strict=True):
                acc += n
                cumulative.append((_bound(bound), float(acc)))
            family.add_metric([label(fn), str(code)], cumulative, h.sum)


class InvocationSeries(Collector):
    """The four OpenFaaS families, registered in the gateway's own registry."""

    def __init__(
        self,
        label: Callable[[str], str],
        known: Callable[[], Sequence[str]],
        desired_replicas: Callable[[], Mapping[str, int]],
        *,
        buckets: Sequence[float] = BUCKETS,
        max_unknown: int = 100,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self._label = label
        self._known = known
        self._desired = desired_replicas
        self.max_unknown = max_unknown
        self.calls = CallCounts(buckets)
        self._unknown: set[str] = set()
        if registry is not None:
            registry.register(self)

    def _name(self, function: str) -> str:
        if function in self._known() or function in self._unknown:
            return function
        if len(self._unknown) < self.max_unknown:
            self._unknown.add(function)
            return function
        return OTHER_UNKNOWN

    def started(self, function: str) -> None:
        self.calls.start(self._name(function))

    def finished(self, function: str, code: int, seconds: float) -> None:
        self.calls.finish(self._name(function), code, seconds)

    def invocation_count(self, function: str) -> int:
        """Calls of ``function`` finished, all codes (``FunctionStatus.invocationCount``)."""
        return self.calls.finished_count(function)

    def describe(self) -> Iterator[Metric]:
        return iter(())  # built at scrape time

    def collect(self) -> Iterator[Metric]:
        label = self._label
        started = Metric(STARTED, "The total number of function HTTP requests started.", "counter")
        for fn, n in sorted(self.calls.started.items()):
            started.add_sample(STARTED, {"function_name": label(fn)}, float(n))
        yield started
        total = CounterMetricFamily(
            "gateway_function_invocation", "Function metrics", labels=["function_name", "code"]
        )
        for (fn, code), n in sorted(self.calls.finished.items()):
            total.add_metric([label(fn), str(code)], float(n))
        yield total
        hist = HistogramMetricFamily(
            "gateway_functions_seconds", "Function time taken", labels=["function_name", "code"]
        )
        self.calls.histogram(hist, label)
        yield hist
        svc = GaugeMetricFamily(
            "gateway_service_count", "Current count of replicas for function",
            labels=["function_name"],
        )  # fmt: skip
        for fn, n in self._desired().items():
            svc.add_metric([label(fn)], float(n))
        yield svc


class StageHopSeries(Collector):
    """Every stage visit, pipeline hops included: what the controller's PromQL reads.

    Once ``gateway_*`` count external calls only, per-stage arrival and completion
    rates and latencies come from these (``{stage}`` labelled, like the other
    ``quartfaas_stage_*`` series): ``quartfaas_stage_arrivals_total{stage}``,
    ``quartfaas_stage_requests_total{stage,code}`` and the histogram
    ``quartfaas_stage_latency_seconds{stage,code}`` (queue + hop + service).
    """

    def __init__(
        self,
        *,
        buckets: Sequence[float] = BUCKETS,
        registry: CollectorRegistry | None = None,
    ) -> None:
        self.calls = CallCounts(buckets)
        if registry is not None:
            registry.register(self)

    def arrived(self, stage: str) -> None:
        self.calls.start(stage)

    def finished(self, stage: str, code: int, seconds: float) -> None:
        self.calls.finish(stage, code, seconds)

    def describe(self) -> Iterator[Metric]:
        return iter(())

    def collect(self) -> Iterator[Metric]:
        arrivals = CounterMetricFamily(
            "quartfaas_stage_arrivals", "Requests that reached a stage's queue", labels=["stage"]
        )
        for stage, n in sorted(self.calls.started.items()):
            arrivals.add_metric([stage], float(n))
        yield arrivals
        done = CounterMetricFamily(
            "quartfaas_stage_requests", "Stage visits finished, by status",
            labels=["stage", "code"],
        )  # fmt: skip
        for (stage, code), n in sorted(self.calls.finished.items()):
            done.add_metric([stage, str(code)], float(n))
        yield done
        hist = HistogramMetricFamily(
            "quartfaas_stage_latency_seconds", "Time in a stage: queue, hop and service",
            labels=["stage", "code"],
        )  # fmt: skip
        self.calls.histogram(hist, lambda s: s)
        yield hist


def _bound(b: float) -> str:
    return "+Inf" if b == float("inf") else repr(float(b))


def render(registry: CollectorRegistry) -> bytes:
    """The registry in the Prometheus text format, with the started counter named as
    upstream names it (prometheus_client would call its family ``..._started_total``)."""
    text = generate_latest(registry)
    wrong = (STARTED + "_total ").encode()
    return text.replace(b"# HELP " + wrong, b"# HELP " + STARTED.encode() + b" ").replace(
        b"# TYPE " + wrong, b"# TYPE " + STARTED.encode() + b" "
    )

"""Collectors: build the controller's ``PipelineSnapshot`` from measurements.

The control loop (``control/loop.py::run_live``) awaits ``collect(now)`` once per tick; a
``Collector`` is anything with that method. Two live implementations exist:

- ``InProcessCollector`` (here, the embedded default) reads the gateway's own time-keyed
  windows (``metrics/windows.py``, filled by ``metrics/gateway_metrics.py`` on the request
  path) and its live dispatcher gauges. No HTTP, no parsing: one tick is a handful of numpy
  reductions per stage.
- ``PrometheusCollector`` (``metrics/prometheus.py``) asks a Prometheus server with PromQL.

The simulator has its own (``sim/collector.py``) with the same field semantics.

``metrics/`` must not import ``dataplane/``, ``backends/`` or ``sim/``, so the gateway is
seen through the ``GatewayView`` protocol below; ``dataplane.gateway.Gateway`` satisfies it
structurally (``spec``, ``metrics``, ``gauges()``, ``backend.list_replicas(stage)``).

Field semantics (shared with the simulator's collector):

* rates, CVs, service and latency statistics are over the window ``(now - window_s, now]``
  of the gateway's windows (a young gateway: since it started);
* ``arrival_rate`` is ``0.0`` for an observed idle stage and ``None`` only before any time
  has been observed; CVs need three events, statistics one sample, else ``None``;
* ``arrivals`` counts arrivals in the window; ``rejected`` (429) and ``errors`` (other
  failures) are *windowed* by differencing the gateway's totals between collects: they cover
  ``(t_base, now]`` where ``t_base`` is the newest earlier collect at or before
  ``now - window_s`` (so up to one tick longer than the window); until the collector has
  such a reading they are the totals since the gateway started;
* ready/starting replicas come from the dispatcher (what requests can use), draining ones
  and the CPU per replica from the backend's replica list (the spec's CPU when unknown);
* ``cpu_utilisation`` is not measured in-process and stays ``None``.

``note`` is empty unless something is degraded; ``data_age_s`` is ``0.0`` (live data).

Cost: each window is copied once per tick (``windows.py`` queries copy their deques into
numpy, which dominates with full windows); quantiles use one ``np.partition`` and the CVs
reuse the sorted copy. ``test_collect_cost_for_64_stages_with_full_windows`` (in
``tests/unit/test_collector.py``, marked slow) measures a 64-stage tick.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import numpy as np
import numpy.typing as npt

from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, StageSnapshot
from quartfaas.metrics.gateway_metrics import GatewayMetrics, StageGauges, StageMetrics
from quartfaas.metrics.windows import ValueWindow
from quartfaas.spec import PipelineSpec

DRAINING = "draining"  # ReplicaState.DRAINING's value (a StrEnum compares equal to it)


@runtime_checkable
class Collector(Protocol):
    """What ``run_live`` awaits each tick. Never raises for missing data: it is a value."""

    async def collect(self, now: float) -> PipelineSnapshot: ...


class ReplicaLike(Protocol):
    """The parts of ``control.backend.ReplicaInfo`` a collector reads."""

    @property
    def state(self) -> str: ...

    @property
    def cpu(self) -> float | None: ...


class ReplicaLister(Protocol):
    """The read-only part of the ``Backend`` protocol."""

    def list_replicas(self, stage: str) -> Sequence[ReplicaLike]: ...


class GatewayView(Protocol):
    """What the in-process collector needs from a gateway (``dataplane.gateway.Gateway``)."""

    @property
    def spec(self) -> PipelineSpec: ...

    @property
    def metrics(self) -> GatewayMetrics: ...

    @property
    def backend(self) -> ReplicaLister | None: ...

    def gauges(self) -> dict[str, StageGauges]: ...


_QS = (0.5, 0.95, 0.99)


def _nearest_rank_index(n: int, q: float) -> int:
    """numpy's ``inverted_cdf`` index, with its exact float steps (so results are identical)."""
    idx = n * q - 1.0
    prev = math.floor(idx)
    k = prev if idx - prev == 0 else prev + 1
    return max(int(k), 0)


def latency_stats(window: ValueWindow, now: float) -> LatencyStats:
    """Count, mean and p50/p95/p99 of a latency window (``LatencyStats()`` when empty).

    Equal to ``window.stats(now)``; for the nearest-rank method one ``np.partition`` finds
    the three quantiles, several times cheaper than ``np.quantile`` on small windows.
    """
    if window.method != "nearest":
        s = window.stats(now)
        if s.count == 0:
            return LatencyStats()
        return LatencyStats(count=s.count, mean_s=s.mean, p50_s=s.p50, p95_s=s.p95, p99_s=s.p99)
    v = window.values(now)
    n = int(v.size)
    if n == 0:
        return LatencyStats()
    ks = [_nearest_rank_index(n, q) for q in _QS]
    part = np.partition(v, sorted(set(ks)))
    p50, p95, p99 = (float(part[k]) for k in ks)
    return LatencyStats(count=n, mean_s=float(v.sum()) / n, p50_s=p50, p95_s=p95, p99_s=p99)


def _sorted_gap_cv(t: npt.NDArray[np.float64]) -> float | None:
    """``windows.gap_cv`` (ddof=0, at least 2 gaps) of an already sorted array, cheaply."""
    n = t.size - 1
    if n < 2:
        return None
    mean = float(t[-1] - t[0]) / n  # the gaps of sorted times telescope
    if mean <= 0.0:
        return None
    d = np.diff(t)
    d -= mean
    return math.sqrt(float(np.dot(d, d)) / n) / mean


def _mean_scv(v: npt.NDArray[np.float64]) -> tuple[float | None, float | None]:
    """Mean and squared CV (ddof=0) as ``windows._scv``; ``None`` where undefined."""
    n = v.size
    if not n:
        return None, None
    mean = float(v.sum()) / n
    sq = mean * mean
    if sq == 0.0:  # a zero (or subnormal: its square underflows) mean has no SCV
        return mean, None
    d = v - mean
    return mean, float(np.dot(d, d)) / n / sq


class _WindowedTotals:
    """Differences of monotone totals (one row per stage) over about ``window_s``.

    Readings are taken at collects; the baseline is the newest reading at or before
    ``now - window_s``. Without one yet the baseline is zero (totals since start).
    """

    def __init__(self, window_s: float, n_rows: int, n_cols: int) -> None:
        self._window_s = window_s
        self._shape = (n_rows, n_cols)
        self._hist: deque[tuple[float, npt.NDArray[np.int64]]] = deque()

    def update(self, now: float, totals: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
        hist = self._hist
        horizon = now - self._window_s
        while len(hist) >= 2 and hist[1][0] <= horizon:
            hist.popleft()
        if hist and hist[0][0] <= horizon:
            base = hist[0][1]
        else:
            base = np.zeros(self._shape, dtype=np.int64)
        if not hist or now > hist[-1][0]:
            hist.append((now, totals))
        # A counter never decreases; max() guards against a gateway restart resetting it.
        return np.maximum(totals - base, 0)


class InProcessCollector:
    """Snapshots from a gateway in the same process. ``now`` must be the gateway's clock."""

    source = "in-process"

    def __init__(
        self,
        gateway: GatewayView,
        *,
        cpu_utilisation: Callable[[str, float], float | None] | None = None,
    ) -> None:
        """``cpu_utilisation(stage, now)``: cores used per replica / its CPU share, if known."""
        self.gateway = gateway
        self._cpu_util = cpu_utilisation
        spec = gateway.spec
        self.spec = spec
        self.window_s = spec.controller.window_s
        self._slo_p99_s = spec.slo.p99_ms / 1000.0
        self._names = [s.name for s in spec.stages]
        self._totals = _WindowedTotals(self.window_s, len(self._names), 2)

    async def collect(self, now: float) -> PipelineSnapshot:
        return self.snapshot(now)

    def snapshot(self, now: float) -> PipelineSnapshot:
        """The snapshot at ``now`` (synchronous: no I/O, safe on the gateway's event loop)."""
        gw = self.gateway
        metrics = gw.metrics
        gauges = gw.gauges()
        backend = gw.backend
        per_stage = [metrics.stages[name] for name in self._names]
        totals = np.array([(m.rejected, m.errors) for m in per_stage], dtype=np.int64)
        windowed = self._totals.update(now, totals)
        stages = []
        for i, (spec_stage, m) in enumerate(zip(self.spec.stages, per_stage, strict=True)):
            g = gauges.get(spec_stage.name)
            draining, cpu = 0, spec_stage.cpu
            if backend is not None:
                draining, cpu = _replica_facts(backend.list_replicas(spec_stage.name), cpu)
            stages.append(
                _stage(
                    m,
                    now,
                    index=i,
                    gauges=g,
                    draining=draining,
                    cpu=cpu,
                    min_replicas=spec_stage.min_replicas,
                    max_replicas=spec_stage.max_replicas,
                    max_concurrency=spec_stage.max_concurrency,
                    rejected=int(windowed[i, 0]),
                    errors=int(windowed[i, 1]),
                    cpu_utilisation=(
                        self._cpu_util(spec_stage.name, now) if self._cpu_util else None
                    ),
                )
            )
        return PipelineSnapshot(
            now=now,
            pipeline=self.spec.name,
            slo_p99_s=self._slo_p99_s,
            stages=tuple(stages),
            e2e=latency_stats(metrics.e2e.latency_s, now),
            window_s=self.window_s,
            data_age_s=0.0,
            source=self.source,
        )


def _replica_facts(replicas: Sequence[ReplicaLike], spec_cpu: float) -> tuple[int, float]:
    """(draining count, CPU per live replica). CPU: the largest reported, else the spec's."""
    draining = 0
    cpu: float | None = None
    for r in replicas:
        if r.state == DRAINING:
            draining += 1
        elif r.cpu is not None and (cpu is None or r.cpu > cpu):
            # Replicas of a stage are resized together; during a resize the largest
            # value is the one the controller asked for last.
            cpu = r.cpu
    return draining, spec_cpu if cpu is None else cpu


def _stage(
    m: StageMetrics,
    now: float,
    *,
    index: int,
    gauges: StageGauges | None,
    draining: int,
    cpu: float,
    min_replicas: int,
    max_replicas: int,
    max_concurrency: int,
    rejected: int,
    errors: int,
    cpu_utilisation: float | None = None,
) -> StageSnapshot:
    # One copy of each window per tick: rate, count and CV come from the same array.
    arr = m.arrivals.timestamps(now)
    arr_span = m.arrivals.span(now)
    dep = m.departures.timestamps(now)
    dep_span = m.departures.span(now)
    svc_mean, svc_scv = _mean_scv(m.service_s.values(now))
    return StageSnapshot(
        name=m.stage,
        index=index,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        max_concurrency=max_concurrency,
        ready_replicas=gauges.ready if gauges else 0,
        starting_replicas=gauges.starting if gauges else 0,
        draining_replicas=draining,
        queue_len=gauges.queue_len if gauges else 0,
        in_flight=gauges.inflight if gauges else 0,
        arrival_rate=arr.size / arr_span if arr_span > 0 else None,
        arrival_cv=_sorted_gap_cv(arr),
        departure_rate=dep.size / dep_span if dep_span > 0 else None,
        departure_cv=_sorted_gap_cv(dep),
        service_mean_s=svc_mean,
        service_scv=svc_scv,
        latency=latency_stats(m.latency_s, now),
        wait=latency_stats(m.wait_s, now),
        arrivals=int(arr.size),
        rejected=rejected,
        errors=errors,
        cpu_per_replica=cpu,
        cpu_utilisation=cpu_utilisation,
    )

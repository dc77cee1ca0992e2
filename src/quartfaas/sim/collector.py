"""Snapshots from the simulator: the engine's records seen as the controller would see them.

``SimCollector.collect(now)`` builds the same ``control/snapshot.PipelineSnapshot`` that
the live collectors (``metrics/``) build from the gateway, over the window
``[now - window_s, now)``:

- per stage: arrival rate, inter-arrival CV and rejections of the arrivals in the window;
  departure rate/CV, measured service mean and SCV (start to finish of a visit, i.e.
  worker time without queueing) and stage latency percentiles (queue + service) of the
  visits that finished in it; queue length and in-flight visits at ``now``; ready,
  starting and draining replicas from ``sim/backend.SimBackend``;
- end to end: latency percentiles of the requests that completed in the window.

``arrivals``/``rejected`` are counts within the window, like the rates. A stage with no
arrivals in a non-empty window has ``arrival_rate = 0.0`` (observed idle); with fewer than
three arrivals the CV is ``None``. The engine keeps each stage's arrival and departure
order with non-decreasing times, so the window is found with one pointer per level that
only moves forward. Each call turns the records added since the previous one into a
bucket (``sim/windowbuckets.py``) and combines the window's buckets, so a tick costs
O(records since the last tick) plus a selection over the window's latency samples; when
the window does not start on a bucket edge it recomputes the window in one compiled pass
(``sim/windowstats.py``), which gives the same figures.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any, NamedTuple

import numpy as np

from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, StageSnapshot
from quartfaas.sim.backend import SimBackend
from quartfaas.sim.engine import Engine
from quartfaas.sim.pipelines import SimPipeline
from quartfaas.sim.windowbuckets import COUNT, FIRST, LAST, N_FIELDS, combine, fill_bucket
from quartfaas.sim.windowstats import E2E_FIELDS, STAGE_FIELDS, window_stats


class _Bucket(NamedTuple):
    stats: np.ndarray  # (levels, N_FIELDS)
    lat: np.ndarray
    off: np.ndarray
    first: float  # earliest record time in the bucket
    last: float  # latest


def _opt(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def _latency(row: np.ndarray) -> LatencyStats:
    count = int(row[0])
    if count == 0:
        return LatencyStats()
    return LatencyStats(count, float(row[1]), float(row[2]), float(row[3]), float(row[4]))


class SimCollector:
    """Builds snapshots of one simulated pipeline; call ``collect`` with increasing ``now``."""

    def __init__(
        self,
        engine: Engine,
        backend: SimBackend,
        pipeline: SimPipeline,
        window_s: float,
        *,
        buckets: bool = True,  # False: recompute the whole window every call (a reference)
    ) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.engine = engine
        self.backend = backend
        self.pipeline = pipeline
        self.window_s = window_s
        self._lo = np.zeros(engine.n_stages + 1, dtype=np.int64)
        self._last_now = -np.inf
        self._out = np.zeros((engine.n_stages, len(STAGE_FIELDS)))
        self._e2e = np.zeros((1, len(E2E_FIELDS)))
        self._hi = np.zeros(engine.n_stages + 1, dtype=np.int64)
        self._buckets: deque[_Bucket] = deque()
        self.slow_path_calls = 0  # windows that did not start on a bucket edge
        self._use_buckets = buckets

    def collect(self, now: float) -> PipelineSnapshot:
        e = self.engine
        if now < self._last_now:
            raise ValueError(f"collect(now={now}) after collect(now={self._last_now})")
        if now > e.now:
            raise ValueError(f"the engine is at {e.now}; advance it to {now} first")
        self._last_now = now
        begin = max(0.0, now - self.window_s)
        span = now - begin
        self._window(begin)
        stages = []
        for k, st in enumerate(self.pipeline.stages):
            row = self._out[k]
            ready, starting, draining = self.backend.counts(st.name)
            stages.append(
                StageSnapshot(
                    name=st.name,
                    index=k,
                    min_replicas=st.min_replicas,
                    max_replicas=st.max_replicas,
                    max_concurrency=st.max_concurrency,
                    ready_replicas=ready,
                    starting_replicas=starting,
                    draining_replicas=draining,
                    queue_len=e.queue_len(k),
                    in_flight=e.in_flight(k),
                    arrival_rate=float(row[0]) / span if span > 0 else None,
                    arrival_cv=_opt(row[1]),
                    departure_rate=float(row[3]) / span if span > 0 else None,
                    departure_cv=_opt(row[4]),
                    service_mean_s=_opt(row[5]),
                    service_scv=_opt(row[6]),
                    latency=_latency(row[7:12]),
                    arrivals=int(row[0]),
                    rejected=int(row[2]),
                    cpu_per_replica=self.backend.cpus_per_replica(st.name),
                    cpu_utilisation=_cpu_utilisation(st.cpu_frac, row, span, ready, st),
                )
            )
        return PipelineSnapshot(
            now=now,
            pipeline=self.pipeline.name,
            slo_p99_s=self.pipeline.slo_p99_s,
            stages=tuple(stages),
            e2e=_latency(self._e2e[0]),
            window_s=self.window_s,
            data_age_s=0.0,
            source="sim",
        )

    def _window(self, begin: float) -> None:
        e = self.engine
        stats = np.zeros((e.n_stages + 1, N_FIELDS))
        lat, off = fill_bucket(
            e.arrivals, e.start, e.finish, e.seq, e.cnt, e.rejected_at, self._hi, stats
        )
        seen = stats[:, COUNT] > 0
        if seen.any():
            first = float(stats[seen, FIRST].min())
            last = float(stats[seen, LAST].max())
            self._buckets.append(_Bucket(stats, lat, off, first, last))
        buckets = self._buckets
        while buckets and buckets[0].last < begin:
            buckets.popleft()
        if self._use_buckets and all(b.first >= begin for b in buckets):
            if buckets:
                combine(
                    np.stack([b.stats for b in buckets]),
                    np.concatenate([b.lat for b in buckets]),
                    np.stack([b.off for b in buckets]),
                    self._out,
                    self._e2e,
                )
            else:
                combine(
                    stats[None], lat, off[None], self._out, self._e2e
                )  # an empty window: zero counts, NaN statistics
            return
        self.slow_path_calls += 1
        window_stats(
            begin,
            e.arrivals,
            e.start,
            e.finish,
            e.seq,
            e.cnt,
            e.rejected_at,
            self._lo,
            self._out,
            self._e2e,
        )


def _cpu_utilisation(cpu_frac: float, row: Any, span: float, ready: int, st: Any) -> float | None:
    """Share of a replica's CPU in use: busy share of its slots x the CPU part of the work.

    A GPU-bound stage (``cpu_frac`` 0) uses none of its CPU share to speak of, so the CPU
    compensator sees no reason to give it more.
    """
    if span <= 0 or ready <= 0 or math.isnan(float(row[5])):
        return None
    busy = float(row[3]) / span * float(row[5]) / (ready * st.max_concurrency)
    return min(1.0, busy) * cpu_frac

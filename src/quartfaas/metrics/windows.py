"""Time-keyed sliding windows: arrival/departure rates, inter-arrival CV and latency percentiles.

The gateway appends to these on its hot path (one ``append`` per request event), and the
in-process collector (``metrics/collector.py``) queries them once per control tick to fill a
``control.snapshot.StageSnapshot`` (``arrival_rate``, ``arrival_cv``, ``service_scv``,
``latency``). The simulator and the report code use ``binned_cv`` over whole traces; the
burstiness predictor uses it for its training targets.

Design, and why:

* **Time is an argument.** ``append(t)`` takes the event's timestamp and every query takes
  ``now``; nothing here reads a clock, so tests and the simulator drive windows with fake or
  simulated time (``quartfaas.clock``). ``now`` must not go backwards between queries.
* **The window is ``(now - window_s, now]``**, evicted by age on append (relative to the
  appended timestamp) and again on query (relative to ``now``), so an idle window forgets.
* **Memory is bounded** by ``max_samples``: a ``collections.deque(maxlen=...)`` drops the
  oldest sample when full. Appends are O(1) amortised and allocation-light (a deque append, a
  length check and an age comparison; no numpy on the hot path); queries copy the window into
  numpy (O(n)), which suits one query per control tick.
  When the cap has dropped samples that are still younger than ``window_s``, rates are taken
  over the span the retained samples cover, so a cap never deflates a rate.
* **CV is over time.** ``cv(now)`` is std/mean of the gaps between consecutive timestamps in
  the window, in time order (the QUART prototype took std/mean across Prometheus *series*,
  which is 0 for one series). Gaps that cross the window edges are censored, not counted.
  The std is the population std (``ddof=0``), as in ``/work/shared/traces/README.md``.
* **No data is a value.** Queries return ``None`` when there are too few samples (a CV needs
  ``min_gaps`` gaps), never 0 and never an exception.

Not thread-safe: one gateway event loop owns each window.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt

PercentileMethod = Literal["nearest", "linear"]

# numpy's name for each method: "nearest" is the nearest-rank definition (the smallest sample
# with at least q of the samples at or below it), which always returns an observed value.
_NUMPY_METHOD: dict[str, Literal["inverted_cdf", "linear"]] = {
    "nearest": "inverted_cdf",
    "linear": "linear",
}


def _check_window(window_s: float, max_samples: int) -> None:
    if not window_s > 0:
        raise ValueError(f"window_s ({window_s}) must be > 0")
    if max_samples < 2:
        raise ValueError(f"max_samples ({max_samples}) must be >= 2")


def gap_cv(times: npt.ArrayLike, *, min_gaps: int = 2) -> float | None:
    """CV (std/mean, ddof=0) of the gaps between consecutive sorted times.

    ``None`` with fewer than ``min_gaps`` gaps or a zero mean gap (all times equal).
    """
    t = np.sort(np.asarray(times, dtype=np.float64))
    if t.size - 1 < max(min_gaps, 1):
        return None
    gaps = np.diff(t)
    mean = float(gaps.mean())
    if mean <= 0.0:
        return None
    return float(gaps.std()) / mean


class EventWindow:
    """Timestamps of events (arrivals or departures) over the last ``window_s`` seconds.

    ``start`` is when observation began (e.g. when the gateway registered the stage): before
    ``start + window_s`` rates are taken over ``now - start`` rather than the full window, so
    a young window does not under-report. Without it the full ``window_s`` is always used.
    """

    __slots__ = ("_capped_at", "_cv_min_gaps", "_start", "_ts", "_window_s", "dropped_by_cap")

    def __init__(
        self,
        window_s: float,
        *,
        max_samples: int = 100_000,
        start: float | None = None,
        min_gaps: int = 2,
    ) -> None:
        _check_window(window_s, max_samples)
        self._window_s = float(window_s)
        self._ts: deque[float] = deque(maxlen=max_samples)
        self._start = start
        self._cv_min_gaps = min_gaps
        # Timestamp of the newest event the cap dropped: rates count only what is after it.
        self._capped_at = -np.inf
        self.dropped_by_cap = 0

    @property
    def window_s(self) -> float:
        return self._window_s

    @property
    def max_samples(self) -> int:
        return self._ts.maxlen or 0

    def append(self, t: float) -> None:
        """Record one event at time ``t`` (seconds, same clock as ``now``). O(1) amortised."""
        ts = self._ts
        if len(ts) == ts.maxlen:
            # The deque is about to drop ts[0]; remember it so rates stay honest.
            self._capped_at = ts[0]
            self.dropped_by_cap += 1
        ts.append(t)
        horizon = t - self._window_s
        while ts[0] <= horizon:
            ts.popleft()

    def _evict(self, now: float) -> None:
        ts = self._ts
        horizon = now - self._window_s
        while ts and ts[0] <= horizon:
            ts.popleft()

    def timestamps(self, now: float) -> npt.NDArray[np.float64]:
        """The event times in ``(now - window_s, now]``, sorted (a copy)."""
        self._evict(now)
        t = np.fromiter(self._ts, dtype=np.float64, count=len(self._ts))
        t = t[t <= now]
        t.sort()
        return t

    def count(self, now: float) -> int:
        """Events in the window (after eviction by age and by the cap)."""
        return int(self.timestamps(now).size)

    def span(self, now: float) -> float:
        """Seconds the window's retained events represent (<= window_s)."""
        lo = now - self._window_s
        if self._start is not None:
            lo = max(lo, self._start)
        lo = max(lo, self._capped_at)
        return max(now - lo, 0.0)

    def rate(self, now: float) -> float | None:
        """Events per second over the window; ``None`` before any time has been observed."""
        span = self.span(now)
        if span <= 0.0:
            return None
        return self.count(now) / span

    def cv(self, now: float) -> float | None:
        """CV of inter-event gaps in the window (time order); ``None`` if too few gaps."""
        return gap_cv(self.timestamps(now), min_gaps=self._cv_min_gaps)

    def scv(self, now: float) -> float | None:
        """Squared CV of inter-event gaps (the c_a² of queueing formulas)."""
        cv = self.cv(now)
        return None if cv is None else cv * cv

    def __len__(self) -> int:
        """Samples held right now (without evicting by a ``now``)."""
        return len(self._ts)


@dataclass(frozen=True, slots=True)
class ValueStats:
    """Summary of a ``ValueWindow`` at one ``now``; ``None`` fields when it is empty."""

    count: int
    mean: float | None
    scv: float | None
    p50: float | None
    p95: float | None
    p99: float | None


class ValueWindow:
    """``(timestamp, value)`` samples (latencies, service times) over the last ``window_s``."""

    __slots__ = ("_t", "_v", "_window_s", "dropped_by_cap", "method")

    def __init__(
        self,
        window_s: float,
        *,
        max_samples: int = 100_000,
        method: PercentileMethod = "nearest",
    ) -> None:
        _check_window(window_s, max_samples)
        if method not in _NUMPY_METHOD:
            raise ValueError(f"method ({method!r}) must be one of {sorted(_NUMPY_METHOD)}")
        self._window_s = float(window_s)
        self._t: deque[float] = deque(maxlen=max_samples)
        self._v: deque[float] = deque(maxlen=max_samples)
        self.method: PercentileMethod = method
        self.dropped_by_cap = 0

    @property
    def window_s(self) -> float:
        return self._window_s

    def append(self, t: float, value: float) -> None:
        """Record ``value`` observed at time ``t``. O(1) amortised."""
        ts = self._t
        vs = self._v
        if len(ts) == ts.maxlen:
            self.dropped_by_cap += 1
        ts.append(t)
        vs.append(value)
        horizon = t - self._window_s
        while ts[0] <= horizon:
            ts.popleft()
            vs.popleft()

    def values(self, now: float) -> npt.NDArray[np.float64]:
        """Values with timestamps in ``(now - window_s, now]`` (a copy, insertion order)."""
        ts, vs = self._t, self._v
        horizon = now - self._window_s
        while ts and ts[0] <= horizon:
            ts.popleft()
            vs.popleft()
        t = np.fromiter(ts, dtype=np.float64, count=len(ts))
        v = np.fromiter(vs, dtype=np.float64, count=len(vs))
        return v[t <= now]

    def count(self, now: float) -> int:
        return int(self.values(now).size)

    def mean(self, now: float) -> float | None:
        v = self.values(now)
        return float(v.mean()) if v.size else None

    def scv(self, now: float) -> float | None:
        """Squared CV (var/mean², ddof=0); ``None`` if empty or the mean is 0."""
        return _scv(self.values(now))

    def percentile(self, now: float, q: float) -> float | None:
        """The ``q``-quantile (0 <= q <= 1) by ``self.method``; ``None`` when empty."""
        if not 0.0 <= q <= 1.0:
            raise ValueError(f"q ({q}) must be in [0, 1]")
        v = self.values(now)
        if not v.size:
            return None
        return float(np.quantile(v, q, method=_NUMPY_METHOD[self.method]))

    def stats(self, now: float) -> ValueStats:
        """Count, mean, SCV and p50/p95/p99 from one copy of the window."""
        v = self.values(now)
        if not v.size:
            return ValueStats(0, None, None, None, None, None)
        p50, p95, p99 = np.quantile(v, [0.5, 0.95, 0.99], method=_NUMPY_METHOD[self.method])
        return ValueStats(
            count=int(v.size),
            mean=float(v.mean()),
            scv=_scv(v),
            p50=float(p50),
            p95=float(p95),
            p99=float(p99),
        )

    def __len__(self) -> int:
        return len(self._t)


def _scv(v: npt.NDArray[np.float64]) -> float | None:
    if not v.size:
        return None
    mean = float(v.mean())
    square = mean * mean
    if square == 0.0:  # a zero mean, or one so small that its square underflows
        return None
    return float(v.var()) / square


@dataclass(frozen=True, slots=True)
class BinnedCV:
    """Per-bin arrival counts, rates and inter-arrival CVs of one trace.

    Bin ``i`` covers ``[start_s + i*bin_s, start_s + (i+1)*bin_s)``; its CV uses only gaps
    between consecutive arrivals that both fall in the bin, and is NaN with fewer than
    ``min_gaps`` such gaps (or a zero mean gap).
    """

    bin_s: float
    start_s: float
    count: npt.NDArray[np.int64]
    cv: npt.NDArray[np.float64]

    @property
    def rate(self) -> npt.NDArray[np.float64]:
        return self.count / self.bin_s

    @property
    def bin_start_s(self) -> npt.NDArray[np.float64]:
        return self.start_s + self.bin_s * np.arange(self.count.size, dtype=np.float64)


def binned_cv(
    times: npt.ArrayLike,
    bin_s: float = 10.0,
    *,
    start_s: float | None = None,
    end_s: float | None = None,
    min_gaps: int = 2,
) -> BinnedCV:
    """CV of inter-arrival times per ``bin_s`` bin over ``[start_s, end_s)`` (vectorised).

    Defaults: from the first arrival to just past the last. With 60 s bins over the Azure
    ``code`` trace this gives min/median/max 0.81/3.09/9.04, as its README states.
    """
    if not bin_s > 0:
        raise ValueError(f"bin_s ({bin_s}) must be > 0")
    t = np.sort(np.asarray(times, dtype=np.float64))
    lo = float(t[0]) if start_s is None and t.size else float(start_s or 0.0)
    hi = (float(t[-1]) if t.size else lo) if end_s is None else float(end_s)
    n_bins = max(int(np.floor((hi - lo) / bin_s)) + (1 if end_s is None else 0), 0)
    if end_s is not None and lo + n_bins * bin_s < hi:
        n_bins += 1  # a partial last bin
    t = t[(t >= lo) & (t < lo + n_bins * bin_s)]
    idx = np.floor((t - lo) / bin_s).astype(np.int64)
    idx = np.minimum(idx, max(n_bins - 1, 0))  # guard against float rounding at the edge
    count = np.bincount(idx, minlength=n_bins).astype(np.int64)
    same = idx[1:] == idx[:-1]
    gaps = np.diff(t)[same]
    gidx = idx[1:][same]
    n = np.bincount(gidx, minlength=n_bins).astype(np.float64)
    s1 = np.bincount(gidx, weights=gaps, minlength=n_bins)
    with np.errstate(divide="ignore", invalid="ignore"):
        mean = s1 / n
        # Two passes (deviations from each bin's mean) rather than E[x²]-E[x]², which cancels
        # badly when gaps are nearly equal.
        dev = gaps - mean[gidx]
        var = np.bincount(gidx, weights=dev * dev, minlength=n_bins) / n
        cv = np.sqrt(var) / mean
    cv[(n < max(min_gaps, 1)) | ~(mean > 0)] = np.nan
    return BinnedCV(bin_s=float(bin_s), start_s=lo, count=count, cv=cv)

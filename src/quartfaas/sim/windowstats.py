"""Window statistics for ``sim/collector.py``, one compiled pass over all stages per tick.

A snapshot needs, per stage, a dozen small reductions (counts, CVs, means, percentiles)
over the requests of the last ``window_s``; done with numpy calls they cost microseconds
of dispatch each and dominated whole runs. This module computes them in one call, compiled
by numba when available (``quartfaas.jit.HAVE_NUMBA``), plain Python otherwise.

Output row per stage (``STAGE_FIELDS``) and for end to end (``E2E_FIELDS``); NaN marks a
value that could not be measured (``None`` in the snapshot). Percentiles interpolate
linearly between order statistics, as ``numpy.quantile``'s default method does, found by
selection (``np.partition``) rather than a full sort.
"""

from __future__ import annotations

import numpy as np

from quartfaas.sim.kernel import _jit

STAGE_FIELDS = (
    "arrivals",
    "arrival_cv",
    "rejected",
    "departures",
    "departure_cv",
    "service_mean",
    "service_scv",
    "lat_count",
    "lat_mean",
    "lat_p50",
    "lat_p95",
    "lat_p99",
)
E2E_FIELDS = ("count", "mean", "p50", "p95", "p99")


@_jit
def _time_at(level: int, r: int, arrivals: np.ndarray, finish: np.ndarray) -> float:
    if level == 0:
        return float(arrivals[r])
    return float(finish[level - 1, r])


@_jit
def _gap_cv(times: np.ndarray, n: int) -> float:
    if n < 3:
        return np.nan
    m = (times[n - 1] - times[0]) / (n - 1)
    if m <= 0:
        return np.nan
    ss = 0.0
    for i in range(1, n):
        d = times[i] - times[i - 1] - m
        ss += d * d
    return float(np.sqrt(ss / (n - 1)) / m)


@_jit
def _latency(samples: np.ndarray, out: np.ndarray, col: int, row: int) -> None:
    n = samples.shape[0]
    out[row, col] = n
    if n == 0:
        for j in range(1, 5):
            out[row, col + j] = np.nan
        return
    out[row, col + 1] = samples.mean()
    # Selection, not a full sort: the order statistics around each quantile's position.
    pos = np.empty(3)
    pos[0], pos[1], pos[2] = 0.5 * (n - 1), 0.95 * (n - 1), 0.99 * (n - 1)
    kth = np.empty(6, dtype=np.int64)
    for j in range(3):
        lo = int(np.floor(pos[j]))
        kth[2 * j] = lo
        kth[2 * j + 1] = min(lo + 1, n - 1)
    xs = np.partition(samples, kth)
    for j in range(3):
        a = xs[kth[2 * j]]
        b = xs[kth[2 * j + 1]]
        out[row, col + 2 + j] = a + (b - a) * (pos[j] - kth[2 * j])


@_jit
def window_stats(  # noqa: PLR0917 - a numba kernel takes its arrays positionally
    begin: float,
    arrivals: np.ndarray,
    start: np.ndarray,
    finish: np.ndarray,
    seq: np.ndarray,
    cnt: np.ndarray,
    rejected_at: np.ndarray,
    lo: np.ndarray,
    out: np.ndarray,
    e2e: np.ndarray,
) -> None:
    """Fill ``out[k]`` (``STAGE_FIELDS``) and ``e2e[0]`` for the window ``[begin, now)``.

    ``lo[level]`` is moved forward to the first position of ``seq[level]`` at or after
    ``begin`` (times are non-decreasing along each level).
    """
    n_stages = start.shape[0]
    for level in range(n_stages + 1):
        p = lo[level]
        while p < cnt[level] and _time_at(level, seq[level, p], arrivals, finish) < begin:
            p += 1
        lo[level] = p
    for k in range(n_stages):
        # arrivals at stage k
        a0, a1 = lo[k], cnt[k]
        na = a1 - a0
        t_a = np.empty(na)
        rej = 0
        for i in range(na):
            r = seq[k, a0 + i]
            t_a[i] = _time_at(k, r, arrivals, finish)
            if rejected_at[r] == k:
                rej += 1
        out[k, 0] = na
        out[k, 1] = _gap_cv(t_a, na)
        out[k, 2] = rej
        # departures from stage k (level k + 1)
        d0, d1 = lo[k + 1], cnt[k + 1]
        nd = d1 - d0
        t_d = np.empty(nd)
        svc = np.empty(nd)
        lat = np.empty(nd)
        for i in range(nd):
            r = seq[k + 1, d0 + i]
            t_d[i] = finish[k, r]
            svc[i] = finish[k, r] - start[k, r]
            lat[i] = finish[k, r] - _time_at(k, r, arrivals, finish)
        out[k, 3] = nd
        out[k, 4] = _gap_cv(t_d, nd)
        if nd > 0:
            mean = svc.mean()
            out[k, 5] = mean
            if nd > 1 and mean > 0:
                ss = 0.0
                for i in range(nd):
                    ss += (svc[i] - mean) ** 2
                out[k, 6] = ss / nd / (mean * mean)
            else:
                out[k, 6] = np.nan
        else:
            out[k, 5] = np.nan
            out[k, 6] = np.nan
        _latency(lat, out, 7, k)
    c0, c1 = lo[n_stages], cnt[n_stages]
    lat_e = np.empty(c1 - c0)
    for i in range(c1 - c0):
        r = seq[n_stages, c0 + i]
        lat_e[i] = finish[n_stages - 1, r] - arrivals[r]
    _latency(lat_e, e2e, 0, 0)

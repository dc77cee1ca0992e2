"""Window statistics kept per bucket, so a snapshot costs O(one tick of data), not O(window).

``sim/windowstats.window_stats`` recomputes every statistic over the whole window at each
tick; with a 10 s window and 1 s ticks, 90% of that work was done the tick before. Here
each ``collect`` call turns the records the engine added since the previous call into one
*bucket* (``fill_bucket``: counts, first/last times, and the mean and sum of squared
deviations of inter-event gaps and service times, plus the latency samples), and the
window's statistics are combined from the buckets it covers (``combine``). Means and
squared deviations are merged with Chan et al.'s pairwise update ("Updating formulae and a
pairwise algorithm for computing sample variances", 1979), so the CVs equal the two-pass
ones of ``window_stats`` up to rounding; the gap between two buckets' neighbouring events
enters as one more gap. Percentiles are selected over the window's latency samples, which
the buckets hold contiguously (exact, the same order statistics as ``window_stats``).

The fast path needs the window to start on a bucket edge: every record of a kept bucket at
or after the window's begin, every record of a dropped one before it. ``SimCollector``
checks that with each bucket's first and last record time and falls back to
``window_stats`` otherwise (e.g. a window that is not a whole number of ticks, or events
exactly on a tick time), so the output never depends on the path.
"""

from __future__ import annotations

import numpy as np

from quartfaas.sim.kernel import _jit
from quartfaas.sim.windowstats import _latency as _select  # count, mean, p50/95/99

# Per level (level k: arrivals at stage k; level K: completions), one row of a bucket.
COUNT, FIRST, LAST, GAP_N, GAP_MEAN, GAP_M2, REJ, SVC_MEAN, SVC_M2 = range(9)
N_FIELDS = 9


@_jit
def _time_at(level: int, r: int, arrivals: np.ndarray, finish: np.ndarray) -> float:
    if level == 0:
        return float(arrivals[r])
    return float(finish[level - 1, r])


@_jit
def fill_bucket(  # noqa: PLR0917 - a numba kernel takes its arrays positionally
    arrivals: np.ndarray,
    start: np.ndarray,
    finish: np.ndarray,
    seq: np.ndarray,
    cnt: np.ndarray,
    rejected_at: np.ndarray,
    hi: np.ndarray,
    stats: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Consume ``seq[level, hi[level]:cnt[level]]`` into ``stats`` (levels x N_FIELDS).

    Returns the latency samples and their offsets: block k < K holds stage k's latencies
    (queue + service, of visits that finished), block K the end-to-end latencies.
    """
    n_stages = start.shape[0]
    n_levels = n_stages + 1
    off = np.zeros(n_levels + 1, dtype=np.int64)
    for level in range(1, n_levels):
        off[level] = off[level - 1] + (cnt[level] - hi[level])
    off[n_levels] = off[n_levels - 1] + (cnt[n_stages] - hi[n_stages])
    lat = np.empty(off[n_levels])
    for level in range(n_levels):
        p0, p1 = hi[level], cnt[level]
        n = p1 - p0
        stats[level, COUNT] = n
        rej = 0
        gmean = 0.0
        gm2 = 0.0
        smean = 0.0
        sm2 = 0.0
        prev = 0.0
        for i in range(n):
            r = seq[level, p0 + i]
            t = _time_at(level, r, arrivals, finish)
            if i == 0:
                stats[level, FIRST] = t
            else:  # Welford over the gaps
                d = t - prev - gmean
                gmean += d / i
                gm2 += d * (t - prev - gmean)
            prev = t
            if level < n_stages and rejected_at[r] == level:
                rej += 1
            if level > 0:
                k = level - 1
                s = finish[k, r] - start[k, r]
                d = s - smean
                smean += d / (i + 1)
                sm2 += d * (s - smean)
                lat[off[k] + i] = finish[k, r] - _time_at(k, r, arrivals, finish)
                if level == n_stages:
                    lat[off[n_stages] + i] = finish[k, r] - arrivals[r]
        stats[level, LAST] = prev
        stats[level, GAP_N] = max(n - 1, 0)
        stats[level, GAP_MEAN] = gmean
        stats[level, GAP_M2] = gm2
        stats[level, REJ] = rej
        stats[level, SVC_MEAN] = smean
        stats[level, SVC_M2] = sm2
        hi[level] = p1
    return lat, off


@_jit
def _merge(  # noqa: PLR0917 - a numba kernel takes its arrays positionally
    na: float, ma: float, m2a: float, nb: float, mb: float, m2b: float
) -> tuple[float, float, float]:
    n = na + nb
    if n == 0:
        return 0.0, 0.0, 0.0
    d = mb - ma
    return n, ma + d * nb / n, m2a + m2b + d * d * na * nb / n


@_jit
def combine(
    stats: np.ndarray, lat: np.ndarray, offs: np.ndarray, out: np.ndarray, e2e: np.ndarray
) -> None:
    """Fill ``out`` (``windowstats.STAGE_FIELDS``) and ``e2e[0]`` from the window's buckets.

    ``stats``: (buckets, levels, N_FIELDS) oldest first; ``lat``: the buckets' latency
    samples one after the other; ``offs``: (buckets, levels + 1) each bucket's block
    offsets into its own samples (``fill_bucket``'s), its samples starting at the running
    total of the previous buckets' sizes.
    """
    nb, n_levels, _ = stats.shape
    n_stages = n_levels - 1
    base = np.zeros(nb + 1, dtype=np.int64)
    for b in range(nb):
        base[b + 1] = base[b] + offs[b, n_levels]
    gap_cv = np.empty(n_levels)
    count = np.zeros(n_levels)
    rej = np.zeros(n_levels)
    svc_mean = np.empty(n_levels)
    svc_m2 = np.empty(n_levels)
    for level in range(n_levels):
        n = 0.0
        gn, gm, gm2 = 0.0, 0.0, 0.0
        sn, sm, sm2 = 0.0, 0.0, 0.0
        last = 0.0
        for b in range(nb):
            c = stats[b, level, COUNT]
            if c == 0:
                continue
            if n > 0:  # the gap from the previous bucket's last event to this one's first
                gn, gm, gm2 = _merge(gn, gm, gm2, 1.0, stats[b, level, FIRST] - last, 0.0)
            gn, gm, gm2 = _merge(
                gn, gm, gm2, stats[b, level, GAP_N], stats[b, level, GAP_MEAN],
                stats[b, level, GAP_M2],
            )  # fmt: skip
            sn, sm, sm2 = _merge(sn, sm, sm2, c, stats[b, level, SVC_MEAN], stats[b, level, SVC_M2])
            n += c
            rej[level] += stats[b, level, REJ]
            last = stats[b, level, LAST]
        count[level] = n
        # window_stats._gap_cv: None below three events or for a non-positive mean gap
        gap_cv[level] = np.sqrt(gm2 / gn) / gm if n >= 3 and gm > 0 else np.nan
        svc_mean[level] = sm if n > 0 else np.nan
        svc_m2[level] = sm2
    for k in range(n_stages):
        out[k, 0] = count[k]
        out[k, 1] = gap_cv[k]
        out[k, 2] = rej[k]
        d = k + 1
        out[k, 3] = count[d]
        out[k, 4] = gap_cv[d]
        out[k, 5] = svc_mean[d]
        mean = svc_mean[d]
        if count[d] > 1 and mean > 0:
            out[k, 6] = svc_m2[d] / count[d] / (mean * mean)
        else:
            out[k, 6] = np.nan
    for block in range(n_levels):
        size = 0
        for b in range(nb):
            size += offs[b, block + 1] - offs[b, block]
        samples = np.empty(size)
        j = 0
        for b in range(nb):
            for i in range(base[b] + offs[b, block], base[b] + offs[b, block + 1]):
                samples[j] = lat[i]
                j += 1
        if block < n_stages:
            _select(samples, out, 7, block)
        else:
            _select(samples, e2e, 0, 0)

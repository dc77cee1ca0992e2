"""Reach a target request rate from a trace WITHOUT compressing its time axis.

``Trace.rescale_to_rate`` squeezes time: the Azure ``code`` trace (2.6 req/s) reaches
200 req/s only by replaying 78 s of trace per second, so a 1 s controller tick sees 78 s
of bursts. The two methods here keep one trace second = one simulated second:

``envelope_thinning`` (the default)
    The trace's rate envelope ``lambda(t)`` is its arrival count per ``envelope_s`` bin
    (piecewise constant), scaled by ``rate / trace_rate``; arrivals are an inhomogeneous
    Poisson process under the scaled envelope (a Poisson count per bin, placed uniformly
    in it, which is what thinning a homogeneous process at the peak rate yields).
    The scale is ``rate`` over the mean of the *replayed* window (``duration_s`` from the
    bin of a seed-chosen request), so the output's mean rate is ``rate`` whatever the window's
    local level; the envelope's shape within the window is kept.
    *Burstiness*: the counts in a window of ``w >= envelope_s`` have
    ``CV^2 = CV_trace(w)^2 + 1 / (rate x w)``: the trace's burst pattern at and above the
    envelope scale is kept (plus the Poisson term of the new, higher rate, which is
    small). Below ``envelope_s`` arrivals are Poisson within a bin, so fine-scale
    structure of the trace (sub-``envelope_s`` clumps) is not kept. The controller's
    1 s tick sees the trace's own 1 s envelope with the default ``envelope_s = 1``.
``superpose_windows``
    ``m = ceil(rate / trace_rate)`` windows of the trace, each starting at an independent
    random offset (the trace wrapped around), are merged, then thinned uniformly to the
    exact rate. *Burstiness*: independent windows average out, so the CV of counts at
    every scale falls by about ``1 / sqrt(m)`` towards the Poisson level (traffic from
    many independent users, as an aggregate); the trace's own timing within each window
    is kept exactly.

Seeds: the realisation is a pure function of ``(trace, rate, duration_s, seed)``; another
seed gives an independent one (other Poisson samples, another start offset into the
trace, other window offsets). Token counts come with every arrival, drawn from the trace's
requests of the same bin (thinning) or copied from the request itself (superposition),
so the time-correlation of request sizes is kept and service time *may* depend on them
(``token_work_factor``). The simulator's paper presets (``sim/pipelines.py``) assume it
does not: their per-stage times are the prototype's profile at one fixed input length, so
``sim/run.sample_work`` ignores tokens unless a caller multiplies by this factor.
Neighbours: ``workload/traces.py`` (``Trace``), ``metrics/windows.binned_cv``.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import numpy.typing as npt

from quartfaas.errors import SpecError
from quartfaas.workload.traces import Trace

Method = Literal["thinning", "superpose"]


def _check(trace: Trace, rate: float, duration_s: float | None) -> tuple[float, float]:
    if not (rate > 0 and math.isfinite(rate)):
        raise SpecError(f"target rate ({rate}) must be a finite number > 0")
    span = trace.duration_s
    if len(trace) < 2 or span <= 0:
        raise SpecError(f"trace {trace.name} needs >= 2 arrivals over a positive span")
    dur = span if duration_s is None else float(duration_s)
    if not (dur > 0 and math.isfinite(dur)):
        raise SpecError(f"duration_s ({duration_s}) must be a finite number > 0")
    return span, dur


def _tokens(trace: Trace, idx: npt.NDArray[np.intp]) -> dict[str, npt.NDArray[np.int64] | None]:
    return {
        "prompt_tokens": None if trace.prompt_tokens is None else trace.prompt_tokens[idx],
        "output_tokens": None if trace.output_tokens is None else trace.output_tokens[idx],
    }


def envelope_thinning(
    trace: Trace,
    rate: float,
    *,
    duration_s: float | None = None,
    seed: int = 0,
    envelope_s: float = 1.0,
) -> Trace:
    """Poisson arrivals under the trace's rate envelope scaled to ``rate`` (see module doc).

    The output starts at a seed-chosen bin of the trace and wraps around its end, so
    ``duration_s`` (default: the trace's span) may be longer or shorter than the trace.
    """
    span, dur = _check(trace, rate, duration_s)
    if not (envelope_s > 0 and math.isfinite(envelope_s)):
        raise SpecError(f"envelope_s ({envelope_s}) must be a finite number > 0")
    rng = np.random.default_rng(seed)
    n_bins_trace = max(1, math.ceil(span / envelope_s))
    bins = np.minimum((trace.arrivals_s / envelope_s).astype(np.int64), n_bins_trace - 1)
    counts = np.bincount(bins, minlength=n_bins_trace)
    first = np.concatenate(([0], np.cumsum(counts)[:-1]))  # first request index per bin
    n_bins = math.ceil(dur / envelope_s)
    # Start at the bin of a request drawn at random (not a uniform bin): a short window of
    # a trace with long silences then never starts in one, and busy periods are chosen in
    # proportion to the requests they hold.
    offset = int(bins[rng.integers(0, len(trace))])
    src = (offset + np.arange(n_bins)) % n_bins_trace  # trace bin behind each output bin
    bin_width = np.minimum(envelope_s, dur - np.arange(n_bins) * envelope_s)
    raw = counts[src] * bin_width / envelope_s  # the trace's arrivals behind each output bin
    # The replayed window's own mean becomes ``rate`` (not the whole trace's): a short
    # window of a bursty trace would otherwise miss the target by its local level.
    scale = rate * dur / float(raw.sum()) if raw.sum() > 0 else rate / (len(trace) / span)
    lam = raw * scale  # expected arrivals per output bin
    k = rng.poisson(lam)
    out_bin = np.repeat(np.arange(n_bins), k)
    width = np.minimum(envelope_s, dur - out_bin * envelope_s)
    times = out_bin * envelope_s + rng.random(out_bin.size) * width
    order = np.argsort(times, kind="stable")
    times, out_bin = times[order], out_bin[order]
    b = src[out_bin]
    idx = first[b] + (rng.random(b.size) * counts[b]).astype(np.int64)  # a request of the bin
    return Trace(f"{trace.name}@{rate:g}/s-thin-s{seed}", times, **_tokens(trace, idx))


def superpose_windows(
    trace: Trace, rate: float, *, duration_s: float | None = None, seed: int = 0
) -> Trace:
    """Independently shifted windows of the trace merged, thinned to ``rate`` (module doc)."""
    span, dur = _check(trace, rate, duration_s)
    rng = np.random.default_rng(seed)
    base = len(trace) / span
    m = max(1, math.ceil(rate / base))
    keep_p = rate / (m * base)
    period = span + 1.0 / base  # a wrapped copy starts one mean gap after the last arrival
    reps = math.ceil(dur / period) + 1
    tiled = (np.arange(reps)[:, None] * period + trace.arrivals_s[None, :]).ravel()
    tiled_idx = np.tile(np.arange(len(trace)), reps)
    times_l, idx_l = [], []
    for _ in range(m):
        off = rng.random() * period
        lo, hi = np.searchsorted(tiled, [off, off + dur])
        keep = rng.random(hi - lo) < keep_p
        times_l.append(tiled[lo:hi][keep] - off)
        idx_l.append(tiled_idx[lo:hi][keep])
    times = np.concatenate(times_l)
    idx = np.concatenate(idx_l)
    order = np.argsort(times, kind="stable")
    return Trace(f"{trace.name}@{rate:g}/s-sup-s{seed}", times[order], **_tokens(trace, idx[order]))


def at_rate(
    trace: Trace,
    rate: float,
    *,
    method: Method = "thinning",
    duration_s: float | None = None,
    seed: int = 0,
    envelope_s: float = 1.0,
) -> Trace:
    """``envelope_thinning`` or ``superpose_windows`` by name."""
    if method == "thinning":
        return envelope_thinning(
            trace, rate, duration_s=duration_s, seed=seed, envelope_s=envelope_s
        )
    if method == "superpose":
        return superpose_windows(trace, rate, duration_s=duration_s, seed=seed)
    raise SpecError(f"unknown rate method {method!r}; valid methods: thinning, superpose")


def count_cv(arrivals_s: npt.NDArray[np.float64], window_s: float, span_s: float) -> float:
    """CV of arrival counts in consecutive ``window_s`` windows over ``[0, span_s)``."""
    n = int(span_s // window_s)
    if n < 2:
        raise SpecError(f"need >= 2 windows of {window_s} s in {span_s} s")
    c = np.bincount((arrivals_s[arrivals_s < n * window_s] // window_s).astype(np.int64),
                    minlength=n)  # fmt: skip
    mean = float(c.mean())
    return float(c.std() / mean) if mean > 0 else math.nan


def token_work_factor(
    tokens: npt.NDArray[np.int64], exponent: float = 1.0
) -> npt.NDArray[np.float64]:
    """Per-request service-time factor ``tokens^exponent``, normalised to mean 1.

    ``exponent = 1``: time linear in sequence length (an encoder's matmuls at short
    lengths); 0 gives 1 everywhere (the paper presets' assumption).
    """
    t = np.maximum(np.asarray(tokens, dtype=np.float64), 1.0) ** exponent
    return t / t.mean() if t.size else t


__all__ = [
    "at_rate",
    "count_cv",
    "envelope_thinning",
    "superpose_windows",
    "token_work_factor",
]

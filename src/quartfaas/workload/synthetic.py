"""Seeded synthetic arrival processes (``workload/workload.py`` parses the ``Workload``
strings that name them).

Every generator returns a sorted numpy array of arrival times in ``[0, duration_s)`` and is
a pure function of its arguments and seed: the same seed gives the same array (for a given
numpy version; numpy keeps PCG64 streams stable but may change how distributions use them).
Neighbours: ``workload/traces.py`` (the ``trace:`` kind and the ``Trace`` container),
``workload/loadgen.py`` (replays the arrays), the simulator (feeds them to its sources) and
``metrics/windows.py`` (whose CV estimators the renewal processes here are used to test).

Processes, with the inter-arrival CV each produces:

* ``poisson``  exponential gaps, CV 1;
* ``gamma``    Gamma renewal with any CV >= 0 (shape 1/CV²; CV 0 is periodic);
* ``erlang``   Erlang-k renewal, CV 1/√k;
* ``hyperexp`` two-phase hyper-exponential renewal with balanced means, any CV > 1;
* ``mmpp``     two-state Markov-modulated Poisson (rates ``rate_hi``/``rate_lo``, exponential
  sojourns with means ``hi_s``/``lo_s``), started in its stationary state. ``mmpp_for`` picks
  an on-off (``rate_lo = 0``) MMPP with a target mean rate and inter-arrival CV; its
  inter-arrival law is then hyper-exponential with SCV ``1 + 2·r·hi_s·(1-f)²/f``, ``f`` the
  on-fraction. Renewal processes start with an arrival-free origin (first arrival after one
  gap), so the first gap is not from the equilibrium law; that bias fades with length.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quartfaas.errors import SpecError

Seed = int | np.random.Generator


FloatArray = npt.NDArray[np.float64]


_MAX_SOJOURNS = 20_000_000  # a memory guard: ~160 MB of sojourn bookkeeping


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def check_positive(name: str, value: float) -> float:
    if not (value > 0 and math.isfinite(value)):
        raise SpecError(f"{name} ({value}) must be a finite number > 0")
    return float(value)


def check_cv(cv: float) -> None:
    if not (cv >= 0 and math.isfinite(cv)):
        raise SpecError(f"cv ({cv}) must be a finite number >= 0")


def check_k(k: float) -> int:
    if not (math.isfinite(k) and int(k) == k and k >= 1):
        raise SpecError(f"k ({k}) must be an integer >= 1")
    return int(k)


def _renewal(
    draw: Callable[[np.random.Generator, int], FloatArray],
    rate: float,
    duration_s: float,
    seed: Seed,
    scv: float,
) -> FloatArray:
    """Arrival times of a renewal process with mean gap 1/rate, cut at ``duration_s``."""
    check_positive("rate", rate)
    check_positive("duration_s", duration_s)
    rng = _rng(seed)
    expected = rate * duration_s
    # One chunk is enough almost always (mean + 6 sd of the count); top up otherwise.
    size = int(expected + 6.0 * math.sqrt(expected * max(scv, 1.0)) + 16)
    chunks: list[FloatArray] = []
    total = 0.0
    while total < duration_s:
        times = total + np.cumsum(draw(rng, size))
        chunks.append(times)
        total = float(times[-1])
        size = max(size // 4, 64)
    t = np.concatenate(chunks)
    return t[t < duration_s]


def poisson(rate: float, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Poisson arrivals at ``rate`` per second (exponential gaps, CV 1)."""
    return _renewal(lambda g, n: g.exponential(1.0 / rate, n), rate, duration_s, seed, 1.0)


def gamma_renewal(rate: float, cv: float, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Renewal arrivals with Gamma gaps of mean 1/rate and coefficient of variation ``cv``.

    ``cv`` 0 is periodic, 1 Poisson, above 1 bursty (shape 1/cv² < 1 makes many tiny gaps
    and a few long ones).
    """
    check_cv(cv)
    if cv == 0:
        return _renewal(lambda g, n: np.full(n, 1.0 / rate), rate, duration_s, seed, 0.0)
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    return _renewal(lambda g, n: g.gamma(shape, scale, n), rate, duration_s, seed, cv * cv)


def erlang_renewal(rate: float, k: int, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Renewal arrivals with Erlang-k gaps of mean 1/rate (CV 1/√k)."""
    k = check_k(k)
    return _renewal(lambda g, n: g.gamma(k, 1.0 / (rate * k), n), rate, duration_s, seed, 1 / k)


def hyperexp_params(rate: float, cv: float) -> tuple[float, float, float]:
    """``(p, mu1, mu2)`` of a balanced-means H2 with mean 1/rate and CV ``cv`` (> 1).

    A gap is Exp(mu1) with probability p, else Exp(mu2); each branch carries half the mean.
    """
    check_positive("rate", rate)
    if not (cv > 1 and math.isfinite(cv)):
        raise SpecError(f"cv ({cv}) of a hyper-exponential must be > 1 (use gamma for <= 1)")
    c2 = cv * cv
    p = 0.5 * (1.0 + math.sqrt((c2 - 1.0) / (c2 + 1.0)))
    return p, 2.0 * p * rate, 2.0 * (1.0 - p) * rate


def hyperexp_renewal(rate: float, cv: float, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Renewal arrivals with two-phase hyper-exponential gaps (mean 1/rate, CV ``cv`` > 1)."""
    p, mu1, mu2 = hyperexp_params(rate, cv)

    def draw(g: np.random.Generator, n: int) -> FloatArray:
        fast = g.random(n) < p
        return g.exponential(1.0, n) / np.where(fast, mu1, mu2)

    return _renewal(draw, rate, duration_s, seed, cv * cv)


@dataclass(frozen=True, slots=True)
class MMPP:
    """Two-state MMPP: Poisson at ``rate_hi`` for Exp(``hi_s``) seconds, then ``rate_lo``…"""

    rate_hi: float
    rate_lo: float
    hi_s: float
    lo_s: float

    def __post_init__(self) -> None:
        check_positive("hi_s", self.hi_s)
        check_positive("lo_s", self.lo_s)
        for name in ("rate_hi", "rate_lo"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise SpecError(f"{name} ({value}) must be a finite number >= 0")
        if self.mean_rate <= 0:
            raise SpecError("an MMPP needs rate_hi or rate_lo > 0")

    @property
    def mean_rate(self) -> float:
        return (self.rate_hi * self.hi_s + self.rate_lo * self.lo_s) / (self.hi_s + self.lo_s)

    def interarrival_scv(self) -> float:
        """Exact SCV of the stationary inter-arrival time (phase-type with D0 = Q - Λ)."""
        lam = np.array([self.rate_hi, self.rate_lo])
        q = np.array([[-1 / self.hi_s, 1 / self.hi_s], [1 / self.lo_s, -1 / self.lo_s]])
        pi = np.array([self.hi_s, self.lo_s]) / (self.hi_s + self.lo_s)
        pi_a = pi * lam / float(pi @ lam)  # phase seen just after an arrival
        m = np.linalg.inv(np.diag(lam) - q)  # (-D0)^-1
        ones = np.ones(2)
        m1 = float(pi_a @ m @ ones)
        m2 = 2.0 * float(pi_a @ m @ m @ ones)
        return m2 / (m1 * m1) - 1.0

    def interarrival_cv(self) -> float:
        return math.sqrt(max(self.interarrival_scv(), 0.0))


def mmpp_for(
    rate: float, cv: float, *, on_frac: float | None = None, on_s: float | None = None
) -> MMPP:
    """An on-off MMPP with mean rate ``rate`` and inter-arrival CV ``cv`` (>= 1).

    One more knob fixes the shape: ``on_frac`` (share of time on, so peak/mean = 1/on_frac;
    default 0.25) or ``on_s`` (mean on-period, seconds). A higher CV at a fixed rate needs
    longer bursts. CV 1 gives Poisson (both states at ``rate``).
    """
    check_positive("rate", rate)
    if not (cv >= 1 and math.isfinite(cv)):
        raise SpecError(f"cv ({cv}) of an MMPP must be >= 1 (use gamma or erlang for < 1)")
    if on_frac is not None and on_s is not None:
        raise SpecError(f"give on_frac ({on_frac}) or on_s ({on_s}), not both")
    if cv == 1:
        return MMPP(rate_hi=rate, rate_lo=rate, hi_s=1.0, lo_s=1.0)
    excess = cv * cv - 1.0  # = 2·r·on_s·(1-f)²/f for an on-off MMPP
    if on_s is not None:
        check_positive("on_s", on_s)
        k = excess / (2.0 * rate * on_s)
        f = ((2.0 + k) - math.sqrt((2.0 + k) ** 2 - 4.0)) / 2.0  # root in (0, 1)
    else:
        f = 0.25 if on_frac is None else on_frac
        if not 0 < f < 1:
            raise SpecError(f"on_frac ({f}) must be in (0, 1)")
        on_s = excess * f / (2.0 * rate * (1.0 - f) ** 2)
    return MMPP(rate_hi=rate / f, rate_lo=0.0, hi_s=on_s, lo_s=on_s * (1.0 - f) / f)


def mmpp(process: MMPP, duration_s: float, seed: Seed = 0) -> FloatArray:
    """Arrival times of ``process`` over ``[0, duration_s)``, starting in its stationary state."""
    check_positive("duration_s", duration_s)
    rng = _rng(seed)
    means = np.array([process.hi_s, process.lo_s])
    rates = np.array([process.rate_hi, process.rate_lo])
    expected = 2.0 * duration_s / (means[0] + means[1])
    if expected > _MAX_SOJOURNS:
        raise SpecError(
            f"MMPP would switch state ~{expected:.3g} times in {duration_s} s "
            f"(limit {_MAX_SOJOURNS}): use longer sojourns or a shorter duration"
        )
    first = 0 if rng.random() < means[0] / (means[0] + means[1]) else 1
    size = int(expected + 6.0 * math.sqrt(expected) + 16)
    starts: list[FloatArray] = []
    lengths: list[FloatArray] = []
    states: list[npt.NDArray[np.int64]] = []
    total, state0 = 0.0, first
    while total < duration_s:
        state = (state0 + np.arange(size)) % 2
        length = rng.exponential(1.0, size) * means[state]
        end = total + np.cumsum(length)
        starts.append(end - length)
        lengths.append(length)
        states.append(state)
        total, state0 = float(end[-1]), int((state0 + size) % 2)
    start = np.concatenate(starts)
    length = np.concatenate(lengths)
    state = np.concatenate(states)
    keep = start < duration_s
    start, state = start[keep], state[keep]
    length = np.minimum(length[keep], duration_s - start)
    counts = rng.poisson(rates[state] * length)
    t = np.repeat(start, counts) + rng.random(int(counts.sum())) * np.repeat(length, counts)
    t.sort()
    return t

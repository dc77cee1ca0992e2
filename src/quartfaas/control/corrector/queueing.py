"""Queueing models for the Replica Corrector's feed-forward estimate (pure maths, no I/O).

Neighbours: ``corrector.py`` calls ``replicas_for_slo`` once per stage per tick with the
*measured* arrival rate, service rate and SCVs from ``snapshot.py``; ``budget.py`` supplies
the per-stage latency budget. Nothing here knows about stages or time.

What is modelled (and how it differs from the prototype, see the reference §1.1/§6):

* **M/M/c, Erlang C.** ``erlang_c(c, a)`` is the probability that an arrival waits, with
  offered load ``a = λ/μ``. It is computed from the Erlang-B recursion
  ``B(k) = a·B(k-1) / (k + a·B(k-1))`` and ``C = B / (1 - ρ(1 - B))``, ``ρ = a/c``; every
  intermediate value lies in (0, 1], so there is no factorial or power overflow for
  ``c`` in the thousands and ``a`` in the hundreds. The mean wait is
  ``Wq = C / (cμ - λ)`` (the prototype returned ``Lq``, a queue length, as a time), and
  the wait tail is ``P(W > t) = C·exp(-(cμ - λ)·t)``.
* **G/G/c, Allen–Cunneen.** ``Wq(G/G/c) ≈ g·Wq(M/M/c)`` with the variability factor
  ``g = (ca² + cs²)/2`` from the measured squared coefficients of variation. We extend it
  to a tail by keeping the M/M/c delay probability ``C`` and stretching the conditional
  (exponential) wait by ``g``, i.e. the tail rate becomes ``(cμ - λ)/g``:
  ``P(W > t) ≈ C·exp(-(cμ - λ)·t/g)``. Its mean is exactly the Allen–Cunneen mean, and for
  ``g = 1`` it is the exact M/M/c tail.
* **Sojourn percentile (service + wait).** ``sojourn_percentile`` returns the service
  percentile (a Gamma distribution with the measured mean and SCV: exponential when the
  SCV is 1, a point mass when it is 0) *plus* the wait percentile. For a tail percentile
  this over-states the percentile of the sum, so the estimate errs towards more replicas.
  ``tests/unit/test_queueing.py`` measures it against the exact M/M/c sojourn
  distribution (c 1-50, utilisation 0.1-0.95, p99 and p99.9: 0.9997x-1.57x the exact
  value; the rare shortfall is when just under ``1 - pct`` of arrivals wait, so the wait
  percentile is 0 though waiting still shifts the tail) and against a G/G/c FCFS
  simulation (1.06x-1.37x the simulated p99 on the cases there). Below p95 the shortfall
  can reach 10 % (c=1, utilisation 0.1, p90).

Unknown SCVs are passed as 1 by the caller (the M/M/c assumption), never silently as 0.
"""

from __future__ import annotations

import math
from enum import StrEnum
from functools import lru_cache
from statistics import NormalDist
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

INF = math.inf
# Below this SCV the service time is treated as deterministic (Gamma shape 1/scv overflows).
_DETERMINISTIC_SCV = 1e-6
# Above this SCV the Gamma fit is meaningless for a model stage; clamp rather than explode.
_MAX_SCV = 100.0
# Slack for float round-off in "ceil(a / max_util)" and utilisation comparisons.
_EPS = 1e-9


def _check_pct(pct: float) -> None:
    if not 0.0 < pct < 1.0:
        raise ValueError(f"percentile must be in (0, 1), got {pct}")


def erlang_b(c: int, a: float) -> float:
    """Erlang-B blocking probability for ``c`` servers and offered load ``a`` (erlangs)."""
    if c < 0 or a < 0:
        raise ValueError(f"need c >= 0 and a >= 0, got c={c}, a={a}")
    b = 1.0
    for k in range(1, c + 1):
        ab = a * b
        b = ab / (k + ab)
    return b


def erlang_c_from_b(c: int, a: float, b: float) -> float:
    """Erlang C from Erlang B for the same ``c`` and ``a`` (1.0 when ``a >= c``)."""
    if a >= c:
        return 1.0
    rho = a / c
    return b / (1.0 - rho * (1.0 - b))


def erlang_c(c: int, a: float) -> float:
    """Probability that an arrival waits in M/M/c (1.0 when unstable, ``a >= c``)."""
    if c <= 0:
        return 1.0
    if a <= 0:
        return 0.0
    return erlang_c_from_b(c, a, erlang_b(c, a))


def variability_factor(scv_a: float, scv_s: float) -> float:
    """Allen–Cunneen's ``(ca² + cs²)/2``; 1 for M/M/c."""
    return (max(0.0, scv_a) + min(max(0.0, scv_s), _MAX_SCV)) / 2.0


def mmc_wait_mean(c: int, lam: float, mu: float) -> float:
    """Mean wait in queue ``Wq = C(c, a)/(cμ - λ)``, seconds (``inf`` when unstable)."""
    if lam <= 0:
        return 0.0
    if mu <= 0 or lam >= c * mu:
        return INF
    return erlang_c(c, lam / mu) / (c * mu - lam)


def ggc_wait_mean(c: int, lam: float, mu: float, scv_a: float, scv_s: float) -> float:
    """Allen–Cunneen mean wait ``g·Wq(M/M/c)``, seconds."""
    w = mmc_wait_mean(c, lam, mu)
    return w if w in (0.0, INF) else variability_factor(scv_a, scv_s) * w


def wait_tail(
    c: int, lam: float, mu: float, t: float, *, scv_a: float = 1.0, scv_s: float = 1.0
) -> float:
    """``P(W > t)``: exact for M/M/c (SCVs 1), the Allen–Cunneen extension otherwise."""
    if lam <= 0:
        return 0.0
    if mu <= 0 or lam >= c * mu:
        return 1.0
    p_wait = erlang_c(c, lam / mu)
    if t <= 0:
        return p_wait
    g = variability_factor(scv_a, scv_s)
    if g <= 0:
        return 0.0
    return p_wait * math.exp(-(c * mu - lam) * t / g)


def _wait_pct(p_wait: float, theta: float, g: float, pct: float) -> float:
    """Inverse of ``P(W > t) = p_wait·exp(-θt/g)`` at ``pct`` (0 if few enough arrivals wait)."""
    tail = 1.0 - pct
    if p_wait <= tail or g <= 0:
        return 0.0
    return g * math.log(p_wait / tail) / theta


def wait_percentile(
    c: int, lam: float, mu: float, pct: float, *, scv_a: float = 1.0, scv_s: float = 1.0
) -> float:
    """The ``pct`` percentile of the wait in queue, seconds (``inf`` when unstable)."""
    _check_pct(pct)
    if lam <= 0:
        return 0.0
    if mu <= 0 or lam >= c * mu:
        return INF
    p_wait = erlang_c(c, lam / mu)
    return _wait_pct(p_wait, c * mu - lam, variability_factor(scv_a, scv_s), pct)


@lru_cache(maxsize=64)
def _normal_quantile(p: float) -> float:
    return NormalDist().inv_cdf(p)


def _lower_gamma_p(k: float, x: float) -> float:
    """Regularised lower incomplete gamma ``P(k, x)`` (series below ``k+1``, else Lentz's
    continued fraction for ``Q``), as in Numerical Recipes §6.2."""
    if x <= 0.0:
        return 0.0
    log_front = k * math.log(x) - x - math.lgamma(k)
    if x < k + 1.0:
        term = total = 1.0 / k
        ap = k
        for _ in range(1000):
            ap += 1.0
            term *= x / ap
            total += term
            if abs(term) < abs(total) * 1e-15:
                break
        return min(1.0, total * math.exp(log_front))
    tiny = 1e-300
    b = x + 1.0 - k
    c = 1.0 / tiny
    d = 1.0 / b
    h = d
    for i in range(1, 1000):
        an = -i * (i - k)
        b += 2.0
        d = an * d + b
        d = tiny if abs(d) < tiny else d
        c = b + an / c
        c = tiny if abs(c) < tiny else c
        d = 1.0 / d
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < 1e-15:
            break
    return max(0.0, 1.0 - math.exp(log_front) * h)


def _gamma_quantile_exact(k: float, p: float) -> float:
    """``x`` with ``P(k, x) = p`` for a unit-scale Gamma of shape ``k``: Newton steps from
    the Wilson–Hilferty guess, safeguarded by bisection (tens of microseconds)."""
    z = _normal_quantile(p)
    v = 1.0 / (9.0 * k)
    guess = k * max(1e-3, 1.0 - v + z * math.sqrt(v)) ** 3
    lo, hi = 0.0, max(guess, 1e-12)
    while _lower_gamma_p(k, hi) < p:
        lo, hi = hi, hi * 2.0
    x = min(max(guess, lo), hi)
    lg = math.lgamma(k)
    for _ in range(200):
        f = _lower_gamma_p(k, x) - p
        if abs(f) < 1e-14:
            break
        if f < 0:
            lo = x
        else:
            hi = x
        pdf = math.exp((k - 1.0) * math.log(x) - x - lg) if x > 0 else 0.0
        step = x - f / pdf if pdf > 0 else -1.0
        x = step if lo < step < hi else 0.5 * (lo + hi)
        if hi - lo <= 1e-13 * hi:
            break
    return x


# Shapes 1/scv with scv in [1/_WH_SHAPE, _MAX_SCV] use a table of exact quantiles at
# log-spaced shapes, interpolated in log-log space; larger shapes use Wilson–Hilferty.
# Both are within about 0.1 % of the exact quantile at p90-p99.99 (the worst case is an
# SCV near 100, irrelevant for model stages; tests/unit/test_queueing.py checks it). The
# table costs ~256 exact solves once per percentile; a lookup costs about a microsecond,
# which keeps a 64-stage tick well inside its 2 ms budget.
_WH_SHAPE = 50.0
_TABLE_N = 256
_LOG_K0 = math.log(1.0 / _MAX_SCV)
_LOG_STEP = (math.log(_WH_SHAPE) - _LOG_K0) / (_TABLE_N - 1)


@lru_cache(maxsize=8)
def _log_quantile_table(p: float) -> tuple[float, ...]:
    return tuple(
        math.log(_gamma_quantile_exact(math.exp(_LOG_K0 + i * _LOG_STEP), p))
        for i in range(_TABLE_N)
    )


def _gamma_quantile(k: float, p: float) -> float:
    """``pct`` quantile of a unit-scale Gamma of shape ``k`` (``k >= 1/_MAX_SCV``)."""
    if k >= _WH_SHAPE:
        v = 1.0 / (9.0 * k)
        return k * (1.0 - v + _normal_quantile(p) * math.sqrt(v)) ** 3
    table = _log_quantile_table(p)
    u = (math.log(k) - _LOG_K0) / _LOG_STEP
    i = min(max(int(u), 0), _TABLE_N - 2)
    frac = u - i
    return math.exp(table[i] + (table[i + 1] - table[i]) * frac)


@lru_cache(maxsize=8192)  # a tick asks for each stage's few percentiles many times
def service_percentile(mean_s: float, scv: float, pct: float) -> float:
    """``pct`` percentile of a Gamma service time with this mean and SCV (shape ``1/scv``).

    SCV 1 gives the exponential ``-mean·ln(1 - pct)``; SCV ~0 gives the mean itself. The
    SCV is rounded to 4 decimals (a measured SCV is not that precise) so that the Gamma
    quantile can be cached.
    """
    _check_pct(pct)
    if mean_s <= 0:
        return 0.0
    if scv <= _DETERMINISTIC_SCV:
        return mean_s
    if scv == 1.0:
        return -mean_s * math.log1p(-pct)
    scv = min(scv, _MAX_SCV)
    return mean_s * scv * _gamma_quantile(1.0 / scv, pct)


@lru_cache(maxsize=8)
def _log_quantile_array(p: float) -> tuple[npt.NDArray[np.float64], float]:
    """``_log_quantile_table(p)`` as a (read-only) array, and the normal ``p`` quantile."""
    table = np.array(_log_quantile_table(p))
    table.flags.writeable = False
    return table, _normal_quantile(p)


def service_percentiles(
    mean_s: npt.NDArray[np.float64], scv: npt.NDArray[np.float64], pct: float
) -> npt.NDArray[np.float64]:
    """``service_percentile`` of several stages at once (the same formulas and table, in
    array operations, so to rounding the same values)."""
    _check_pct(pct)
    mean = np.asarray(mean_s, dtype=np.float64)
    v = np.minimum(np.asarray(scv, dtype=np.float64), _MAX_SCV)
    k = 1.0 / np.maximum(v, _DETERMINISTIC_SCV)
    table, z = _log_quantile_array(pct)
    u = (np.log(k) - _LOG_K0) / _LOG_STEP
    i = np.clip(u.astype(np.int64), 0, _TABLE_N - 2)
    gamma = np.exp(table[i] + (table[i + 1] - table[i]) * (u - i))
    wh = 1.0 / (9.0 * k)
    large = k * (1.0 - wh + z * np.sqrt(wh)) ** 3
    out = mean * v * np.where(k >= _WH_SHAPE, large, gamma)
    out = np.where(v == 1.0, -mean * math.log1p(-pct), out)
    out = np.where(v <= _DETERMINISTIC_SCV, mean, out)
    return np.where(mean <= 0, 0.0, out)


def sojourn_percentile(
    c: int, lam: float, mu: float, pct: float, *, scv_a: float = 1.0, scv_s: float = 1.0
) -> float:
    """Conservative ``pct`` percentile of time in a stage (service + wait), seconds."""
    if mu <= 0:
        return INF
    wait = wait_percentile(c, lam, mu, pct, scv_a=scv_a, scv_s=scv_s)
    return service_percentile(1.0 / mu, scv_s, pct) + wait


class PlanStatus(StrEnum):
    OK = "ok"  # the smallest c that meets the target
    IDLE = "idle"  # no arrivals: the minimum
    NO_SERVICE_RATE = "no-service-rate"  # μ unknown: no model answer
    INFEASIBLE = "infeasible"  # the service percentile alone exceeds the target
    CAPPED = "capped"  # even c_max does not meet the target


class SLOPlan(NamedTuple):
    """Answer of ``replicas_for_slo`` (immutable; a NamedTuple because the corrector builds
    one per stage per tick and a frozen dataclass costs several times more to construct).

    ``replicas`` is ``None`` only for ``NO_SERVICE_RATE``. ``predicted_s`` is the sojourn
    percentile at that count (``inf`` if it is unstable), ``service_pct_s`` the service
    percentile alone (the floor no replica count can beat).
    """

    status: PlanStatus
    replicas: int | None
    servers: int = 0
    predicted_s: float | None = None
    service_pct_s: float | None = None
    utilisation: float | None = None

    @property
    def meets(self) -> bool:
        return self.status in (PlanStatus.OK, PlanStatus.IDLE)


def replicas_for_slo(  # noqa: PLR0917 - the positional order is the documented API
    lam: float,
    mu: float | None,
    scv_a: float,
    scv_s: float,
    t_target: float,
    pct: float,
    servers_per_replica: int = 1,
    *,
    max_util: float = 1.0,
    c_max: int = 512,
    c_min: int = 1,
) -> SLOPlan:
    """Smallest replica count whose sojourn ``pct`` percentile is ``<= t_target``.

    Each replica offers ``servers_per_replica`` service slots of rate ``mu``. The count
    also keeps utilisation ``λ/(c·spr·μ) <= max_util``. ``c_min`` is returned for
    ``lam == 0``; ``mu`` None/<=0 gives no answer; a target below the service percentile
    itself is ``INFEASIBLE`` and returns the smallest count within ``max_util``; a target
    not met by ``c_max`` returns ``c_max`` as ``CAPPED``.

    Cost is O(c_max·spr) float operations (one incremental Erlang-B pass).
    """
    _check_pct(pct)
    if servers_per_replica < 1 or c_max < 1 or not 0 <= c_min <= c_max:
        raise ValueError(
            f"need servers_per_replica >= 1 and 0 <= c_min <= c_max, got "
            f"{servers_per_replica}, {c_min}, {c_max}"
        )
    if not 0.0 < max_util <= 1.0:
        raise ValueError(f"max_util must be in (0, 1], got {max_util}")
    if not t_target > 0:
        raise ValueError(f"t_target must be > 0, got {t_target}")
    if not lam >= 0:
        raise ValueError(f"lam must be >= 0, got {lam}")
    if mu is None or not mu > 0 or math.isinf(mu):
        if lam == 0:
            return SLOPlan(PlanStatus.IDLE, c_min)
        return SLOPlan(PlanStatus.NO_SERVICE_RATE, None)
    s_pct = service_percentile(1.0 / mu, scv_s, pct)
    if lam == 0:
        return SLOPlan(PlanStatus.IDLE, c_min, c_min * servers_per_replica, s_pct, s_pct, 0.0)

    spr = servers_per_replica
    a = lam / mu
    g = variability_factor(scv_a, scv_s)
    r_lo = max(c_min, 1, math.ceil(a / (max_util * spr) - _EPS))
    infeasible = s_pct > t_target
    r_lo = min(r_lo, c_max)
    # One Erlang-B pass up to the first candidate, then extend by ``spr`` servers a step.
    b = 1.0
    n = 0
    r = r_lo
    while True:
        servers = r * spr
        for k in range(n + 1, servers + 1):
            ab = a * b
            b = ab / (k + ab)
        n = servers
        if a >= servers:
            predicted = INF
        else:
            p_wait = erlang_c_from_b(servers, a, b)
            predicted = s_pct + _wait_pct(p_wait, servers * mu - lam, g, pct)
        util = a / servers
        if infeasible:
            return SLOPlan(PlanStatus.INFEASIBLE, r, servers, predicted, s_pct, util)
        if predicted <= t_target and util <= max_util + _EPS:
            return SLOPlan(PlanStatus.OK, r, servers, predicted, s_pct, util)
        if r >= c_max:
            return SLOPlan(PlanStatus.CAPPED, r, servers, predicted, s_pct, util)
        r += 1

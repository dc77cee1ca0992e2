"""End-to-end tail model of a pipeline: stage sojourns convolved on a grid (pure maths).

Neighbours: ``planner.py`` searches replica vectors with it; ``feedback.py`` corrects its
inputs (an effective service time per stage); ``queueing.py`` supplies Erlang C (stable
to c=512 through the Erlang-B recursion). Nothing here knows about snapshots or time.

Per stage with ``c`` replicas of ``servers_per_replica`` slots (``m = c·spr`` servers):

* **Service** ``S``: the measured mean and SCV, fitted by family: deterministic (SCV ~ 0),
  Gamma (0 < SCV < 1; exponential at 1), balanced-means hyper-exponential H2 (SCV > 1).
  A deterministic part is kept as an exact shift, not put on the grid.
* **Wait** ``W`` under G/G/m: ``P(W > t) = C·exp(-(mμ - λ)·t/g)`` with ``C`` the Erlang-C
  delay probability and ``g = (ca²_eff + cs²)/2`` (Allen–Cunneen's factor as a tail
  stretch; exact for M/M/m). ``ca²_eff = max(ca², I)``: ``I`` (``burst_factor``) is the
  index of dispersion of arrival counts over the horizon that matters (the SLO), which
  for correlated (MMPP) bursts exceeds the inter-arrival SCV. With the SCV alone the model
  undershoots the simulated p99 under MMPP arrivals (issue 12: 0.71-0.89x).
* **Sojourn** ``S + W`` (independent in FCFS: a request's own service does not depend on
  its wait).

The end-to-end latency adds the stage sojourns on a common grid by FFT. Services are
independent. Waits are grouped into units along the tandem (``_wait_units``): a
deterministic stage whose input is already spaced by at least ``d/m`` never waits, and
consecutive single-server deterministic stages wait once, at the slowest (Friedman 1965);
a unit's tail is the largest of its members'. The units' waits enter as a mixture:
weight ``1 - w`` independent, ``w`` comonotone (one quantile level for all: a burst makes
every stage wait at once), ``w = correlation_weight(stages)`` from the excess of the
burst factor over the inter-arrival SCV. Each mass is rounded to the nearest grid point
and cut at the grid's end ``X``, 1.25x an upper bound of the quantile (the smaller of a
union bound and Cantelli's), so the CDF below ``X`` is exact up to rounding. The
transforms are as long as the grid, with an exponential tilt (``tilted``): every mass at
point ``i`` is multiplied by ``e^{-αi}`` (``α = _TILT/grid``) before the transforms and
the sum's masses by ``e^{αi}`` after, so a sum beyond ``X`` that wraps around the circular
convolution arrives damped by ``e^{-_TILT}`` (2e-9). (The transforms used to be 4x the
grid, with no tilt; that took a third of the planner's reference check. The quantiles of
``benchmarks/planner_time.py``'s plans and the tail-model checks moved by < 1e-6.)

Validation against the simulator's engine (``sim/tailcheck.py``; pooled seeds, since at
rho 0.9 one seed's p99 moves +-20 %). ``CORR_SCALE`` (0.15) is the one fitted constant:
chosen on ``default_grid`` from 0, 0.1, 0.15, 0.2, 0.3 (0 left MMPP rho 0.9 at
0.93-0.94x; 0.3 pushed exponential cases to 1.18-1.28x), then reported on
``validation_grid`` (other utilisations, shapes, CVs and seeds). Measured with
``PYTHONPATH=src python benchmarks/tail_model.py`` (5 seeds x 200k requests): 31/54
within [0.95, 1.10], none under 0.95, ratio 0.96-1.86, median 1.09; with
``--validation --seeds 4``: 20/45 within, none under 0.95, ratio 0.97-3.04, median 1.12.
Within target: Poisson arrivals (all but the multi-server deterministic tandem, 1.15x),
MMPP and hyper-exponential at rho 0.9, MMPP with exponential service at rho 0.3-0.6.
Over: renewal bursts (hyper-exponential CV 2-4) at rho 0.3-0.75, 1.2-3.0x (Allen-Cunneen's
stretch over-states short local queues: the exact GI/M/1 decay rate would need more than
two moments of the arrival law); MMPP CV 4 with exponential service, 1.2-1.4x (the
comonotone share over-corrects); a tandem after a multi-server deterministic stage,
1.1-1.2x (its departures bunch, so the next stage is taken as independent).

Over 400 lines: the model, its grid arithmetic and the wait grouping share private
helpers that the planner's check calls with precomputed tails; splitting them would
export those helpers.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from quartfaas.control.corrector.queueing import (
    _lower_gamma_p,
    erlang_c,
    erlang_c_from_b,
    service_percentiles,
)
from quartfaas.frozen import copier, fast_init
from quartfaas.jit import jit

FloatArray = npt.NDArray[np.float64]
ComplexArray = npt.NDArray[np.complex128]

DETERMINISTIC_SCV = 1e-6
MAX_SCV = 100.0
DEFAULT_GRID = 1024
_TILT = 20.0  # the exponential tilt over a grid (module docstring; planner.py's too)
CORR_SCALE = 0.15


@fast_init
@dataclass(frozen=True, slots=True)
class StageLoad:
    """What the tail model needs about one stage (rates per second, times in seconds).

    ``arrival_scv`` is the inter-arrival SCV reaching the stage; ``burst_factor`` the index
    of dispersion of its arrival counts over the SLO horizon (1 for Poisson; ``None``
    means unknown and counts as ``arrival_scv``). ``cost`` is what one replica costs
    (accelerators, or cores for a CPU stage). Bounds are per-replica counts.
    """

    name: str
    arrival_rate: float
    service_mean_s: float
    service_scv: float = 1.0
    arrival_scv: float = 1.0
    burst_factor: float | None = None
    servers_per_replica: int = 1
    cost: float = 1.0
    min_replicas: int = 1
    max_replicas: int = 512

    def __post_init__(self) -> None:
        # One test per field, each evaluated once (a tick builds a few hundred of these).
        b = self.burst_factor
        if not 0 <= self.arrival_rate < math.inf:
            bad = "arrival_rate"
        elif not 0 < self.service_mean_s < math.inf:
            bad = "service_mean_s"
        elif not 0 <= self.service_scv <= MAX_SCV:
            bad = "service_scv"
        elif not 0 <= self.arrival_scv < math.inf:
            bad = "arrival_scv"
        elif not (b is None or 0 <= b < math.inf):
            bad = "burst_factor"
        elif not self.servers_per_replica >= 1:
            bad = "servers_per_replica"
        elif not 0 < self.cost < math.inf:
            bad = "cost"
        elif not 0 <= self.min_replicas <= self.max_replicas:
            bad = "min_replicas"
        else:
            return
        raise ValueError(f"stage {self.name!r}: bad {bad} = {getattr(self, bad)!r}")

    def with_load(self, arrival_rate: float, service_mean_s: float) -> StageLoad:
        """This stage with another arrival rate and service mean: ``dataclasses.replace``
        validating only the changed fields (a tick makes a few hundred of these copies;
        ``_derived`` is a ``frozen.copier``). ``test_with_load_is_replace`` compares."""
        if not 0 <= arrival_rate < math.inf:
            _bad(self.name, "arrival_rate", arrival_rate)
        if not 0 < service_mean_s < math.inf:
            _bad(self.name, "service_mean_s", service_mean_s)
        return _derived(self, arrival_rate, service_mean_s, self.burst_factor, self.min_replicas)

    def with_arrivals(self, arrival_rate: float, burst_factor: float | None) -> StageLoad:
        """This stage with another arrival rate and burst factor (``replace`` spelled out,
        as ``with_load``; ``test_with_load_is_replace`` checks it)."""
        if not 0 <= arrival_rate < math.inf:
            _bad(self.name, "arrival_rate", arrival_rate)
        if not (burst_factor is None or 0 <= burst_factor < math.inf):
            _bad(self.name, "burst_factor", burst_factor)
        return _derived(self, arrival_rate, self.service_mean_s, burst_factor, self.min_replicas)

    def with_min_replicas(self, min_replicas: int) -> StageLoad:
        """This stage with another ``min_replicas`` (``replace`` spelled out, as
        ``with_load``; ``test_with_load_is_replace`` checks both)."""
        if not 0 <= min_replicas <= self.max_replicas:
            _bad(self.name, "min_replicas", min_replicas)
        return _derived(
            self, self.arrival_rate, self.service_mean_s, self.burst_factor, min_replicas
        )

    @property
    def offered_load(self) -> float:
        """Busy servers on average, ``λ·E[S]``."""
        return self.arrival_rate * self.service_mean_s

    @property
    def effective_arrival_scv(self) -> float:
        """``max(ca², I)``: the arrival variability the wait tail is stretched by."""
        b = self.arrival_scv if self.burst_factor is None else self.burst_factor
        return b

    @property
    def deterministic(self) -> bool:
        return self.service_scv <= DETERMINISTIC_SCV

    def min_stable(self) -> int:
        """Fewest replicas with utilisation below 1."""
        if self.arrival_rate == 0:
            return 0
        return math.floor(self.offered_load / self.servers_per_replica) + 1


def _bad(name: str, field: str, value: object) -> None:
    raise ValueError(f"stage {name!r}: bad {field} = {value!r}")


# A copy of a StageLoad with these four fields (the callers validated them; the others
# were validated when the original was made).
_derived = copier(StageLoad, "arrival_rate", "service_mean_s", "burst_factor", "min_replicas")


@fast_init
@dataclass(frozen=True, slots=True)
class WaitTail:
    """``P(W > t) = p_wait·exp(-rate·t)``; ``rate == 0`` means unstable (infinite wait)."""

    p_wait: float
    rate: float

    @property
    def stable(self) -> bool:
        return self.rate > 0 or self.p_wait == 0

    def quantile(self, q: float) -> float:
        tail = 1.0 - q
        if self.p_wait <= tail:
            return 0.0
        if self.rate <= 0:
            return math.inf
        return math.log(self.p_wait / tail) / self.rate


def wait_quantiles(p_wait: FloatArray, rate: FloatArray, q: float) -> FloatArray:
    """``WaitTail(p_wait[k], rate[k]).quantile(q)`` for every ``k``, in array operations."""
    tail = 1.0 - q
    with np.errstate(divide="ignore", invalid="ignore"):
        out: FloatArray = np.where(
            p_wait <= tail, 0.0, np.where(rate <= 0, math.inf, np.log(p_wait / tail) / rate)
        )
    return out


def wait_tail(stage: StageLoad, replicas: int, *, erlang_b: float | None = None) -> WaitTail:
    """The modelled wait tail of ``stage`` with ``replicas`` replicas (``erlang_b``: the
    Erlang-B value at those servers, when the caller keeps the recursion)."""
    lam = stage.arrival_rate
    if lam == 0:
        return WaitTail(0.0, math.inf)
    m = replicas * stage.servers_per_replica
    mu = 1.0 / stage.service_mean_s
    if m <= 0 or lam >= m * mu:
        return WaitTail(1.0, 0.0)
    g = 0.5 * (stage.effective_arrival_scv + min(stage.service_scv, MAX_SCV))
    a = lam / mu
    p = erlang_c(m, a) if erlang_b is None else erlang_c_from_b(m, a, erlang_b)
    if g <= 0:
        return WaitTail(0.0, math.inf)
    return WaitTail(p, (m * mu - lam) / g)


def _h2(mean: float, scv: float) -> tuple[float, float, float]:
    p = 0.5 * (1.0 + math.sqrt((scv - 1.0) / (scv + 1.0)))
    return p, 2.0 * p / mean, 2.0 * (1.0 - p) / mean


def service_cdf(stage: StageLoad, t: FloatArray) -> FloatArray:
    """CDF of the service time at ``t`` (the deterministic case is a step at the mean)."""
    m, scv = stage.service_mean_s, min(stage.service_scv, MAX_SCV)
    t = np.asarray(t, dtype=np.float64)
    if scv <= DETERMINISTIC_SCV:
        return (t >= m).astype(np.float64)
    tp = np.maximum(t, 0.0)
    if scv == 1.0:
        return -np.expm1(-tp / m)
    if scv > 1.0:
        p, mu1, mu2 = _h2(m, scv)
        return 1.0 - p * np.exp(-mu1 * tp) - (1.0 - p) * np.exp(-mu2 * tp)
    return _gamma_cdf(1.0 / scv, m * scv, tp)


def _gamma_cdf(k: float, theta: float, t: FloatArray) -> FloatArray:
    """Gamma CDF (shape ``k > 1``) at sorted ``t >= 0`` (see ``_gamma_table``)."""
    fine, cum = _gamma_table(k, theta)
    return np.interp(t, fine, cum, left=0.0, right=1.0)


_GAMMA_POINTS = 385
# Shapes are rounded to a log grid of 1/64 (SCV within 0.8%; the mean is kept exact) so
# that a tick's tables are found again: a measured SCV moves every tick, and building the
# tables of 64 stages took ~0.9 ms of the controller tick. The sample SCV of even 300
# exponential service times has a standard error of ~16%, twenty times the rounding.
_SHAPE_BINS = 64.0

# Shape ``k = 1/scv`` of a Gamma service is in (1, 1/DETERMINISTIC_SCV): bins 0..885.
_MAX_BIN = math.ceil(math.log(1.0 / DETERMINISTIC_SCV) * _SHAPE_BINS)


class _UnitTables:
    """The unit-scale Gamma CDF table of every shape bin, built on first use: rows
    ``points`` and ``cdf`` (385 points over mean ± 12 standard deviations of the shape
    ``e^(bin/64)``; the mass outside is below 1e-9), by trapezoids on the density,
    normalised so that no mass is lost to integration error. Dense by bin (886 rows,
    5.5 MB), so a batch of stages is one gather whatever bins it mixes."""

    def __init__(self) -> None:
        self.points = np.zeros((_MAX_BIN + 1, _GAMMA_POINTS))
        self.cdf = np.zeros((_MAX_BIN + 1, _GAMMA_POINTS))
        self.shape = np.exp(np.arange(_MAX_BIN + 1) / _SHAPE_BINS)
        self.ready = np.zeros(_MAX_BIN + 1, dtype=bool)

    def need(self, bins: npt.NDArray[np.int64]) -> None:
        """Build the rows of ``bins`` not built yet (all in one array operation)."""
        ready = self.ready[bins]
        if ready.all():
            return
        missing = np.unique(bins[~ready])
        km = self.shape[missing]
        sd = np.sqrt(km)
        lo = np.maximum(0.0, km - 12.0 * sd)
        hi = km + 12.0 * sd
        fine = np.linspace(lo, hi, _GAMMA_POINTS, axis=1)
        x = np.maximum(fine, 1e-300)
        lg = np.array([math.lgamma(float(v)) for v in km])
        logpdf = (km - 1.0)[:, None] * np.log(x) - x - lg[:, None]
        pdf = np.where(fine > 0, np.exp(logpdf), 0.0)
        trap = 0.5 * (pdf[:, 1:] + pdf[:, :-1]) * (fine[:, 1:2] - fine[:, 0:1])
        # From 0 the density of a shape near 1 jumps from 0 to ~1 within the first step,
        # which trapezoids miss (1.6% of the CDF at shape 1.01): that step's mass is exact.
        for row in np.flatnonzero(lo == 0.0):
            trap[row, 0] = _lower_gamma_p(float(km[row]), float(fine[row, 1]))
        cum = np.zeros_like(fine)
        np.cumsum(trap, axis=1, out=cum[:, 1:])
        cum /= cum[:, -1:]
        self.points[missing] = fine
        self.cdf[missing] = cum
        self.ready[missing] = True


_UNIT = _UnitTables()


def _shape_bins(k: FloatArray) -> npt.NDArray[np.int64]:
    """The rounded shapes' bins, ``round(64·ln k)`` within ``[0, _MAX_BIN]``."""
    r = np.minimum(np.maximum(np.rint(np.log(k) * _SHAPE_BINS), 0), _MAX_BIN)  # np.clip
    out: npt.NDArray[np.int64] = r.astype(np.int64)
    return out


def _gamma_table(k: float, theta: float) -> tuple[FloatArray, FloatArray]:
    """``(points, CDF)`` of the Gamma with this mean ``k·theta`` and shape ``k`` rounded
    to its bin (``_UnitTables``, scaled)."""
    b = _shape_bins(np.array([k]))
    _UNIT.need(b)
    i = int(b[0])
    cdf = _UNIT.cdf[i].view()
    cdf.flags.writeable = False  # a row of the shared table
    return _UNIT.points[i] * (k * theta / _UNIT.shape[i]), cdf


def _rounded_pmf(cdf_at_half: FloatArray) -> FloatArray:
    """Masses at grid points 0..n-1 from the CDF at (i + 1/2)·Δ (nearest-point rounding)."""
    return np.diff(np.concatenate(([0.0], cdf_at_half)))


def service_pmf(stage: StageLoad, delta: float, n: int) -> FloatArray:
    """Random part of the service time on ``n`` grid points of step ``delta`` (cut at the
    end; the deterministic case is an exact shift, so a unit mass at 0)."""
    if stage.deterministic:
        out = np.zeros(n)
        out[0] = 1.0
        return out
    edges: FloatArray = (np.arange(n, dtype=np.float64) + 0.5) * delta
    return _rounded_pmf(service_cdf(stage, edges))


def service_rows(stages: Sequence[StageLoad], delta: float, n: int) -> FloatArray:
    """``service_pmf`` of every non-deterministic stage (rows, in order), with the
    exponential and hyper-exponential stages computed together in one array operation."""
    rand = [s for s in stages if not s.deterministic]
    out = np.empty((len(rand), n))
    if not rand:
        return out
    edges: FloatArray = (np.arange(n, dtype=np.float64) + 0.5) * delta
    scv_all = np.minimum(np.array([s.service_scv for s in rand]), MAX_SCV)
    gamma_mask = scv_all < 1.0
    closed = np.flatnonzero(~gamma_mask)
    if closed.size:
        p1, r1, r2 = np.array(
            [
                _h2(rand[i].service_mean_s, min(rand[i].service_scv, MAX_SCV))
                if rand[i].service_scv > 1.0
                else (1.0, 1.0 / rand[i].service_mean_s, 1.0)
                for i in closed.tolist()
            ]
        ).T
        e = edges[None, :]
        cdf = (
            1.0
            - p1[:, None] * np.exp(-r1[:, None] * e)
            - (1.0 - p1[:, None]) * np.exp(-r2[:, None] * e)
        )
        out[closed] = np.diff(cdf, axis=1, prepend=0.0)
    gamma = np.flatnonzero(gamma_mask)
    if gamma.size == 1:  # one stage (the feedback's per-stage quantiles): np.interp
        g0 = int(gamma[0])
        out[g0] = _rounded_pmf(service_cdf(rand[g0], edges))
    elif gamma.size:
        scv = scv_all[gamma]
        mean = np.array([s.service_mean_s for s in rand])[gamma]
        out[gamma] = _gamma_pmf_rows(1.0 / scv, mean * scv, delta, n)
    return out


def _gamma_pmf_rows(k: FloatArray, theta: FloatArray, delta: float, n: int) -> FloatArray:
    """Rounded masses of several Gamma stages (rows) on the grid ``(i + 1/2)·delta``,
    ``i < n``: the differences of ``_gamma_cdf``'s values there (the same cached
    ``_gamma_table`` per stage and the same linear interpolation), computed only on the
    few points where each row's CDF moves.

    The table's points are equally spaced, so each edge's interval and its place in it come
    from one division (no search, no gather of the points themselves); a place clipped to
    [0, 1] gives exactly 0 below the table and exactly 1 above it (its ends are 0 and 1,
    and ``a + (b - a)`` is ``b`` when ``b - a`` is exact, as it is for ``b = 1`` and
    ``a`` near it). So outside the table's span a row's masses are exactly 0, and a
    stage's service covers a few points of a grid that spans a whole pipeline's latency:
    each row is computed on its window (the table's span, two points of margin either
    side), and the rest of the row is 0. The values are those of the whole row, bit for
    bit (``tests/unit/test_tailmodel.py``)."""
    out = np.zeros((k.size, n))
    if k.size == 0 or n == 0:
        return out
    bins, lo, step = _stacked_tables(k, theta)
    _gamma_window_masses(out, _UNIT.cdf.reshape(-1), bins, lo, step, delta, _GAMMA_POINTS)
    return out


@jit
def _gamma_window_masses(  # noqa: PLR0917 - a numba kernel takes its arrays positionally
    out: FloatArray,
    cum: FloatArray,
    bins: npt.NDArray[np.int64],
    lo: FloatArray,
    step: FloatArray,
    delta: float,
    n_fine: int,
) -> None:
    """``_gamma_pmf_rows``'s masses into ``out`` (zeros, rows by stage): each row on its
    window of grid points (the table's span, two points of margin either side; all rows
    as wide as the widest, as the array form had them), the CDF at ``(i + 1/2)·delta``
    interpolated in the row's table (``cum``: the tables flat, ``bins``: each stage's
    row), its differences the masses. IEEE arithmetic, floor and truncation only: the
    same numbers compiled or not, and as ``_gamma_cdf``'s interpolation."""
    rows, n = out.shape
    first = np.empty(rows, dtype=np.int64)
    width = 0
    for r in range(rows):
        top = lo[r] + (n_fine - 1) * step[r]
        f = min(max(np.floor(lo[r] / delta - 0.5) - 2.0, 0.0), float(n))
        last = min(max(np.ceil(top / delta - 0.5) + 2.0, -1.0), float(n - 1))
        first[r] = int(f)
        width = max(width, int(last) - int(f) + 1)
    for r in range(rows):
        base = bins[r] * n_fine
        prev = 0.0  # the point before a window (if any) is below the table: CDF 0
        for w in range(width):
            i = first[r] + w
            pos = ((float(i) + 0.5) * delta - lo[r]) / step[r]
            j = int(pos)  # truncation is floor here: a negative place is clipped to 0
            j = min(max(j, 0), n_fine - 2)
            frac = min(max(pos - j, 0.0), 1.0)
            f0 = cum[base + j]
            value = (cum[base + j + 1] - f0) * frac + f0
            if i < n:
                out[r, i] = value - prev if w > 0 else value
            prev = value


def _stacked_tables(
    k: FloatArray, theta: FloatArray
) -> tuple[npt.NDArray[np.int64], FloatArray, FloatArray]:
    """``(bins, lo, step)``: these stages' shape bins (their rows of ``_UNIT.cdf``, built),
    with each row's first point and step scaled to the stage (the points are
    ``lo + i·step``)."""
    bins = _shape_bins(k)
    _UNIT.need(bins)
    scale = k * theta / _UNIT.shape[bins]
    lo = _UNIT.points[bins, 0] * scale  # each op as ``_gamma_table``'s: the paths agree
    return bins, lo, (_UNIT.points[bins, -1] * scale - lo) / (_GAMMA_POINTS - 1)


def wait_pmf(wt: WaitTail, delta: float, n: int) -> FloatArray:
    """The wait on ``n`` grid points of step ``delta`` (all mass past the end if unstable)."""
    if not wt.stable:
        return np.zeros(n)
    if wt.p_wait == 0 or math.isinf(wt.rate):
        out = np.zeros(n)
        out[0] = 1.0
        return out
    edges = (np.arange(n) + 0.5) * delta
    return _rounded_pmf(1.0 - wt.p_wait * np.exp(-wt.rate * edges))


def _check_inputs(stages: Sequence[StageLoad], replicas: Sequence[int], q: float) -> None:
    if not 0.0 < q < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {q}")
    if len(stages) != len(replicas):
        raise ValueError(f"{len(replicas)} replica counts for {len(stages)} stages")
    if not stages:
        raise ValueError("need at least one stage")
    if any(c < 0 for c in replicas):
        raise ValueError(f"replica counts must be >= 0, got {list(replicas)}")


def stage_quantile(stage: StageLoad, replicas: int, q: float, grid: int = DEFAULT_GRID) -> float:
    """The ``q`` quantile of one stage's sojourn (service + wait), seconds."""
    return e2e_quantile([stage], [replicas], q, grid=grid)


def _union_bound(
    stages: Sequence[StageLoad],
    replicas: Sequence[int],
    q: float,
    tails: Sequence[WaitTail] | None = None,
) -> float:
    """An upper bound of the random part's ``q`` quantile (``_union_bound_pr``)."""
    if tails is None:
        tails = [wait_tail(s, c) for s, c in zip(stages, replicas, strict=True)]
    p, r = _tail_arrays(tails)
    return _union_bound_pr(stages, p, r, q, correlation_weight(stages))


def _tail_arrays(tails: Sequence[WaitTail]) -> tuple[FloatArray, FloatArray]:
    """``(p_wait, rate)`` of these wait tails as arrays."""
    return np.array([wt.p_wait for wt in tails]), np.array([wt.rate for wt in tails])


def _union_bound_pr(
    stages: Sequence[StageLoad], p: FloatArray, r: FloatArray, q: float, weight: float
) -> float:
    """An upper bound of the random part's ``q`` quantile: the smaller of a union bound,
    P(sum > Σ t_k) <= Σ P(X_k > t_k), and Cantelli's one-sided Chebyshev bound,
    ``mean + sd·sqrt(q/(1-q))``. The union bound is tight for a few stages; Cantelli's
    grows like the square root of the number of stages, so it keeps the grid fine for
    long pipelines. The variance is that of the waits taken comonotone (the largest the
    model's mixture can have; when ``weight``, the comonotone share, is above 0) and of
    each deterministic stage's wait taken separately (its group's largest wait is smaller
    than their sum). ``p``, ``r``: each stage's wait tail (``WaitTail``'s fields)."""
    eps = (1.0 - q) / (2.0 * len(stages))
    if not ((r > 0) | (p == 0)).all():
        return math.inf
    total = float(wait_quantiles(p, r, 1.0 - eps).sum())
    waits = (p > 0) & np.isfinite(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        m1 = np.where(waits, p / r, 0.0)
        v = np.maximum(np.where(waits, 2.0 * m1 / r - m1 * m1, 0.0), 0.0)  # not r**2: overflow
    rand = [s for s in stages if not s.deterministic]
    mean_s = np.array([s.service_mean_s for s in rand])
    scv = np.minimum(np.array([s.service_scv for s in rand]), MAX_SCV)
    mean = float(m1.sum() + mean_s.sum())
    var_svc = float((scv * mean_s**2).sum())
    h2 = scv > 1.0  # H2 tail: the slow branch's exponential quantile bounds it
    for h_mean, h_scv in zip(mean_s[h2].tolist(), scv[h2].tolist(), strict=True):  # rare
        p_fast, _, mu2 = _h2(h_mean, h_scv)
        total += math.log(max(1.0 - p_fast, eps) / eps) / mu2
    if (~h2).any():
        total += float(service_percentiles(mean_s[~h2], scv[~h2], 1.0 - eps).sum())
    var = var_svc + (float(np.sqrt(v).sum()) ** 2 if weight > 0 else float(v.sum()))
    cantelli = mean + math.sqrt(var * q / (1.0 - q))
    return min(total, cantelli)


@fast_init
@dataclass(frozen=True, slots=True)
class E2EDistribution:
    """The end-to-end latency's CDF: ``cdf[i] = P(T <= shift + i·delta)`` (cut at the end)."""

    shift: float
    delta: float
    cdf: FloatArray

    def quantile(self, q: float) -> float:
        """``q`` quantile by linear interpolation (``inf`` past the grid's end).

        Point ``i`` holds the mass rounded to it, i.e. up to ``(i + 1/2)·delta``: the
        interpolation runs between those upper edges (half a step up, the safe side)."""
        i = int(np.searchsorted(self.cdf, q, side="left"))
        if i >= self.cdf.size:
            return math.inf
        if i == 0:
            return self.shift + 0.5 * self.delta * (q / max(float(self.cdf[0]), q))
        lo, hi = float(self.cdf[i - 1]), float(self.cdf[i])
        frac = 0.0 if hi <= lo else (q - lo) / (hi - lo)
        return self.shift + (i - 0.5 + frac) * self.delta

    def prob_above(self, x: float) -> float:
        """``P(T > x)`` at the last grid edge ``(i + 1/2)·delta`` not above ``x`` (safe side)."""
        i = math.floor((x - self.shift) / self.delta - 0.5 + 1e-9)
        if i < 0:
            return 1.0
        if i >= self.cdf.size:
            return max(0.0, 1.0 - float(self.cdf[-1]))
        return max(0.0, 1.0 - float(self.cdf[i]))


def correlation_weight(stages: Sequence[StageLoad]) -> float:
    """Weight of the comonotone (fully correlated) component of the stage waits, in [0, 1).

    A burst makes every stage wait at once, so stage waits are positively correlated and
    their independent convolution is too thin. The signal is the excess of the index of
    dispersion over the SLO horizon (``burst_factor``) over the inter-arrival SCV at each
    stage: a renewal stream has ``I ~ ca²`` over long horizons, while a stream shaped by
    upstream queueing (departures of a queue that drains a burst) has ``I > ca²``. The
    weight is the mean over stages of ``max(0, 1 - ca²/I)``, times ``CORR_SCALE``; 0 when
    no burst factor is known.
    """
    ws = []
    for s in stages:
        b = s.burst_factor
        ws.append(0.0 if b is None or b <= 0 else max(0.0, 1.0 - s.arrival_scv / b))
    return min(0.95, CORR_SCALE * sum(ws) / len(ws))


def _tail_pmf(p: FloatArray, r: FloatArray, delta: float, n: int) -> FloatArray:
    """Masses on the grid of ``t -> max_k p_k·exp(-r_k·t)`` as a tail (one row)."""
    edges = (np.arange(n) + 0.5) * delta
    tail = np.max(p[:, None] * np.exp(-np.minimum(r[:, None] * edges[None, :], 700.0)), axis=0)
    return _rounded_pmf(1.0 - tail)


def _wait_rows(p: FloatArray, r: FloatArray, delta: float, n: int) -> FloatArray:
    """Masses of the waits ``P(W > t) = p·exp(-r·t)`` rounded to ``n`` grid points and cut
    (rows: stages), the same as ``wait_pmf`` for all stages in one array operation."""
    edges = (np.arange(n) + 0.5) * delta
    # -min(r·t, 700) and the differences of 1 - p·e in one pass each (the numpy
    # expressions' numbers: IEEE arithmetic; numpy's exp stays, ``jit``'s docstring)
    out: FloatArray = np.empty((p.size, n))
    _exponents(out, r, edges)
    np.exp(out, out=out)
    _tail_differences(out, p)
    return out


@jit
def _exponents(out: FloatArray, r: FloatArray, edges: FloatArray) -> None:
    """``out[k, i] = -min(r[k]·edges[i], 700)``."""
    for k in range(out.shape[0]):
        for i in range(out.shape[1]):
            x = r[k] * edges[i]
            out[k, i] = -(x if x <= 700.0 else 700.0)


@jit
def _tail_differences(e: FloatArray, p: FloatArray) -> None:
    """In place: each row ``e`` (``exp`` of the exponents) becomes the differences of the
    CDF ``1 - p·e`` along it, its first point the CDF itself (``np.diff`` with 0 before)."""
    for k in range(e.shape[0]):
        prev = 0.0
        for i in range(e.shape[1]):
            cdf = 1.0 - p[k] * e[k, i]
            e[k, i] = cdf - prev
            prev = cdf


_COMON_X = np.linspace(0.0, 60.0, 4097)
_COMON_X.flags.writeable = False


def _comonotone_pmf(units: _Waits, delta: float, n: int) -> FloatArray:
    """Masses on the grid of ``Σ_u Q_u(U)`` for one uniform ``U`` (comonotone waits), each
    unit's quantile ``Q_u(τ) = max_k max(0, log(p_k/τ)/r_k)`` at tail probability ``τ``."""
    p_max = _largest_p(units)
    x0 = -math.log(p_max)
    x = x0 + _COMON_X  # x = -log τ
    total = np.zeros_like(x)
    if units.single_p.size:
        # Σ_u max(0, (x - b_u)/r_u) with b_u = -log p_u is piecewise linear in x: with
        # the b_u sorted, it is x·Σ 1/r_u - Σ b_u/r_u over the units with b_u < x.
        b = -np.log(units.single_p)
        inv = 1.0 / units.single_r
        order = np.argsort(b)
        b, inv = b[order], inv[order]
        slope = np.concatenate(([0.0], np.cumsum(inv)))
        offset = np.concatenate(([0.0], np.cumsum(b * inv)))
        k = np.searchsorted(b, x, side="left")
        total += np.maximum(x * slope[k] - offset[k], 0.0)
    for p, r in units.runs:
        q = (np.log(p)[:, None] + x[None, :]) / r[:, None]
        total += np.maximum(q.max(axis=0), 0.0)
    edges = (np.arange(n) + 0.5) * delta
    xs = np.interp(edges, total, x, right=x[-1])
    return _rounded_pmf(1.0 - np.exp(-xs))


def _largest_p(units: _Waits) -> float:
    """The largest wait probability of any unit member."""
    top = [float(p.max()) for p, _ in units.runs]
    if units.single_p.size:
        top.append(float(units.single_p.max()))
    return max(top)


class _Waits(NamedTuple):
    """The wait units of a tandem (``_wait_units``): each single-stage unit's
    ``(p_wait, rate)`` as two arrays (in stage order), and each unit of several stages
    (a run of single-server deterministic stages) as a pair of arrays."""

    single_p: FloatArray
    single_r: FloatArray
    runs: list[tuple[FloatArray, FloatArray]]

    @property
    def n_units(self) -> int:
        return self.single_p.size + len(self.runs)


def _wait_units(
    stages: Sequence[StageLoad], replicas: Sequence[int], tails: Sequence[WaitTail]
) -> _Waits | None:
    """``_wait_units_pr`` of these wait tails."""
    p, r = _tail_arrays(tails)
    return _wait_units_pr(stages, replicas, p, r)


def _wait_units_pr(
    stages: Sequence[StageLoad], replicas: Sequence[int], p: FloatArray, r: FloatArray
) -> _Waits | None:
    """Waits to convolve, as units (a unit's tail is the pointwise largest of its
    members'); ``None`` if a stage is unstable. ``p``, ``r``: each stage's wait tail
    (``WaitTail``'s fields).

    The stages are a tandem, in order, and deterministic service shapes the stream:

    * a lower bound ``gap`` on the spacing of the requests reaching each stage is carried
      along (0 at the entry). A deterministic stage of ``m`` servers and service ``d``
      with ``gap >= d/m`` never waits (any ``m`` consecutive arrivals span at least
      ``d``): its wait is dropped, and its departures are its arrivals shifted by ``d``
      (the gap is kept). A single deterministic server's departures are at least ``d``
      apart, so after one the gap is ``d``; after anything else it is 0.
    * consecutive single-server deterministic stages that wait (with only never-waiting
      stages between them) form one unit: in such a tandem a request's total wait equals
      its wait at the slowest server alone (Friedman 1965), so the unit's tail is the
      largest of theirs, not their convolution. Every other waiting stage is its own unit
      (with no deterministic stage, every waiting stage: one array operation).
    """
    if not ((r > 0) | (p == 0)).all():  # some stage unstable (``WaitTail.stable``)
        return None
    if not any(s.service_scv <= DETERMINISTIC_SCV for s in stages):  # ``deterministic``
        some = (p > 0) & np.isfinite(r)
        return _Waits(p[some], r[some], [])
    ps: list[float] = []
    rs: list[float] = []
    cuts: list[int] = []  # where each unit ends in ps/rs
    run = False  # the last unit is a run of single-server deterministic stages
    gap = 0.0

    def add(pk: float, rk: float, in_run: bool) -> None:
        nonlocal run
        ps.append(pk)
        rs.append(rk)
        if in_run and run:
            cuts[-1] += 1
        else:
            cuts.append(len(ps))
        run = in_run

    for s, c, pk, rk in zip(stages, replicas, p.tolist(), r.tolist(), strict=True):
        waits = pk > 0 and math.isfinite(rk)
        if not s.deterministic:
            run = False
            if waits:
                add(pk, rk, False)
            gap = 0.0
            continue
        servers = c * s.servers_per_replica
        if not waits or servers <= 0 or gap >= s.service_mean_s / servers * (1.0 - 1e-9):
            continue  # never waits: the stream passes shifted by the service time
        if servers == 1:
            add(pk, rk, True)
            gap = s.service_mean_s
        else:
            add(pk, rk, False)
            gap = 0.0
    p_all, r_all = np.array(ps), np.array(rs)
    starts = [0, *cuts[:-1]] if cuts else []
    single = [a for a, b in zip(starts, cuts, strict=True) if b - a == 1]
    runs = [(p_all[a:b], r_all[a:b]) for a, b in zip(starts, cuts, strict=True) if b - a > 1]
    return _Waits(p_all[single], r_all[single], runs)


def tilted(grid: int) -> tuple[FloatArray, FloatArray]:
    """``(e^{-αi}, e^{αi})`` for ``i`` in ``0..grid-1``, ``α = _TILT/grid`` (kept per grid,
    read-only)."""
    got = _TILTS.get(grid)
    if got is None:
        i = np.arange(grid, dtype=np.float64) * (_TILT / grid)
        got = (np.exp(-i), np.exp(i))
        for a in got:
            a.flags.writeable = False
        _TILTS[grid] = got
    return got


_TILTS: dict[int, tuple[FloatArray, FloatArray]] = {}


def e2e_distribution(
    stages: Sequence[StageLoad],
    replicas: Sequence[int],
    x_max: float,
    grid: int = DEFAULT_GRID,
    *,
    tails: Sequence[WaitTail] | None = None,
) -> E2EDistribution:
    """End-to-end CDF on ``grid`` points up to ``x_max`` seconds past the deterministic shift.

    The waits enter as a mixture: with weight ``1 - w`` independent (product of the
    transforms), with weight ``w = correlation_weight(stages)`` comonotone (one common
    quantile level for every stage's wait); services are independent of both."""
    if not x_max > 0 or grid < 8:
        raise ValueError(f"need x_max > 0 and grid >= 8, got {x_max}, {grid}")
    shift = sum(s.service_mean_s for s in stages if s.deterministic)
    if tails is None:
        tails = [wait_tail(s, c) for s, c in zip(stages, replicas, strict=True)]
    p, r = _tail_arrays(tails)
    units = _wait_units_pr(stages, replicas, p, r)
    return _distribution(stages, units, shift, x_max, grid, correlation_weight(stages))


def _distribution(  # noqa: PLR0917 - e2e_distribution's core, called in two places
    stages: Sequence[StageLoad],
    units: _Waits | None,
    shift: float,
    x_max: float,
    grid: int,
    weight: float,
) -> E2EDistribution:
    """``e2e_distribution`` of these wait units (``weight``: ``correlation_weight``)."""
    delta = x_max / (grid - 1)
    length = grid
    if units is None:
        return E2EDistribution(shift, delta, np.zeros(grid))
    tilt, untilt = tilted(grid)
    svc_rows = service_rows(stages, delta, grid)
    rows = [_tail_pmf(p, r, delta, grid) for p, r in units.runs]
    if units.single_p.size:
        rows.append(_wait_rows(units.single_p, units.single_r, delta, grid))
    ones = np.ones(length // 2 + 1, dtype=np.complex128)
    svc = ones
    if svc_rows.shape[0]:
        svc = np.prod(np.fft.rfft(svc_rows * tilt, length, axis=1), axis=0)
    spec = svc
    if rows:
        spec = svc * np.prod(np.fft.rfft(np.vstack(rows) * tilt, length, axis=1), axis=0)
    w = weight if units.n_units > 1 else 0.0
    if w > 0:
        comon = svc * np.fft.rfft(_comonotone_pmf(units, delta, grid) * tilt, length)
        spec = (1.0 - w) * spec + w * comon
    pmf = np.fft.irfft(spec, length) * untilt
    cdf = np.minimum(np.maximum.accumulate(np.cumsum(pmf)), 1.0)
    return E2EDistribution(shift, delta, cdf)


def e2e_quantile(
    stages: Sequence[StageLoad],
    replicas: Sequence[int],
    q: float,
    *,
    grid: int = DEFAULT_GRID,
    tails: Sequence[WaitTail] | None = None,
) -> float:
    """Modelled ``q`` quantile of the end-to-end latency, seconds (``inf`` if a stage is
    unstable). The grid ends 1.25x above a union bound of the quantile, so it is covered."""
    _check_inputs(stages, replicas, q)
    if tails is None:
        tails = [wait_tail(s, c) for s, c in zip(stages, replicas, strict=True)]
    elif len(tails) != len(stages):
        raise ValueError(f"{len(tails)} wait tails for {len(stages)} stages")
    p, r = _tail_arrays(tails)
    return e2e_quantile_pr(stages, replicas, p, r, q, grid)


def e2e_quantile_pr(  # noqa: PLR0917 - e2e_quantile's arrays, in its order
    stages: Sequence[StageLoad],
    replicas: Sequence[int],
    p: FloatArray,
    r: FloatArray,
    q: float,
    grid: int = DEFAULT_GRID,
) -> float:
    """``e2e_quantile`` with each stage's wait tail given as arrays (``p_wait``, ``rate``:
    ``WaitTail``'s fields; the planner has them as arrays). Inputs are not checked."""
    weight = correlation_weight(stages)
    bound = _union_bound_pr(stages, p, r, q, weight)
    if math.isinf(bound):
        return math.inf
    shift = sum(s.service_mean_s for s in stages if s.deterministic)
    if bound <= 0:
        return shift
    units = _wait_units_pr(stages, replicas, p, r)
    return _distribution(stages, units, shift, 1.25 * bound, grid, weight).quantile(q)


def stage_breakdown(
    stages: Sequence[StageLoad], replicas: Sequence[int], q: float
) -> tuple[tuple[float, float, float], ...]:
    """Per stage: (utilisation, wait probability, sojourn ``q`` quantile) at these counts."""
    _check_inputs(stages, replicas, q)
    out = []
    for s, c in zip(stages, replicas, strict=True):
        m = c * s.servers_per_replica
        util = math.inf if m == 0 else s.offered_load / m
        out.append((util, wait_tail(s, c).p_wait, stage_quantile(s, c, q, grid=512)))
    return tuple(out)


def index_of_dispersion(arrivals: FloatArray, window_s: float) -> float:
    """Index of dispersion of counts ``Var(N)/E[N]`` over windows of ``window_s`` seconds.

    A helper for measured arrival times (tests, benchmarks, collectors): 1 for Poisson,
    about the inter-arrival SCV for a renewal process over long windows, larger for
    correlated bursts. Needs at least 8 windows; returns 1 otherwise.
    """
    a = np.asarray(arrivals, dtype=np.float64)
    if a.size < 2 or not window_s > 0:
        return 1.0
    t0, t1 = float(a[0]), float(a[-1])
    n_win = int((t1 - t0) / window_s)
    if n_win < 8:
        return 1.0
    counts = np.bincount(((a - t0) / window_s).astype(np.int64), minlength=n_win)[:n_win]
    mean = float(counts.mean())
    return float(counts.var()) / mean if mean > 0 else 1.0

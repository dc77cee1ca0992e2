"""Joint replica planner: the cheapest replica vector whose modelled end-to-end quantile
meets the SLO (pure maths, no I/O).

Neighbours: the model is ``tailmodel.py`` (stage sojourns convolved); ``feedback.py``
corrects the model's inputs before a plan; ``hysteresis.py`` turns a plan into actions.
The SLO is not split into per-stage budgets: budgets are an *output* (each stage's
modelled sojourn quantile at the plan, for reasons and dashboards).

Search, on a grid of ``grid`` points over ``[0, SLO - deterministic service]``:

1. start every stage at its bound ``min_replicas`` raised to the fewest replicas with
   utilisation ``<= max_util``;
2. greedy: add the replica with the largest reduction of ``P(T > SLO)`` per unit cost
   until ``P(T > SLO) <= 1 - q`` (the quantile meets the SLO exactly when the tail
   probability at the SLO is at most ``1 - q``, so only one point of the CDF is needed);
3. trim: remove the replica whose removal saves most cost while staying feasible (by the
   smallest tail increase per unit cost), until none can go;
4. check with ``tailmodel.e2e_quantile`` (its own grid, ``check_grid`` points) and add
   replicas greedily if it disagrees, so a feasible plan's modelled quantile meets the
   SLO by that function.

The planner's own grid convolves every stage's wait independently; the check's model
(deterministic-stage grouping, comonotone burst share) is never above it for
deterministic tandems (grouping only removes waits), so the greedy is conservative there
and the check adds replicas only where the burst share raises the tail.

Speed: a candidate's end-to-end transform is the current product times one ratio of wait
transforms; each greedy step is one contraction over all stages. Wait tails and Erlang B
are vectorised over stages (an Erlang-B table grown for all stages at once), wait masses
go through one real FFT, and each (stage, count)'s wait transform is made once per plan
and kept (``_Model.waits_at``): the greedy transforms ``count + 1`` only once it has to add
a replica (a start from ``_wait_floor`` is often feasible already), and the trim, which
walks back over counts the greedy passed, and the check's extra greedy steps transform
nothing new. Service spectra are fixed per plan (and kept for the next plan with the same
services and grid: a tick's down-scale plan), and the final check reuses the wait tails.
The Erlang-B recursion, the wait parameters, the wait masses' exponents and scaling
(around numpy's ``exp``) and the index of kept transforms are small numba kernels
(``quartfaas/jit.py``: IEEE arithmetic only, the same numbers compiled or not), where
numpy spent more time dispatching its calls and making temporaries than computing.
None of this changes a number: ``tests/unit/test_tick_fast_paths.py`` runs whole ticks
on the straightforward code and compares plans bit for bit. The kept transforms are rows
of one array (a batch is one gather). The tick's down-scale threshold is ``plan_above``:
the search resumed from the tick's plan, with no second check (``plan_above_at``: the
same with the moved loads given as arrays, read from the plan's own stages). Figures
(``benchmarks/planner_time.py``, ``benchmarks/controller_tick.py``) are in the README's
benchmark table.

Over 400 lines: the search (start, greedy, trim, check) shares the ``_Model`` grid state;
a split would pass that state across modules.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from enum import StrEnum

import numpy as np
import numpy.typing as npt

from quartfaas.control.corrector.queueing import service_percentiles
from quartfaas.control.corrector.tailmodel import (
    MAX_SCV,
    StageLoad,
    WaitTail,
    e2e_quantile,
    e2e_quantile_pr,
    service_rows,
    wait_quantiles,
    wait_tail,
)
from quartfaas.frozen import fast_init
from quartfaas.jit import jit

ComplexArray = npt.NDArray[np.complex128]
PLAN_GRID = 128
CHECK_GRID = 256  # the grid of the final e2e_quantile check
# The transforms are as long as the grid (``_WRAP`` 1): only P(T <= SLO) is read, and the
# tilt below makes the wrap harmless. Every mass at grid point i is multiplied by e^{-αi}
# with α = _TILT/length before the transforms (an exponential tilt), and untilted in the
# weights. Mass that wraps around the circular transform (a sum beyond the SLO) then
# arrives damped by e^{-_TILT} (2e-9), so a far-from-feasible start does not read wrapped
# tail mass as mass below the SLO; the untilt multiplies rounding errors by at most
# e^{_TILT} (5e8, on errors of ~1e-16). Against transforms 4x the grid with a tilt of 30
# (the wrap then beyond 4x the SLO), the tail at the SLO moved by at most 2e-9 on 202
# vectors of a 64-stage pipeline (``benchmarks/planner_time.py``'s, from the start to
# far above the plan), the controller tick's 360 decisions were the same, and the tick
# was ~1 ms faster (README's benchmark table).
_WRAP = 1
_TILT = 20.0
_MAX_STEPS = 100_000


class PlanOutcome(StrEnum):
    FEASIBLE = "feasible"
    INFEASIBLE = "infeasible"  # no vector within the bounds meets the SLO
    IDLE = "idle"  # no stage has arrivals: every stage at its minimum


@fast_init
@dataclass(frozen=True, slots=True)
class Plan:
    """A planner's answer. ``replicas`` is the best vector found (the cheapest feasible
    one, or for ``INFEASIBLE`` the one with the lowest modelled quantile within bounds).
    ``budgets_s`` are derived: each stage's modelled sojourn ``q`` quantile (service plus
    wait quantiles, an upper bound) at ``replicas``."""

    outcome: PlanOutcome
    replicas: tuple[int, ...]
    cost: float
    quantile_s: float
    slo_s: float
    q: float
    budgets_s: tuple[float, ...]
    reason: str

    @property
    def feasible(self) -> bool:
        return self.outcome is not PlanOutcome.INFEASIBLE


def _grid_constants(
    grid: int,
) -> tuple[npt.NDArray[np.float64], ComplexArray, npt.NDArray[np.float64]]:
    """``(tilt, kernel, coef)`` of a planner grid (they depend on ``grid`` alone; kept).

    P(T <= SLO) = sum of the first n masses = Re(Φ · weights) (untilting each mass): the
    rfft half-spectrum counts every frequency but 0 and Nyquist twice (``coef``). The
    kernel sum_i (e^α·e^{2πij/L})^i is a geometric series."""
    got = _GRID_CACHE.get(grid)
    if got is None:
        length = _WRAP * grid
        j = np.arange(length // 2 + 1)
        alpha = _TILT / length
        tilt = np.exp(-alpha * np.arange(grid))
        ratio = np.exp(alpha + 2j * np.pi * j / length)
        kernel = (1.0 - ratio**grid) / (1.0 - ratio)
        coef = np.full(j.size, 2.0)
        coef[0] = 1.0
        coef[-1] = 1.0
        for a in (tilt, kernel, coef):
            a.flags.writeable = False
        got = _GRID_CACHE[grid] = (tilt, kernel, coef)
    return got


_GRID_CACHE: dict[int, tuple[npt.NDArray[np.float64], ComplexArray, npt.NDArray[np.float64]]] = {}


def _wait_spectra(
    p_wait: npt.NDArray[np.float64],
    rate: npt.NDArray[np.float64],
    delta: float,
    n: int,
    length: int,
) -> ComplexArray:
    """Transforms (length ``length``) of the rounded, cut waits (rows: stages; 0 for an
    unstable stage).

    Masses: point 0 gets ``1 - C·e^{-rΔ/2}``, point ``i`` in 1..n-1 gets
    ``2C·sinh(rΔ/2)·e^{-riΔ}``, each tilted by ``e^{-αi}`` (see ``_TILT``); one real FFT
    of all rows (faster in numpy than the closed-form geometric series).
    """
    stable = rate > 0
    r = np.where(stable, rate, 1.0)
    rd = np.minimum(r * delta, 700.0)
    # The exponent of each mass's decay, -min(rΔ·i + α·i, 700), in one pass (numpy built
    # it from five temporaries); numpy's exp stays (``jit``'s module docstring).
    masses = np.empty((rd.size, n))
    _decay_exponents(masses, rd, _TILT / length)
    np.exp(masses, out=masses)
    _scale_rows(masses, 2.0 * p_wait * np.sinh(0.5 * rd), 1.0 - p_wait * np.exp(-0.5 * rd))
    spec = np.fft.rfft(masses, length, axis=1)
    spec[~stable] = 0.0
    return spec


@jit
def _decay_exponents(
    out: npt.NDArray[np.float64], rd: npt.NDArray[np.float64], alpha: float
) -> None:
    """``out[k, i] = -min(rd[k]·i + alpha·i, 700)``: elementwise the numpy expression it
    replaced (IEEE multiply, add and compare: the same numbers compiled or not)."""
    for k in range(out.shape[0]):
        for i in range(out.shape[1]):
            x = rd[k] * float(i) + alpha * float(i)
            out[k, i] = -(x if x <= 700.0 else 700.0)


@jit
def _scale_rows(
    masses: npt.NDArray[np.float64], scale: npt.NDArray[np.float64], head: npt.NDArray[np.float64]
) -> None:
    """Each row times its ``scale``, then its first point set to ``head``."""
    for k in range(masses.shape[0]):
        for i in range(1, masses.shape[1]):
            masses[k, i] = scale[k] * masses[k, i]
        masses[k, 0] = head[k]


class _Cols:
    """The stages' fields as arrays, read once per plan (each expression is elementwise
    the one ``StageLoad`` and ``tailmodel.wait_tail`` compute per stage: the same
    numbers)."""

    __slots__ = ("cost", "eff_scv", "hi", "lam", "lo", "load", "mean", "scv", "spr")

    def __init__(self, stages: Sequence[StageLoad]) -> None:
        num = np.array(
            [
                (
                    s.arrival_rate,
                    s.service_mean_s,
                    s.service_scv,
                    s.arrival_scv if s.burst_factor is None else s.burst_factor,
                    s.cost,
                )
                for s in stages
            ],
            dtype=np.float64,
        ).reshape(len(stages), 5)
        self.lam, self.mean, self.scv, self.eff_scv, self.cost = num.T.copy()
        ints = np.array(
            [(s.servers_per_replica, s.min_replicas, s.max_replicas) for s in stages],
            dtype=np.int64,
        ).reshape(len(stages), 3)
        self.spr, self.lo, self.hi = ints.T.copy()
        self.load = self.lam * self.mean  # ``offered_load``

    def with_load(self, lam: npt.NDArray[np.float64], lo: npt.NDArray[np.int64]) -> _Cols:
        """These columns with other arrival rates and ``min_replicas`` (the arrays of
        ``StageLoad.with_load`` and ``with_min_replicas`` copies of the stages)."""
        out = _Cols.__new__(_Cols)
        out.mean, out.scv, out.eff_scv, out.cost = self.mean, self.scv, self.eff_scv, self.cost
        out.spr, out.hi = self.spr, self.hi
        out.lam, out.lo = lam, lo
        out.load = lam * self.mean
        return out

    def start(self, max_util: float) -> npt.NDArray[np.int64]:
        """``_start``: each stage's ``min_replicas`` raised to the fewest replicas with
        utilisation ``<= max_util`` and below 1."""
        need = np.ceil(self.load / (self.spr * max_util) - 1e-9).astype(np.int64)
        need += self.load >= need * self.spr
        need[self.lam <= 0] = 0
        out: npt.NDArray[np.int64] = np.maximum(self.lo, need)
        return out


class _Model:
    """The planner's grid: fixed service spectra, wait spectra per replica count.

    ``stages`` give the services (the spectrum, the deterministic shift) and the stage
    count; the loads and bounds are ``cols``'s (``_Cols(stages)`` unless given: for
    ``plan_above_at``, the stages under other loads)."""

    def __init__(
        self, stages: Sequence[StageLoad], slo_s: float, grid: int, cols: _Cols | None = None
    ) -> None:
        self.stages = stages
        cols = _Cols(stages) if cols is None else cols
        self.spr = cols.spr
        self.lam = cols.lam
        self.load = cols.load
        self.mu = 1.0 / cols.mean
        self.g = 0.5 * (cols.eff_scv + np.minimum(cols.scv, MAX_SCV))
        # rows (lam, load, g, mu) by stage, as ``_wait_params`` reads them
        self._cols = np.ascontiguousarray(np.stack([self.lam, self.load, self.g, self.mu]))
        self._none = (self.lam == 0) | (self.g <= 0)  # no wait whatever the count
        self._erlang_b = np.ones((1, len(stages)))
        # Wait transforms by (stage, replicas): the greedy computes each once, and the
        # trim (which walks back over counts the greedy passed) and the final check's
        # extra greedy steps read them here instead of transforming again.
        # ``_slot[stage, replicas]``: the row of ``_store`` that holds it (-1: not made);
        # one array of rows, so a batch is one gather rather than a stack of rows.
        self._slot = np.full((len(stages), 16), -1, dtype=np.int64)
        self._store = np.empty((0, _WRAP * grid // 2 + 1), dtype=np.complex128)
        self._have = 0  # rows of ``_store`` in use
        self.shift = sum(s.service_mean_s for s in stages if s.deterministic)
        span = slo_s - self.shift
        self.n = grid
        self.delta = span / (grid - 0.5) if span > 0 else 1.0
        self.length = _WRAP * grid
        tilt, kernel, coef = _grid_constants(grid)
        svc = _service_spectrum(stages, self.delta, grid, tilt)
        self.weights = svc * kernel * coef / self.length

    def _grow(self, m_max: int) -> None:
        """Extend the Erlang-B table (rows: servers 0..M, columns: stages) to ``m_max``
        (``_erlang_b_rows``: the recursion for all stages at once)."""
        have = self._erlang_b.shape[0]
        if m_max < have:
            return
        top = max(m_max + 1, 2 * have)
        table = np.empty((top, self.load.size))
        table[:have] = self._erlang_b
        _erlang_b_rows(table, self.load, have)
        self._erlang_b = table

    def params(
        self, idx: npt.NDArray[np.int64], replicas: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``(p_wait, rate)`` of stages ``idx`` at ``replicas``: the arithmetic of
        ``tailmodel.wait_tail`` for each (``_wait_params``; rate 0: unstable; 1e300: no
        wait)."""
        p, r, need = _wait_params(self._erlang_b, self.spr, self._cols, self._none, idx, replicas)
        if need >= self._erlang_b.shape[0]:  # more servers than the table has rows
            self._grow(need)
            p, r, _ = _wait_params(self._erlang_b, self.spr, self._cols, self._none, idx, replicas)
        return p, r

    def tails(self, replicas: npt.NDArray[np.int64]) -> list[WaitTail]:
        """``tailmodel.wait_tail`` of every stage at ``replicas`` (from ``params``)."""
        p, r = self.pr(replicas)
        return [WaitTail(pi, ri) for pi, ri in zip(p.tolist(), r.tolist(), strict=True)]

    def pr(
        self, replicas: npt.NDArray[np.int64]
    ) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
        """``tails`` as arrays: ``(p_wait, rate)`` of every stage at ``replicas`` (a stage
        with no wait: 0 and infinity, as ``wait_tail``)."""
        p, r = self.params(np.arange(len(self.stages)), replicas)
        none = r >= 1e300
        return np.where(none, 0.0, p), np.where(none, math.inf, r)

    def waits(self, replicas: npt.NDArray[np.int64]) -> ComplexArray:
        return self.waits_at(np.arange(len(self.stages)), replicas)

    def waits_at(self, idx: npt.NDArray[np.int64], replicas: npt.NDArray[np.int64]) -> ComplexArray:
        """Wait transforms of stages ``idx`` at ``replicas`` (rows in that order, a new
        array). Each (stage, count) is transformed once per model and kept: a row does not
        depend on the batch it was computed in (elementwise masses, one FFT per row)."""
        k = idx.size
        rows = np.empty(k, dtype=np.int64)
        todo_s = np.empty(k, dtype=np.int64)
        todo_c = np.empty(k, dtype=np.int64)
        m = _find_rows(self._slot, idx, replicas, rows, todo_s, todo_c)
        if m < 0:  # a count beyond the table: widen it (to twice, or what is asked)
            old = self._slot
            wide = max(2 * old.shape[1], int(replicas.max()) + 1)
            self._slot = np.full((old.shape[0], wide), -1, dtype=np.int64)
            self._slot[:, : old.shape[1]] = old
            m = _find_rows(self._slot, idx, replicas, rows, todo_s, todo_c)
        if m == 0:
            return self._store[rows]
        p, r = self.params(todo_s[:m], todo_c[:m])
        made = _wait_spectra(p, r, self.delta, self.n, self.length)
        have = self._have
        size = self._store.shape[0]
        if have + m > size:
            size = max(2 * size, have + m, 4 * len(self.stages))
            grown = np.empty((size, made.shape[1]), dtype=np.complex128)
            grown[:have] = self._store[:have]
            self._store = grown
        self._store[have : have + m] = made
        self._have = have + m
        _keep_rows(self._slot, rows, todo_s, todo_c, m, have)
        if m == k:  # all new and distinct: the rows made are the answer, in order
            return made
        return self._store[rows]


@jit
def _erlang_b_rows(
    table: npt.NDArray[np.float64], load: npt.NDArray[np.float64], have: int
) -> None:
    """Fill rows ``have..`` of an Erlang-B table (rows: servers, columns: stages) by the
    recursion ``B(m) = a·B(m-1)/(m + a·B(m-1))`` from row ``have - 1``."""
    for m in range(have, table.shape[0]):
        for s in range(load.size):
            ab = load[s] * table[m - 1, s]
            table[m, s] = ab / (m + ab)


@jit
def _wait_params(  # noqa: PLR0917 - a numba kernel takes its arrays positionally
    table: npt.NDArray[np.float64],
    spr: npt.NDArray[np.int64],
    cols: npt.NDArray[np.float64],
    none: npt.NDArray[np.bool_],
    idx: npt.NDArray[np.int64],
    replicas: npt.NDArray[np.int64],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64], int]:
    """``(p_wait, rate, servers)`` of stages ``idx`` at ``replicas``: for ``m`` servers
    (replicas x ``spr``) and offered load ``a`` (``cols``: rows λ, a, g, μ; g is only
    read where positive), P(wait) is Erlang C from the table's Erlang B,
    ``B / (1 - (a/m)(1 - B))`` (1 where ``a >= m``), and the rate ``(mμ - λ)/g``; an
    unstable stage (``m = 0`` or ``λ >= mμ``) gets ``(1, 0)``, one with no wait (``none``)
    ``(0, 1e300)``. ``servers`` is the most servers asked for: where it is beyond the
    table's rows, the answers are not read (the caller grows the table and asks again).
    IEEE arithmetic only, as ``tailmodel.wait_tail``'s, so compiled or not the same
    numbers (``tests/unit/test_planner.py`` compares with the array formulas)."""
    k = idx.size
    p = np.empty(k)
    r = np.empty(k)
    most = 0
    rows = table.shape[0]
    for j in range(k):
        s = idx[j]
        m = replicas[j] * spr[s]
        most = max(most, m)
        if none[s]:
            p[j] = 0.0
            r[j] = 1e300
            continue
        lam = cols[0, s]
        mf = float(m)
        cap = mf * cols[3, s]
        if m > 0 and lam < cap and m < rows:
            a = cols[1, s]
            if a >= mf:
                p[j] = 1.0
            else:
                b = table[m, s]
                p[j] = b / (1.0 - (a / mf) * (1.0 - b))
            r[j] = (cap - lam) / cols[2, s]
        else:
            p[j] = 1.0
            r[j] = 0.0
    return p, r, most


@jit
def _find_rows(  # noqa: PLR0917 - a numba kernel takes its arrays positionally
    slot: npt.NDArray[np.int64],
    idx: npt.NDArray[np.int64],
    replicas: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    todo_s: npt.NDArray[np.int64],
    todo_c: npt.NDArray[np.int64],
) -> int:
    """The kept rows of (``idx``, ``replicas``) into ``rows``, and the pairs not kept yet
    (each once, in order of first appearance) into ``todo_s``/``todo_c``: their count, or
    -1 (nothing written) if a count is beyond the table. A pair not kept is marked in
    ``slot`` (``-2 - its place``) until ``_keep_rows`` gives it its row."""
    cap = slot.shape[1]
    for j in range(idx.size):
        if replicas[j] >= cap:
            return -1
    m = 0
    for j in range(idx.size):
        s = idx[j]
        c = replicas[j]
        v = slot[s, c]
        if v == -1:
            v = -2 - m
            slot[s, c] = v
            todo_s[m] = s
            todo_c[m] = c
            m += 1
        rows[j] = v
    return m


@jit
def _keep_rows(  # noqa: PLR0917 - a numba kernel takes its arrays positionally
    slot: npt.NDArray[np.int64],
    rows: npt.NDArray[np.int64],
    todo_s: npt.NDArray[np.int64],
    todo_c: npt.NDArray[np.int64],
    m: int,
    have: int,
) -> None:
    """``_find_rows``'s new pairs kept at rows ``have..have + m`` of the store, and the
    marks in ``rows`` replaced by those rows."""
    for i in range(m):
        slot[todo_s[i], todo_c[i]] = have + i
    for j in range(rows.size):
        if rows[j] < 0:
            rows[j] = have + (-2 - rows[j])


_SVC_CACHE: dict[tuple[object, ...], ComplexArray] = {}
_SVC_CACHE_SIZE = 8


def _service_spectrum(
    stages: Sequence[StageLoad], delta: float, grid: int, tilt: npt.NDArray[np.float64]
) -> ComplexArray:
    """Product of the tilted service transforms. Kept for the last few (service times,
    grid): a tick's plan and its down-scale plan share the SLO and the services, so the
    second plan reuses the first's spectrum (the values are the same either way)."""
    key = (grid, delta, tuple((s.service_mean_s, s.service_scv) for s in stages))
    svc = _SVC_CACHE.get(key)
    if svc is not None:
        return svc
    length = _WRAP * grid
    rows = service_rows(stages, delta, grid) * tilt
    if rows.size:
        svc = np.prod(np.fft.rfft(rows, length, axis=1), axis=0)
    else:
        svc = np.ones(length // 2 + 1, dtype=np.complex128)
    if len(_SVC_CACHE) >= _SVC_CACHE_SIZE:
        del _SVC_CACHE[next(iter(_SVC_CACHE))]
    _SVC_CACHE[key] = svc
    return svc


def _ratio(num: ComplexArray, den: ComplexArray) -> ComplexArray:
    out = np.zeros_like(num)
    np.divide(num, den, out=out, where=np.abs(den) > 1e-300)
    return out


def _budgets(
    stages: Sequence[StageLoad],
    replicas: Sequence[int],
    q: float,
    tails: Sequence[WaitTail] | None = None,
    pr: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
) -> tuple[float, ...]:
    """Each stage's service plus wait ``q`` quantiles at ``replicas``; the wait tails given
    as ``tails`` or as arrays ``pr`` (``_Model.pr``), else computed."""
    mean = np.array([s.service_mean_s for s in stages])
    scv = np.array([s.service_scv for s in stages])
    # service_percentile gives the mean itself for a deterministic stage
    svc = service_percentiles(mean, np.minimum(scv, 100.0), q)
    if pr is None:
        if tails is None:
            tails = [wait_tail(s, c) for s, c in zip(stages, replicas, strict=True)]
        pr = np.array([wt.p_wait for wt in tails]), np.array([wt.rate for wt in tails])
    return tuple((svc + wait_quantiles(pr[0], pr[1], q)).tolist())


def _start(stages: Sequence[StageLoad], max_util: float) -> list[int]:
    """``_Cols.start`` of these stages, as a list."""
    out: list[int] = _Cols(stages).start(max_util).tolist()
    return out


def _wait_floor(
    model: _Model,
    start: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
    room_s: float,
    q: float,
) -> npt.NDArray[np.int64]:
    """Raise each stage until its own wait ``q`` quantile fits in ``room_s`` (or its bound)."""
    out = start.copy()
    idx = np.arange(out.size)
    tail = 1.0 - q
    for _ in range(_MAX_STEPS):
        p, r = model.params(idx, out)
        with np.errstate(divide="ignore", invalid="ignore"):
            quant = np.where(p <= tail, 0.0, np.log(p / tail) / r)
        grow = (quant > room_s) & (out < hi)
        if not grow.any():
            break
        out[grow] += 1
    return out


def plan_replicas(
    stages: Sequence[StageLoad],
    slo_s: float,
    q: float = 0.99,
    *,
    max_util: float = 0.98,
    grid: int = PLAN_GRID,
    check_grid: int = CHECK_GRID,
) -> Plan:
    """The cheapest replica vector found whose modelled end-to-end ``q`` quantile is at
    most ``slo_s`` (see the module docstring). Never raises for an infeasible SLO: the
    answer's ``outcome`` says so and carries the best vector found."""
    if not 0 < q < 1 or not slo_s > 0 or not 0 < max_util <= 1 or grid < 8:
        raise ValueError(f"bad planner input: q={q}, slo_s={slo_s}, max_util={max_util}")
    if not stages:
        raise ValueError("need at least one stage")
    cols = _Cols(stages)
    costs, lo, hi = cols.cost, cols.lo, cols.hi

    def answer(
        outcome: PlanOutcome,
        reps: Sequence[int],
        quant: float,
        why: str,
        pr: tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]] | None = None,
    ) -> Plan:
        r = tuple(int(c) for c in reps)
        cost = float(np.dot(costs, r))
        return Plan(outcome, r, cost, quant, slo_s, q, _budgets(stages, r, q, pr=pr), why)

    if not (cols.lam != 0).any():
        reps = lo.tolist()
        return answer(PlanOutcome.IDLE, reps, e2e_quantile(stages, reps, q), "no arrivals")
    start = np.minimum(cols.start(max_util), hi)
    short = start * cols.spr <= cols.load
    if short.any():
        over = [s.name for s, bad in zip(stages, short.tolist(), strict=True) if bad]
        quant = math.inf
        return answer(
            PlanOutcome.INFEASIBLE,
            hi.tolist(),
            quant,
            f"max_replicas cannot carry the load of {', '.join(over)}",
        )
    model = _Model(stages, slo_s, grid, cols)
    if slo_s <= model.shift or 1.0 - float(model.weights.sum().real) > 1.0 - q:
        idle = [replace(s, arrival_rate=0.0) for s in stages]
        floor_s = e2e_quantile(idle, [1] * len(stages), q, grid=check_grid)
        reps = hi.tolist()
        return answer(
            PlanOutcome.INFEASIBLE,
            reps,
            e2e_quantile(stages, reps, q, grid=check_grid),
            f"service alone has a p{q * 100:g} of {floor_s:.3g}s"
            + (f" > SLO {slo_s:.3g}s" if floor_s > slo_s else f", too close to SLO {slo_s:.3g}s"),
        )
    # A necessary condition (T >= W_k + the deterministic service): each stage's own wait
    # quantile fits in the SLO's random part. Starting there saves most greedy steps.
    start = np.minimum(_wait_floor(model, start, hi, slo_s - model.shift, q), hi)
    reps = start.copy()
    target = 1.0 - q
    reps = _greedy(model, reps, hi, costs, target)
    reps = _trim(model, reps, start, costs, target)
    # Final check against the reference quantile; add greedily where the grids disagree.
    # (``e2e_quantile`` on the model's own wait tails, as arrays: ``_Model.pr``.)
    pr = model.pr(reps)
    quant = e2e_quantile_pr(stages, reps.tolist(), *pr, q, check_grid)
    steps = 0
    while quant > slo_s and steps < _MAX_STEPS:
        tighter = target * 0.9 ** (steps + 1)
        nxt = _greedy(model, reps.copy(), hi, costs, tighter)
        if np.array_equal(nxt, reps):
            break
        reps = nxt
        pr = model.pr(reps)
        quant = e2e_quantile_pr(stages, reps.tolist(), *pr, q, check_grid)
        steps += 1
    if quant > slo_s:
        return answer(
            PlanOutcome.INFEASIBLE,
            reps.tolist(),
            quant,
            f"best vector within max_replicas gives {quant:.3g}s > SLO {slo_s:.3g}s",
            pr,
        )
    return answer(
        PlanOutcome.FEASIBLE,
        reps.tolist(),
        quant,
        f"modelled p{q * 100:g} {quant:.3g}s <= SLO {slo_s:.3g}s",
        pr,
    )


def plan_above(
    stages: Sequence[StageLoad],
    slo_s: float,
    base: Sequence[int],
    q: float = 0.99,
    *,
    grid: int = PLAN_GRID,
) -> tuple[int, ...]:
    """The replicas that ``stages`` (the same pipeline as a plan's, under more load) need
    on top of ``base`` (that plan's vector) for the tail at ``slo_s`` to stay within
    ``1 - q`` on the planner's grid: the greedy from ``base`` raised to the wait floors,
    then the trim down to them.

    This is the down-scale threshold (the corrector's Schmitt trigger), so it is never
    below ``base``, and it skips what a plan proper does after the search: the check
    against ``e2e_quantile`` and the budgets (``base`` was checked; this vector only holds
    a scale-down back). Where the SLO cannot be met within the bounds, the greedy's best
    vector is returned, as ``plan_replicas`` does.
    """
    _check_above(slo_s, base, q, grid, len(stages))
    return _above(stages, _Cols(stages), slo_s, base, q=q, grid=grid)


def plan_above_at(
    stages: Sequence[StageLoad],
    slo_s: float,
    base: Sequence[int],
    q: float = 0.99,
    *,
    rates: npt.NDArray[np.float64],
    floors: npt.NDArray[np.int64],
    grid: int = PLAN_GRID,
) -> tuple[int, ...]:
    """``plan_above`` of ``stages`` with each arrival rate replaced by ``rates`` and each
    ``min_replicas`` by ``floors`` (``floors`` within the stages' bounds; ``rates``
    finite, not negative): the same vector as ``plan_above`` of the ``with_load`` /
    ``with_min_replicas`` copies, without making them (the corrector's down-scale
    threshold moves every stage's load; ``tests/unit/test_corrector.py`` compares)."""
    _check_above(slo_s, base, q, grid, len(stages))
    if rates.shape != (len(stages),) or floors.shape != (len(stages),):
        raise ValueError(f"{rates.shape} rates, {floors.shape} floors for {len(stages)} stages")
    if not (np.isfinite(rates).all() and (rates >= 0).all()):
        raise ValueError(f"bad arrival rates: {rates.tolist()}")
    cols = _Cols(stages)
    if ((floors < 0) | (floors > cols.hi)).any():
        raise ValueError(f"min_replicas {floors.tolist()} outside 0..{cols.hi.tolist()}")
    # The service spectrum and the deterministic shift are the stages' (their services
    # are unchanged); the loads are the columns'.
    return _above(stages, cols.with_load(rates, floors), slo_s, base, q=q, grid=grid)


def _check_above(slo_s: float, base: Sequence[int], q: float, grid: int, n: int) -> None:
    if not 0 < q < 1 or not slo_s > 0 or grid < 8:
        raise ValueError(f"bad planner input: q={q}, slo_s={slo_s}")
    if len(base) != n or not n:
        raise ValueError(f"{len(base)} base counts for {n} stages")


def _above(
    stages: Sequence[StageLoad],
    cols: _Cols,
    slo_s: float,
    base: Sequence[int],
    *,
    q: float,
    grid: int,
) -> tuple[int, ...]:
    """``plan_above``'s search on ``cols`` (``stages``: their services)."""
    hi = cols.hi
    reps = np.minimum(np.array(base, dtype=np.int64), hi)
    if not (cols.lam != 0).any():
        return tuple(reps.tolist())
    stable = cols.start(1.0)
    model = _Model(stages, slo_s, grid, cols)
    if (stable > hi).any() or slo_s <= model.shift:  # the bounds cannot carry the load
        return tuple(hi.tolist())
    floors = np.maximum(
        reps, _wait_floor(model, np.minimum(stable, hi), hi, slo_s - model.shift, q)
    )
    reps = _greedy(model, floors.copy(), hi, cols.cost, 1.0 - q)
    reps = _trim(model, reps, floors, cols.cost, 1.0 - q)
    return tuple(reps.tolist())


def _greedy(
    model: _Model,
    reps: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
    costs: npt.NDArray[np.float64],
    target: float,
) -> npt.NDArray[np.int64]:
    """Add replicas, one a step to the stage with the largest tail reduction per cost,
    until the tail at the SLO is within ``target``."""
    cur = model.waits(reps)
    phi = np.prod(cur, axis=0)
    nxt = ratio = None  # made on the first step: the start is often feasible already
    for _ in range(_MAX_STEPS):
        v = phi * model.weights
        tail_now = 1.0 - float(v.sum().real)
        if tail_now <= target:
            break
        if nxt is None or ratio is None:
            nxt = model.waits(reps + 1)
            ratio = _ratio(nxt, cur)
        tails = 1.0 - np.einsum("kf,f->k", ratio, v).real
        gain = (tail_now - tails) / costs
        gain[reps >= hi] = -np.inf
        best = float(gain.max())
        if not math.isfinite(best):
            break
        if best > 0:
            pick = _batch(gain, tails, tail_now, target)
        else:  # no single replica moves the tail on this grid: add the cheapest
            room = np.flatnonzero(reps < hi)
            pick = room[[int(np.argmin(costs[room]))]]
        phi = phi * np.prod(ratio[pick], axis=0)
        reps[pick] += 1
        cur[pick] = nxt[pick]
        nxt[pick] = model.waits_at(pick, reps[pick] + 1)
        ratio[pick] = _ratio(nxt[pick], cur[pick])
    return reps


def _batch(
    gain: npt.NDArray[np.float64],
    tails: npt.NDArray[np.float64],
    tail_now: float,
    target: float,
) -> npt.NDArray[np.int64]:
    """Stages to add one replica to this step: the best by gain per cost, as many as
    together (taking log-tail reductions as additive) close half the remaining log gap,
    so a far start takes a few steps and the last steps add one replica at a time."""
    order = np.argsort(-gain)
    order = order[gain[order] > 0]
    with np.errstate(divide="ignore"):
        logs = np.log(tail_now) - np.log(np.maximum(tails[order], 1e-300))
    need = 0.5 * (math.log(tail_now) - math.log(target))
    m = int(np.searchsorted(np.cumsum(logs), need)) + 1
    return order[: max(1, min(m, order.size))]


def _trim(
    model: _Model,
    reps: npt.NDArray[np.int64],
    floors: npt.NDArray[np.int64],
    costs: npt.NDArray[np.float64],
    target: float,
) -> npt.NDArray[np.int64]:
    """Remove replicas while the tail at the SLO stays within ``target``. Candidates are
    the stages whose removal alone keeps feasibility, costliest first (then smallest tail
    increase); a batch of them is tried together and halved until it stays feasible."""
    cand = np.flatnonzero(reps > floors)  # only these can lose a replica
    if cand.size == 0:  # nothing above its floor: nothing to remove
        return reps
    phi = np.prod(model.waits(reps), axis=0)
    # Rows of the candidates alone (a stage at its floor has ratio 1 and is never picked):
    # each row's numbers do not depend on the others (``tests/unit/test_tick_fast_paths``
    # compares with the rows of every stage).
    cur = model.waits_at(cand, reps[cand])
    prev = model.waits_at(cand, np.maximum(reps[cand] - 1, floors[cand]))
    ratio = _ratio(prev, cur)
    for _ in range(_MAX_STEPS):
        v = phi * model.weights
        tails = 1.0 - np.einsum("kf,f->k", ratio, v).real
        ok = np.flatnonzero((tails <= target) & (reps[cand] > floors[cand]))
        if ok.size == 0:
            break
        order = ok[np.lexsort((tails[ok], -costs[cand[ok]]))]
        m = order.size
        while m > 1:
            trial = phi * np.prod(ratio[order[:m]], axis=0)
            if 1.0 - float((trial * model.weights).sum().real) <= target:
                break
            m //= 2
        pick = order[:m]  # rows of ``cand``
        stages = cand[pick]
        phi = phi * np.prod(ratio[pick], axis=0)
        reps[stages] -= 1
        cur[pick] = prev[pick]
        prev[pick] = model.waits_at(stages, np.maximum(reps[stages] - 1, floors[stages]))
        ratio[pick] = _ratio(prev[pick], cur[pick])
    return reps

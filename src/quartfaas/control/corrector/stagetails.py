"""Many stages' modelled sojourn quantiles at once: ``tailmodel.stage_quantile`` batched.

Neighbours: ``tailmodel.py`` defines the model (``stage_quantile`` is the one-stage case
of ``e2e_quantile``); the corrector's feedback step compares each steady stage's measured
tail with this model's at the same quantile (``corrector._feedback``), which made one
``stage_quantile`` call, with its own few small numpy calls, per stage: on a feedback tick
of a 64-stage pipeline that was most of the tick's time outside the planner.

``stage_quantiles`` gives the same numbers bit for bit (``tests/unit/test_stagetails.py``
checks it against ``stage_quantile`` on random stages): every stage keeps its own grid
(step from its own bound), the masses are the same elementwise expressions as
``service_rows``/``_wait_rows``, row by row, and each row goes through its own real FFT
(one call for all rows; a row's transform does not depend on the other rows). Only the
per-stage bookkeeping (bound, wait units, quantile read-off) stays a Python loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from quartfaas.control.corrector.queueing import service_percentiles
from quartfaas.control.corrector.tailmodel import (
    DEFAULT_GRID,
    MAX_SCV,
    E2EDistribution,
    StageLoad,
    WaitTail,
    _check_inputs,
    _gamma_table,
    _h2,
    correlation_weight,
    tilted,
    wait_quantiles,
    wait_tail,
)


def stage_quantiles(
    stages: Sequence[StageLoad],
    replicas: Sequence[int],
    q: float,
    grid: int = DEFAULT_GRID,
) -> list[float]:
    """``[stage_quantile(s, c, q, grid) for s, c in zip(stages, replicas)]``, batched."""
    if len(stages) != len(replicas):
        raise ValueError(f"{len(replicas)} replica counts for {len(stages)} stages")
    out: list[float] = [math.nan] * len(stages)
    todo: list[int] = []
    bounds: list[float] = []
    waits: list[tuple[float, float] | None] = []
    tails = []
    for s, c in zip(stages, replicas, strict=True):
        _check_inputs([s], [c], q)
        tails.append(wait_tail(s, c))
    for i, (bound, wt) in enumerate(zip(_one_stage_bounds(stages, tails, q), tails, strict=True)):
        s = stages[i]
        shift = s.service_mean_s if s.deterministic else 0.0
        if math.isinf(bound):  # an unstable stage among them (e2e's all-zero CDF)
            out[i] = math.inf
            continue
        if bound <= 0:
            out[i] = shift
            continue
        # One stage's wait units: itself if it waits (``_wait_units``: with nothing
        # upstream, a deterministic stage's input gap is 0, so it waits as any other).
        waiting = wt.p_wait > 0 and math.isfinite(wt.rate)
        todo.append(i)
        bounds.append(bound)
        waits.append((wt.p_wait, wt.rate) if waiting else None)
    if not todo:
        return out
    if grid < 8:
        raise ValueError(f"need x_max > 0 and grid >= 8, got {1.25 * bounds[0]}, {grid}")
    length = grid  # tilted, as ``e2e_distribution``
    tilt, untilt = tilted(grid)
    delta = np.array([1.25 * b / (grid - 1) for b in bounds])
    edges = (np.arange(grid, dtype=np.float64) + 0.5)[None, :] * delta[:, None]
    spec = np.ones((len(todo), length // 2 + 1), dtype=np.complex128)
    svc = _service_masses([stages[i] for i in todo], edges)
    has_svc = [r for r, i in enumerate(todo) if not stages[i].deterministic]
    if has_svc:
        spec[has_svc] = np.fft.rfft(svc[has_svc] * tilt, length, axis=1)
    has_wait = [r for r, w in enumerate(waits) if w is not None]
    if has_wait:
        p = np.array([w[0] for w in waits if w is not None])
        rate = np.array([w[1] for w in waits if w is not None])
        e = edges[has_wait]
        cdf = 1.0 - p[:, None] * np.exp(-np.minimum(rate[:, None] * e, 700.0))
        spec[has_wait] = spec[has_wait] * np.fft.rfft(
            np.diff(cdf, axis=1, prepend=0.0) * tilt, length, axis=1
        )
    pmf = np.fft.irfft(spec, length, axis=1) * untilt
    cdfs = np.minimum(np.maximum.accumulate(np.cumsum(pmf, axis=1), axis=1), 1.0)
    for row, i in enumerate(todo):
        s = stages[i]
        shift = s.service_mean_s if s.deterministic else 0.0
        out[i] = E2EDistribution(shift, float(delta[row]), cdfs[row]).quantile(q)
    return out


def _one_stage_bounds(
    stages: Sequence[StageLoad], tails: Sequence[WaitTail], q: float
) -> list[float]:
    """``_union_bound([s], [c], q, [wt])`` of every stage: its array operations made once
    for all stages (each is elementwise, so a stage's values do not depend on the others)
    and its sums of one element written as that element, so the same numbers bit for bit
    (``tests/unit/test_stagetails.py``)."""
    eps = (1.0 - q) / 2.0
    p = np.array([wt.p_wait for wt in tails])
    r = np.array([wt.rate for wt in tails])
    mean_s = np.array([s.service_mean_s for s in stages])
    scv = np.minimum(np.array([s.service_scv for s in stages]), MAX_SCV)
    with np.errstate(divide="ignore", invalid="ignore"):
        waits_q = wait_quantiles(p, r, 1.0 - eps).tolist()
        svc_q = service_percentiles(mean_s, scv, 1.0 - eps).tolist()
    out: list[float] = []
    for k, (s, wt) in enumerate(zip(stages, tails, strict=True)):
        pk, rk = wt.p_wait, wt.rate
        if not (rk > 0 or pk == 0):
            out.append(math.inf)
            continue
        total = waits_q[k]
        m1 = v = 0.0
        if pk > 0 and math.isfinite(rk):
            m1 = pk / rk
            v = max(2.0 * m1 / rk - m1 * m1, 0.0)
        mean = m1
        var_svc = 0.0
        if not s.deterministic:
            mk, ck = float(mean_s[k]), float(scv[k])
            mean = m1 + mk
            var_svc = ck * (mk * mk)
            if ck > 1.0:
                p_fast, _, mu2 = _h2(mk, ck)
                total += math.log(max(1.0 - p_fast, eps) / eps) / mu2
            else:
                total += svc_q[k]
        var = var_svc + (math.sqrt(v) ** 2 if correlation_weight([s]) > 0 else v)
        out.append(min(total, mean + math.sqrt(var * q / (1.0 - q))))
    return out


def _service_masses(stages: Sequence[StageLoad], edges: np.ndarray) -> np.ndarray:
    """``service_rows([s], delta_s, grid)[0]`` per stage (rows; a deterministic stage's
    row is left unset), each at its own ``edges`` row: the exponential and H2 stages in
    one array expression, a Gamma stage by ``np.interp`` on its table, as for one stage."""
    out = np.zeros_like(edges)
    closed = [r for r, s in enumerate(stages) if not s.deterministic and s.service_scv >= 1.0]
    if closed:
        p1, r1, r2 = np.array(
            [
                _h2(stages[r].service_mean_s, min(stages[r].service_scv, MAX_SCV))
                if stages[r].service_scv > 1.0
                else (1.0, 1.0 / stages[r].service_mean_s, 1.0)
                for r in closed
            ]
        ).T
        e = edges[closed]
        cdf = (
            1.0
            - p1[:, None] * np.exp(-r1[:, None] * e)
            - (1.0 - p1[:, None]) * np.exp(-r2[:, None] * e)
        )
        out[closed] = np.diff(cdf, axis=1, prepend=0.0)
    for r, s in enumerate(stages):
        if s.deterministic or s.service_scv >= 1.0:
            continue
        scv = min(s.service_scv, MAX_SCV)
        fine, cum = _gamma_table(1.0 / scv, s.service_mean_s * scv)
        cdf = np.interp(np.maximum(edges[r], 0.0), fine, cum, left=0.0, right=1.0)
        out[r] = np.diff(np.concatenate(([0.0], cdf)))
    return out


__all__ = ["stage_quantiles"]

"""CPU demand model of the CPU Compensator (Quart Eq. 7-10), with constants fitted from data.

When a stage is consolidated from ``r_prev`` to ``r_new`` replicas at the same arrival rate,
each survivor sees ``λc = r_prev / r_new`` times the load (the *concentration factor*). The
prototype estimated the CPU a survivor then needs as::

    C_req = C_base + α·λc^β + γ·ln(1+λc) + δ·‖T‖·η + ζ·frag + κ·gc

with α=0.5, β=1.2, γ=0.3 (concurrency), δ=0.8, ‖T‖=1, η=1 (network), ζ=0.6, frag=0.3,
κ=0.4, gc=0.5 (memory), all hard-coded. Here the last three terms, which do not depend on
λc, are one constant ``static_cores`` (1.18 cores for the prototype), and every constant
can instead be fitted by least squares from measured ``(λc, cores needed)`` pairs
(``fit_demand_model``). ``DemandModel.prototype()`` is the documented baseline.

Neighbours: ``compensator.py`` sizes its first CPU raise from ``DemandModel.demand``
and turns finished episodes into ``DemandSample``s (``episode_sample``), which a caller can
feed back into ``fit_demand_model``. Pure: numpy only, no I/O.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import combinations

import numpy as np

from quartfaas.errors import SpecError

_GOLDEN = (math.sqrt(5.0) - 1.0) / 2.0


@dataclass(frozen=True, slots=True)
class DemandSample:
    """One measurement: at concentration ``concentration`` a replica needed ``cores_needed``
    cores, of which ``base_cores`` it had before the consolidation (so the overhead the model
    explains is ``cores_needed - base_cores``)."""

    concentration: float
    cores_needed: float
    base_cores: float = 0.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.concentration) and self.concentration >= 1.0):
            raise SpecError(f"concentration ({self.concentration}) must be a finite value >= 1")
        if not (math.isfinite(self.cores_needed) and math.isfinite(self.base_cores)):
            raise SpecError(
                f"cores_needed ({self.cores_needed}) and base_cores ({self.base_cores}) "
                "must be finite"
            )

    @property
    def overhead(self) -> float:
        return self.cores_needed - self.base_cores


@dataclass(frozen=True, slots=True)
class DemandModel:
    """``C_req = C_base + α·λc^β + γ·ln(1+λc) + static_cores`` (never below ``C_base``)."""

    alpha: float = 0.5
    beta: float = 1.2
    gamma: float = 0.3
    static_cores: float = 1.18
    source: str = "prototype"
    n_samples: int = 0
    rmse: float | None = None

    def __post_init__(self) -> None:
        for name in ("alpha", "gamma", "static_cores"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise SpecError(f"{name} ({v}) must be a finite value >= 0")
        if not (math.isfinite(self.beta) and 0 < self.beta <= 5):
            raise SpecError(f"beta ({self.beta}) must be in (0, 5]")

    @classmethod
    def prototype(
        cls,
        *,
        tensor_norm: float = 1.0,
        eta: float = 1.0,
        frag: float = 0.3,
        gc: float = 0.5,
        delta: float = 0.8,
        zeta: float = 0.6,
        kappa: float = 0.4,
    ) -> DemandModel:
        """The prototype's constants (``OCD/CPUCompensator.py``); its inputs as keywords."""
        static = delta * tensor_norm * eta + zeta * frag + kappa * gc
        return cls(alpha=0.5, beta=1.2, gamma=0.3, static_cores=static, source="prototype")

    def overhead(self, concentration: float) -> float:
        """Extra cores per replica at concentration ``concentration`` (floored at 1)."""
        lc = max(1.0, concentration)
        return max(
            0.0, self.alpha * lc**self.beta + self.gamma * math.log1p(lc) + self.static_cores
        )

    def demand(self, base_cpu: float, concentration: float) -> float:
        """``C_req`` for a replica that had ``base_cpu`` cores before the consolidation."""
        return base_cpu + self.overhead(concentration)


def _nnls_small(a: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, float]:
    """Non-negative least squares for a handful of columns, by trying every active set.

    With three columns that is 7 small ``lstsq`` calls: exact, and simpler than an
    iterative NNLS. Returns the coefficients (zeros for dropped columns) and the SSE.
    """
    n_cols = a.shape[1]
    best_coef = np.zeros(n_cols)
    best_sse = float(y @ y)
    for k in range(1, n_cols + 1):
        for cols in combinations(range(n_cols), k):
            sub = a[:, cols]
            coef, *_ = np.linalg.lstsq(sub, y, rcond=None)
            if np.any(coef < 0):
                continue
            resid = y - sub @ coef
            sse = float(resid @ resid)
            if sse < best_sse - 1e-15:
                best_sse = sse
                best_coef = np.zeros(n_cols)
                best_coef[list(cols)] = coef
    return best_coef, best_sse


def _profile(lc: np.ndarray, y: np.ndarray, beta: float) -> tuple[np.ndarray, float]:
    a = np.column_stack([lc**beta, np.log1p(lc), np.ones_like(lc)])
    return _nnls_small(a, y)


def fit_demand_model(
    samples: Iterable[DemandSample | tuple[float, float]],
    *,
    beta_range: tuple[float, float] = (0.3, 3.0),
) -> DemandModel:
    """Least-squares fit of α, β, γ and ``static_cores`` (all >= 0) to measured samples.

    A tuple ``(λc, cores_needed)`` is a sample with ``base_cores = 0``. For a fixed β the
    model is linear in (α, γ, static), so β is found by a grid over ``beta_range`` followed
    by a golden-section refinement of the profiled error; the rest by non-negative linear
    least squares at that β. Needs at least 4 samples at 3 or more distinct concentrations
    (fewer cannot separate the curvature β from the two linear terms).
    """
    rows = [s if isinstance(s, DemandSample) else DemandSample(s[0], s[1]) for s in samples]
    distinct = len({round(s.concentration, 9) for s in rows})
    if len(rows) < 4 or distinct < 3:
        raise SpecError(
            f"fit_demand_model needs >= 4 samples at >= 3 distinct concentrations, got "
            f"{len(rows)} samples at {distinct}; measure more consolidation levels or keep "
            "DemandModel.prototype()"
        )
    lo, hi = beta_range
    if not (0 < lo < hi <= 5):
        raise SpecError(f"beta_range ({lo}, {hi}) must satisfy 0 < low < high <= 5")
    lc = np.array([s.concentration for s in rows], dtype=float)
    y = np.array([s.overhead for s in rows], dtype=float)

    grid = np.linspace(lo, hi, round((hi - lo) / 0.05) + 1)
    sse = [_profile(lc, y, float(b))[1] for b in grid]
    i = int(np.argmin(sse))
    a, b = float(grid[max(0, i - 1)]), float(grid[min(len(grid) - 1, i + 1)])
    # Golden-section search on the bracketing grid cells; the profile is smooth in β.
    c, d = b - _GOLDEN * (b - a), a + _GOLDEN * (b - a)
    fc, fd = _profile(lc, y, c)[1], _profile(lc, y, d)[1]
    while b - a > 1e-7:
        if fc <= fd:
            b, d, fd = d, c, fc
            c = b - _GOLDEN * (b - a)
            fc = _profile(lc, y, c)[1]
        else:
            a, c, fc = c, d, fd
            d = a + _GOLDEN * (b - a)
            fd = _profile(lc, y, d)[1]
    beta = (a + b) / 2.0
    if sse[i] < _profile(lc, y, beta)[1]:
        beta = float(grid[i])  # the refinement must never be worse than the grid point
    coef, err = _profile(lc, y, beta)
    return DemandModel(
        alpha=float(coef[0]),
        beta=beta,
        gamma=float(coef[1]),
        static_cores=float(coef[2]),
        source=f"fit of {len(rows)} samples",
        n_samples=len(rows),
        rmse=math.sqrt(err / len(rows)),
    )

"""The end-to-end tail model (``control/tailmodel.py``) against the simulator's engine.

A case is a tandem pipeline with fixed replica counts, an arrival process and a service
law per stage. ``run_case`` simulates it with ``sim/engine.py`` (one slot per replica,
no queue bound, no replica changes), measures the end-to-end p99 after a warm-up, and asks
the model with the inputs a live controller would have: the arrival rate, the measured
inter-arrival SCV at every stage (the departures of the stage before) and the index of
dispersion of those arrivals over the modelled quantile's horizon, and the service mean
and SCV of the law. Used by ``tests/sim/test_tailmodel_vs_engine.py`` and
``benchmarks/tail_model.py``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from quartfaas.control.corrector.tailmodel import StageLoad, e2e_quantile, index_of_dispersion
from quartfaas.sim.engine import Engine
from quartfaas.workload.synthetic import hyperexp_renewal, mmpp, mmpp_for, poisson

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class TailCase:
    """One validation case. ``arrival``: ``poisson``, ``hyperexp`` (renewal, CV ``cv``) or
    ``mmpp`` (on-off, CV ``cv``, on-fraction ``on_frac``). ``service_scv`` 0 is
    deterministic. Stage ``k`` gets service mean ``util·replicas[k]/rate``."""

    arrival: str
    util: float
    replicas: tuple[int, ...]
    service_scv: float
    rate: float = 50.0
    cv: float = 3.0
    on_frac: float = 0.25
    requests: int = 200_000
    seed: int = 0
    q: float = 0.99

    @property
    def label(self) -> str:
        cv = "" if self.arrival == "poisson" else f" cv={self.cv:g}"
        return (
            f"{self.arrival}{cv} ρ={self.util:g} c={list(self.replicas)} cs²={self.service_scv:g}"
        )


@dataclass(frozen=True, slots=True)
class TailResult:
    case: TailCase
    simulated: float
    modelled: float
    modelled_scv_only: float

    @property
    def ratio(self) -> float:
        return self.modelled / self.simulated


def arrivals_for(case: TailCase) -> FloatArray:
    duration = case.requests / case.rate
    if case.arrival == "poisson":
        return poisson(case.rate, duration, case.seed)
    if case.arrival == "hyperexp":
        return hyperexp_renewal(case.rate, case.cv, duration, case.seed)
    if case.arrival == "mmpp":
        return mmpp(mmpp_for(case.rate, case.cv, on_frac=case.on_frac), duration, case.seed)
    raise ValueError(f"unknown arrival process {case.arrival!r}")


def _service(rng: np.random.Generator, mean: float, scv: float, n: int) -> FloatArray:
    if scv <= 0:
        return np.full(n, mean)
    if scv <= 1:
        k = 1.0 / scv
        return rng.gamma(k, mean / k, n)
    p = 0.5 * (1.0 + np.sqrt((scv - 1.0) / (scv + 1.0)))
    fast = rng.random(n) < p
    return rng.exponential(1.0, n) * np.where(fast, mean / (2 * p), mean / (2 * (1 - p)))


def _scv(times: FloatArray) -> float:
    gaps = np.diff(times)
    m = float(gaps.mean())
    return float(gaps.var()) / (m * m) if m > 0 else 1.0


def run_case(case: TailCase, tick_s: float = 50.0) -> TailResult:
    arr = arrivals_for(case)
    n = arr.size
    k = len(case.replicas)
    means = [case.util * c / case.rate for c in case.replicas]
    rng = np.random.default_rng(case.seed + 1000)
    work = np.stack([_service(rng, m, case.service_scv, n) for m in means])
    eng = Engine(arr, work, [10**9] * k, slot_capacity=max(case.replicas))
    for stage, c in enumerate(case.replicas):
        for _ in range(c):
            eng.add_replica(stage, 1, 0.0, 1.0)
    t = 0.0
    while not eng.idle:
        t += tick_s
        eng.advance(t)
    warm = n // 20
    lat = eng.finish[k - 1, warm:] - arr[warm:]
    simulated = float(np.quantile(lat, case.q))
    # Model inputs as measured at each stage: arrivals of stage j are stage j-1's finishes.
    rate = (n - 1) / float(arr[-1] - arr[0])
    stage_arrivals = [arr] + [np.sort(eng.finish[j - 1]) for j in range(1, k)]
    scvs = [_scv(a[warm:]) for a in stage_arrivals]

    def loads(horizon: float | None) -> list[StageLoad]:
        return [
            StageLoad(
                f"s{j}",
                rate,
                means[j],
                service_scv=case.service_scv,
                arrival_scv=scvs[j],
                burst_factor=None
                if horizon is None
                else index_of_dispersion(stage_arrivals[j][warm:], horizon),
            )
            for j in range(k)
        ]

    base = e2e_quantile(loads(None), case.replicas, case.q)
    # The burst factor's horizon is the latency being modelled: iterate once from the
    # SCV-only answer (the quantile moves little for the second pass).
    horizon = base
    modelled = base
    for _ in range(2):
        modelled = e2e_quantile(loads(horizon), case.replicas, case.q)
        horizon = modelled
    return TailResult(case, simulated, modelled, base)


def default_grid(*, small: bool = False) -> list[TailCase]:
    """The benchmark's grid (``small``: the test's subset)."""
    shapes = [(1, 2, 1), (2, 1, 4, 1), (1, 3, 2, 1, 2)]
    utils = [0.3, 0.6, 0.9]
    arrivals = [("poisson", 1.0), ("hyperexp", 3.0), ("mmpp", 3.0)]
    scvs = [0.0, 1.0]
    if small:
        shapes, utils = [(1, 2, 1), (2, 1, 4, 1)], [0.3, 0.9]
    cases = []
    for kind, cv in arrivals:
        for util in utils:
            for shape in shapes:
                for scv in scvs:
                    cases.append(TailCase(kind, util, shape, scv, cv=cv))
    return cases

"""How long a simulation will take, measured on this machine instead of assumed.

Wall time of a closed-loop run is modelled as ``per_visit_s x stage_visits +
per_tick_s x ticks``: the engine's cost grows with the visits (``sim/kernel.py``), the
controller's and the collector's with the ticks (a snapshot, a decision and its
application per tick, whatever the rate). ``calibrate`` fits both terms from two short
runs of the policy under test at two rates over the same simulated span, so an estimate
(``SpeedModel.seconds``) reflects the real policy (Quart's GAT and corrector cost far more
per tick than a hold policy) and the real machine.

This replaced the constant ``experiments.VISITS_PER_S = 2e6`` (issue #11), which ignored
the per-tick cost. ``sim/experiments/workloads.MEASURED_SPEED`` holds the model measured
by ``benchmarks/sim_speed.py``; ``Estimate.seconds`` uses it.
Neighbours: ``sim/run.simulate`` runs the calibration.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.control.policy import Policy
from quartfaas.errors import SimulationError
from quartfaas.sim.cluster import ClusterSpec
from quartfaas.sim.pipelines import SimPipeline
from quartfaas.sim.run import simulate


@dataclass(frozen=True, slots=True)
class SpeedModel:
    """Measured costs: seconds per stage visit and per control tick."""

    per_visit_s: float
    per_tick_s: float
    policy: str = ""

    def seconds(self, visits: int, ticks: int) -> float:
        return self.per_visit_s * visits + self.per_tick_s * ticks

    def visits_per_s(self, visits_per_tick: float) -> float:
        """Closed-loop speed at a given load (visits per tick)."""
        return visits_per_tick / (self.per_visit_s * visits_per_tick + self.per_tick_s)


def calibrate(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    make_policy: Callable[[], Policy],
    *,
    controller: ControllerConfig | None = None,
    span_s: float = 40.0,
    rates: tuple[float, float] = (20.0, 160.0),
    seed: int = 0,
) -> SpeedModel:
    """Fit ``SpeedModel`` from two runs of ``span_s`` simulated seconds at ``rates``.

    Poisson arrivals; each run gets a fresh policy. About a second of wall time with Quart
    on 21 stages at the defaults. Raises ``SimulationError`` when the fit is degenerate.
    """
    lo, hi = rates
    if not 0 < lo < hi:
        raise SimulationError(f"calibration rates must satisfy 0 < low < high, got {rates}")
    rng = np.random.default_rng(seed)
    warm = np.cumsum(rng.exponential(1.0 / lo, 50))  # loads the compiled kernels first
    simulate(pipeline, cluster, make_policy(), warm, seed=seed, controller=controller)
    points = []
    for rate in (lo, hi):
        n = max(2, int(rate * span_s))
        arr = np.cumsum(rng.exponential(1.0 / rate, n))
        r = simulate(pipeline, cluster, make_policy(), arr, seed=seed, controller=controller,
                     drain_limit_s=span_s)  # fmt: skip
        visits = int(np.count_nonzero(~np.isnan(r.stage_start)))
        points.append((visits, r.snapshots_taken, r.wall_s))
    (v1, t1, w1), (v2, t2, w2) = points
    det = v1 * t2 - v2 * t1
    if det == 0:
        raise SimulationError("calibration runs did not differ in visits per tick")
    per_visit = (w1 * t2 - w2 * t1) / det
    per_tick = (v1 * w2 - v2 * w1) / det
    # Timing noise on a busy machine can push one term below 0; keep both >= 0 and
    # re-fit the other alone, so estimates stay conservative.
    if per_visit <= 0:
        per_visit, per_tick = 0.0, (w1 + w2) / (t1 + t2)
    elif per_tick <= 0:
        per_visit, per_tick = (w1 + w2) / (v1 + v2), 0.0
    name = getattr(make_policy(), "name", "")
    return SpeedModel(per_visit, per_tick, name)


__all__ = ["SpeedModel", "calibrate"]

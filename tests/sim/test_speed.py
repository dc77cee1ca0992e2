"""The measured speed model that replaces a constant visits-per-second figure."""

from __future__ import annotations

import pytest

from quartfaas.control.baselines import make_policy
from quartfaas.errors import SimulationError
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.speed import SpeedModel, calibrate


def test_speed_model_arithmetic() -> None:
    m = SpeedModel(per_visit_s=1e-6, per_tick_s=1e-2)
    assert m.seconds(1_000_000, 100) == pytest.approx(2.0)
    assert m.visits_per_s(10_000) == pytest.approx(10_000 / 0.02)
    assert m.visits_per_s(100_000) > m.visits_per_s(1_000)  # ticks amortise over load


def test_calibrate_fits_non_negative_costs() -> None:
    pipe = pipeline_preset("llama-7b-me-5", min_replicas=1)
    m = calibrate(pipe, cluster_preset("small"), lambda: make_policy("static"),
                  span_s=10.0, rates=(5.0, 40.0))  # fmt: skip
    assert m.per_visit_s >= 0 and m.per_tick_s >= 0
    assert m.per_visit_s + m.per_tick_s > 0
    assert m.seconds(10_000, 100) > 0
    with pytest.raises(SimulationError, match="rates"):
        calibrate(pipe, cluster_preset("small"), lambda: make_policy("static"), rates=(5.0, 5.0))

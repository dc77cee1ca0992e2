"""The controlled-run fidelity check's comparison logic (``sim/fidelity_control.py``,
``sim/fidelity_report.py``).

No live runtime here: replica-seconds, SLO attainment, the tick alignment, the live view of
a simulated snapshot, the report's verdict and table, and the simulated side run on a
hand-made calibration and a hand-made "live" run. The end-to-end run is
``tests/integration/test_fidelity_control.py``; the 5-point / 15 % bars are the benchmark's.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from quartfaas.control.backend import StartTier
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot
from quartfaas.sim.cluster import GPU_TYPES
from quartfaas.sim.fidelity import StageProfile
from quartfaas.sim.fidelity_control import (
    Calibration,
    ControlledRun,
    MeasuredStartDelays,
    live_view,
    sim_shift,
    simulate_controlled,
    tick_phase,
)
from quartfaas.sim.fidelity_live import emulated_spec
from quartfaas.sim.fidelity_report import (
    ControlledReport,
    SideSummary,
    provisioned_seconds,
    slo_attainment,
    summarise,
)


def test_provisioned_seconds_steps_from_initial_through_each_tick() -> None:
    # 2 stages: 1+1 until t=1, then 2+1 until t=3, then 3+2 until the end (5).
    times = np.array([1.0, 3.0])
    counts = np.array([[2, 1], [3, 2]])
    assert provisioned_seconds(times, counts, np.array([1, 1]), 5.0) == pytest.approx(
        2 * 1 + 3 * 2 + 5 * 2
    )


def test_provisioned_seconds_clips_ticks_before_zero_and_after_the_end() -> None:
    # A tick at -0.5 (before the first send) sets the level from 0; one at 7 is past end 4.
    times = np.array([-0.5, 2.0, 7.0])
    counts = np.array([[3], [1], [9]])
    assert provisioned_seconds(times, counts, np.array([5]), 4.0) == pytest.approx(3 * 2 + 1 * 2)


def test_provisioned_seconds_without_ticks_is_initial_times_duration() -> None:
    empty = np.zeros((0, 2))
    assert provisioned_seconds(np.array([]), empty, np.array([1, 2]), 10.0) == pytest.approx(30)


def test_slo_attainment_counts_unanswered_as_misses() -> None:
    lat = np.array([0.1, 0.5, np.nan, 2.0])
    assert slo_attainment(lat, 1.0) == pytest.approx(0.5)
    assert slo_attainment(lat, 0.5) == pytest.approx(0.5)  # at the SLO counts as met
    assert math.isnan(slo_attainment(np.array([]), 1.0))


def test_tick_phase_and_shift_align_the_simulated_ticks_with_the_live_ones() -> None:
    # Live ticks at -1.33, -0.33, 0.675, ... on the send axis; gateway up 10.03 s earlier.
    ticks = np.arange(-1.325, 20.0, 1.0)
    live = _run(ticks, origin_s=-10.03)
    assert tick_phase(ticks, 1.0) == pytest.approx(0.675)
    shift = sim_shift(live, 1.0)
    assert abs(shift - 10.03) <= 0.5  # the gateway's lead, moved by under half a tick
    # Simulated ticks are whole seconds of simulated time = send time + shift.
    assert 0.675 + shift == pytest.approx(round(0.675 + shift), abs=1e-9)


def test_sim_shift_never_starts_after_the_first_send() -> None:
    live = _run(np.array([0.9, 1.9]), origin_s=-0.05)  # a gateway up only 50 ms before
    assert sim_shift(live, 1.0) >= 0.0


def test_measured_start_delays_charge_every_tier_the_same() -> None:
    d = MeasuredStartDelays(measured_s=0.042)
    for tier in (StartTier.NONE, StartTier.FORK, StartTier.COLD, StartTier.PREFORK):
        assert d.seconds(tier, 1.0, GPU_TYPES["V100"], 0.1) == 0.042


def test_live_view_takes_the_calibrated_hop_off_the_measured_service() -> None:
    calib = _calibration(hop_s=0.01)
    snap = PipelineSnapshot(
        now=5.0, pipeline="p", slo_p99_s=1.0,
        stages=(
            StageSnapshot("a", 0, service_mean_s=0.1, service_scv=0.04),
            StageSnapshot("b", 1),  # no measurement yet: left alone
        ),
    )  # fmt: skip
    out = live_view(calib)(snap)
    a, b = out.stages
    assert a.service_mean_s == pytest.approx(0.09)
    # The variance is kept: scv x mean^2 is unchanged.
    assert a.service_scv is not None
    assert a.service_scv * 0.09**2 == pytest.approx(0.04 * 0.1**2)
    assert b == snap.stages[1]
    assert out.now == snap.now


def _summary(att: float, rs: float, ups: int = 2) -> SideSummary:
    return SideSummary(100, 100, att, rs, ups, 1, 0.2, 0.9, 10)


def test_report_gaps_and_verdict() -> None:
    rep = ControlledReport(
        title="t", slo_s=1.0, end_s=60.0, live=_summary(0.95, 200.0),
        sims=(_summary(0.91, 220.0), _summary(0.93, 240.0)), inputs=(("x", "y"),),
    )  # fmt: skip
    assert rep.slo_gap_points == pytest.approx(3.0)
    assert rep.replica_seconds_err == pytest.approx(0.15)
    assert rep.within(5.0, 0.15)
    assert not rep.within(2.9, 0.15)
    assert not rep.within(5.0, 0.14)
    rows = rep.rows()
    assert [r[0] for r in rows] == ["side", "live", "sim seed 0", "sim seed 1", "sim mean"]
    assert len({len(r) for r in rows}) == 1
    text = rep.text()
    assert "PASS" in text and "x: y" in text


def test_report_fails_when_the_controller_did_not_act() -> None:
    rep = ControlledReport(
        title="t", slo_s=1.0, end_s=60.0, live=_summary(1.0, 100.0, ups=0),
        sims=(_summary(1.0, 100.0),), inputs=(),
    )  # fmt: skip
    assert not rep.controller_acted
    assert not rep.within(5.0, 0.15)
    assert "FAIL" in rep.text()


def test_simulated_side_scales_on_a_burst_and_keeps_the_live_tick_grid() -> None:
    spec = emulated_spec(2, name="unitfid")
    calib = _calibration(hop_s=0.002, names=[s.name for s in spec.stages])
    rng = np.random.default_rng(3)
    # 5 s quiet at 2/s, then 8 s at 25/s (two replicas' worth of an 84 ms stage).
    arrivals = np.sort(np.concatenate([rng.uniform(0, 5, 10), rng.uniform(5, 13, 200)]))
    ticks = np.arange(-2.6, 40.0, 1.0)
    live = _run(ticks, origin_s=-6.2, arrivals=arrivals, end_s=40.0)
    (sim,) = simulate_controlled(spec, calib, live, seeds=[0], cores=2.0)
    assert sim.latency_s.size == arrivals.size
    assert np.isfinite(sim.latency_s).all()
    assert sim.ups > 0
    assert sim.provisioned.sum(axis=1).max() > sim.initial.sum()
    after = sim.tick_times_s[sim.tick_times_s >= 0]
    steps = after - after[0]
    assert np.allclose(steps, np.round(steps), atol=1e-9)  # whole ticks apart
    assert tick_phase(sim.tick_times_s, 1.0) == pytest.approx(0.4)
    assert sim.tick_times_s.max() >= live.end_s  # ticked on past the last request
    s = summarise(sim, spec.slo.p99_ms / 1000.0)
    assert s.requests == arrivals.size and s.replica_seconds > 0


def _calibration(hop_s: float, names: list[str] | None = None) -> Calibration:
    profile = tuple(
        StageProfile(n, 100, 0.085, 0.01, hop_s, 0.0, 0.085 + hop_s, 0.01)
        for n in (names or ["a", "b"])
    )
    return Calibration(profile, 0.005, (0.05, 0.1), ("prefork", "fork"), 100, 8.0, 1, 0.01)


def _run(
    ticks: np.ndarray,
    *,
    origin_s: float,
    arrivals: np.ndarray | None = None,
    end_s: float = 20.0,
) -> ControlledRun:
    arr = np.array([0.0]) if arrivals is None else arrivals
    return ControlledRun(
        arrivals_s=arr,
        latency_s=np.full(arr.size, 0.2),
        tick_times_s=ticks,
        provisioned=np.ones((ticks.size, 2), dtype=np.int64),
        initial=np.ones(2, dtype=np.int64),
        ups=0,
        downs=0,
        end_s=end_s,
        origin_s=origin_s,
    )

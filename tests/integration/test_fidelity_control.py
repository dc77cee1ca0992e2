"""Controlled-run fidelity end to end: calibration run, live run with the controller on,
the simulator replaying it (``sim/fidelity_live.check_controlled``).

Two stages of the emulated-accelerator example (sleep stages, real gateway, worker
processes, parameter cache and controller), a 20 s calibration and the 25 s burst at the
end of the benchmark's trace slice at twice its rate (peaks of ~20 req/s against ~12 a
replica serves), so the controller must scale up. Takes ~1.5-2 min, hence ``slow``.
It asserts only what survives a busy shared host: both sides saw the same requests, every
one answered, the controller acted on both, the table and the list of inputs are complete
and the gaps are numbers. The 5-point / 15 % bars belong to ``benchmarks/fidelity.py``.
"""

from __future__ import annotations

import math

import pytest

from quartfaas.sim.fidelity_live import check_controlled, emulated_spec
from quartfaas.workload.workload import Workload

pytestmark = [pytest.mark.slow, pytest.mark.timeout(420)]

WORKLOAD = "trace:azure-code,start=555,end=580,rate=8"


def test_controlled_run_live_against_simulated(kill_leftovers: list[str]) -> None:
    spec = emulated_spec(2, name="fidctl")
    kill_leftovers.append("quartfaas-fidctl-")  # the runtime dir, in every worker command
    report = check_controlled(
        spec, WORKLOAD, seed=1, calib_duration_s=20.0, tail_s=20.0, sim_seeds=range(2)
    )
    text = report.text()
    n = Workload.parse(WORKLOAD, seed=1001).trace(None).arrivals_s.size

    assert report.live.requests == n, text
    assert report.live.answered == n, text
    assert all(s.requests == n for s in report.sims), text
    assert report.live.ups > 0, text
    assert all(s.ups > 0 for s in report.sims), text
    assert report.controller_acted, text
    assert math.isfinite(report.slo_gap_points) and math.isfinite(report.replica_seconds_err)
    rows = report.rows()
    assert [r[0] for r in rows[:4]] == ["side", "live", "sim seed 0", "sim seed 1"], text
    assert all(cell for r in rows[1:4] for cell in r), text  # live and seed rows complete
    names = [k for k, _ in report.inputs]
    for needed in ("stage work per visit", "per-request overhead", "replica start delay",
                   "policy and config", "arrivals"):  # fmt: skip
        assert any(k.startswith(needed) for k in names), text
    assert "PASS" in text or "FAIL" in text

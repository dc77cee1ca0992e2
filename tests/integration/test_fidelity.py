"""Live runtime against the simulator: same spec, same arrivals, p50/p99 within 15 %.

A 30 s open-loop Poisson run of the fidelity pipeline (three sleep stages, fixed replicas,
~55 % utilisation with the gateway's hops) on real worker processes, then two simulated
replays (``sim/fidelity.py``): one from the measured per-stage profile (the check the issue
asks for) and one from each request's measured work (no sampling noise: the model alone).
Even a perfect simulator misses a 15 % p99 band in ~1 % of 30 s runs at these settings
(service-time sampling noise, measured in simulation), more often on a busy host, whose
stalls the independent profile draws cannot reproduce; on failure the report is printed
(if the replay row matches and the profile row does not, suspect contention).
"""

from __future__ import annotations

import asyncio

import pytest

from quartfaas.sim.fidelity import (
    DEFAULT_RATE,
    compare,
    fidelity_spec,
    run_live,
    utilisation,
)
from quartfaas.workload.synthetic import poisson

pytestmark = pytest.mark.timeout(180)


def test_live_and_simulated_latency_agree(kill_leftovers: list[str]) -> None:
    spec = fidelity_spec(name="fidel")
    assert 0.3 <= max(utilisation(spec, DEFAULT_RATE).values()) <= 0.7
    kill_leftovers.append("quartfaas-fidel-")  # the runtime dir, in every worker command
    arrivals = poisson(DEFAULT_RATE, 30.0, seed=11)

    live = asyncio.run(run_live(spec, arrivals))
    report = compare(spec, live)
    text = report.text()

    assert report.failed == 0, text
    assert report.requests == arrivals.size
    # The gateway's hops were measured, not assumed, and the model carries them.
    for p in report.profile:
        assert 0 < p.hop_mean_s < 0.02, text
        assert p.work_mean_s == pytest.approx(p.service_mean_s + p.hop_mean_s)
    assert report.replay_err_p50 <= 0.15 and report.replay_err_p99 <= 0.15, text
    assert report.err_p50 <= 0.15 and report.err_p99 <= 0.15, text

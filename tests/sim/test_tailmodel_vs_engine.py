"""The end-to-end tail model (control/tailmodel.py) against the simulator's engine.

Target (issue 12): modelled p99 within [0.95, 1.10] of the simulated p99. The model meets
it for the regimes asserted here; the regimes it misses today are strict xfails with the
measured ratio and the reason (``benchmarks/tail_model.py`` prints the full table), so a
model change that fixes one shows up as an XPASS to promote.
"""

from __future__ import annotations

import pytest

from quartfaas.sim.tailcheck import TailCase, run_case

N = 100_000

MEETS = [
    TailCase("poisson", 0.3, (1, 2, 1), 1.0, requests=N),
    TailCase("poisson", 0.6, (2, 1, 4, 1), 1.0, requests=N),
    TailCase("poisson", 0.6, (1, 3, 2, 1, 2), 1.0, requests=N),
    TailCase("mmpp", 0.3, (2, 1, 4, 1), 1.0, cv=3.0, requests=N),
    TailCase("mmpp", 0.6, (2, 1, 4, 1), 1.0, cv=3.0, requests=N),
    TailCase("hyperexp", 0.9, (2, 1, 4, 1), 1.0, cv=3.0, requests=N),
]

MISSES = [
    # Deterministic service in tandem: downstream stages see departures already spaced
    # by the upstream service, and the sum of independent stage waits over-counts
    # (measured 1.17-1.51x).
    (TailCase("poisson", 0.9, (1, 2, 1), 0.0, requests=N), "over: deterministic tandem"),
    # Bursty renewal arrivals at low utilisation: Allen-Cunneen's stretch g = (ca²+cs²)/2
    # applies to waits that are really short local queues (measured 1.3-2.9x).
    (TailCase("hyperexp", 0.3, (1, 2, 1), 0.0, cv=3.0, requests=N), "over: low-ρ bursts"),
    # On-off MMPP at 90 %: the wait tail decays slower than the two-moment fit (measured
    # 0.76-0.79x, the one regime that is under).
    (TailCase("mmpp", 0.9, (1, 2, 1), 1.0, cv=3.0, requests=N), "under: MMPP at 90%"),
]


@pytest.mark.parametrize("case", MEETS, ids=lambda c: c.label)
def test_model_within_target(case: TailCase) -> None:
    r = run_case(case)
    assert 0.95 <= r.ratio <= 1.10, f"{case.label}: model {r.modelled:.3f}s sim {r.simulated:.3f}s"


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=why)) for c, why in MISSES],
    ids=lambda c: c.label,
)
def test_known_misses(case: TailCase) -> None:
    r = run_case(case)
    assert 0.95 <= r.ratio <= 1.10, f"{case.label}: ratio {r.ratio:.2f}"

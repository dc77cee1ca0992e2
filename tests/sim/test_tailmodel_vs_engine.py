"""The end-to-end tail model (control/tailmodel.py) against the simulator's engine.

Target (issue 12): modelled p99 within [0.95, 1.10] of the simulated p99, and never more
than 5 % under. Near saturation one seed's p99 moves by +-20 % (the queue's relaxation
time is long), so utilisation-0.9 cases pool 5 seeds of 200k requests, as
``benchmarks/tail_model.py`` does; lighter cases use one seed of 100k. The regimes the
model still over-estimates are strict xfails with the measured ratio and the reason, so a
model change that fixes one shows up as an XPASS to promote; they are also in the safety
test, which asserts the ratio is never below 0.95.
"""

from __future__ import annotations

import pytest

from quartfaas.sim.tailcheck import TailCase, run_case, run_pooled

N = 100_000
HEAVY = 200_000  # per seed, 5 seeds, for utilisation 0.9


def _ratio(case: TailCase) -> float:
    if case.util >= 0.85:
        return run_pooled(case, 5).ratio
    return run_case(case).ratio


MEETS = [
    TailCase("poisson", 0.3, (1, 3, 2, 1, 2), 0.0, requests=N),
    TailCase("poisson", 0.6, (2, 1, 4, 1), 1.0, requests=N),
    TailCase("poisson", 0.9, (1, 2, 1), 0.0, requests=HEAVY),
    TailCase("mmpp", 0.3, (2, 1, 4, 1), 1.0, cv=3.0, requests=N),
    TailCase("mmpp", 0.6, (1, 3, 2, 1, 2), 0.0, cv=3.0, requests=N),
    TailCase("mmpp", 0.9, (1, 2, 1), 1.0, cv=3.0, requests=HEAVY),
    TailCase("hyperexp", 0.9, (1, 2, 1), 1.0, cv=3.0, requests=HEAVY),
]

MISSES = [
    # Bursty renewal arrivals at low utilisation: Allen-Cunneen's stretch g = (ca²+cs²)/2
    # applies to waits that are really short local queues (training grid: 1.24-1.86x).
    (TailCase("hyperexp", 0.3, (1, 2, 1), 0.0, cv=3.0, requests=N), "over: low-ρ bursts"),
    (TailCase("hyperexp", 0.6, (1, 2, 1), 1.0, cv=3.0, requests=N), "over: mid-ρ bursts"),
    # On-off bursts into deterministic service at low load (1.25-1.34x): same cause.
    (TailCase("mmpp", 0.3, (1, 2, 1), 0.0, cv=3.0, requests=N), "over: low-ρ MMPP, D"),
    # A multi-server deterministic stage's departures bunch, so the next one is modelled
    # as an independent queue, which over-counts (1.15-1.20x).
    (TailCase("poisson", 0.6, (2, 1, 4, 1), 0.0, requests=N), "over: multi-server D tandem"),
]

SAFETY = [c for c, _ in MISSES] + [
    # Was 0.86x when every deterministic stage joined Friedman's max: the 3-server first
    # stage bunches departures, so the second stage waits on its own.
    TailCase("mmpp", 0.45, (3, 1, 2), 0.0, cv=2.0, requests=N, seed=100),
    TailCase("hyperexp", 0.9, (2, 1, 4, 1), 0.0, cv=3.0, requests=HEAVY),
]


@pytest.mark.parametrize("case", MEETS, ids=lambda c: c.label)
def test_model_within_target(case: TailCase) -> None:
    ratio = _ratio(case)
    assert 0.95 <= ratio <= 1.10, f"{case.label}: ratio {ratio:.3f}"


@pytest.mark.parametrize("case", SAFETY, ids=lambda c: c.label)
def test_model_never_far_under(case: TailCase) -> None:
    ratio = _ratio(case)
    assert ratio >= 0.95, f"{case.label}: ratio {ratio:.3f}"


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.xfail(strict=True, reason=why)) for c, why in MISSES],
    ids=lambda c: c.label,
)
def test_known_misses(case: TailCase) -> None:
    ratio = _ratio(case)
    assert 0.95 <= ratio <= 1.10, f"{case.label}: ratio {ratio:.2f}"

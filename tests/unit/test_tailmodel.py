"""Tail model pieces against closed forms."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from quartfaas.control.corrector.tailmodel import (
    StageLoad,
    e2e_quantile,
    index_of_dispersion,
    stage_breakdown,
    wait_tail,
)


def test_mm1_sojourn_is_exponential() -> None:
    s = StageLoad("a", 8.0, 0.1)
    assert e2e_quantile([s], [1], 0.99) == pytest.approx(math.log(100) / 2.0, rel=0.005)


def test_three_exponential_stages_without_waiting_is_erlang3() -> None:
    s = StageLoad("a", 0.0, 0.1)
    # Erlang-3 with mean 0.1 per phase: p99 = 0.8406 s (the 841 ms).
    assert e2e_quantile([s] * 3, [1] * 3, 0.99) == pytest.approx(0.8406, rel=0.005)


def test_deterministic_is_an_exact_shift() -> None:
    s = StageLoad("d", 0.0, 0.05, service_scv=0.0)
    assert e2e_quantile([s] * 4, [1] * 4, 0.99) == pytest.approx(0.2, abs=1e-12)


def test_unstable_is_infinite_and_erlang_c_stable_at_512() -> None:
    assert math.isinf(e2e_quantile([StageLoad("a", 20.0, 0.1)], [2], 0.99))
    big = StageLoad("b", 5000.0, 0.1, max_replicas=512)
    wt = wait_tail(big, 512)
    assert 0.0 <= wt.p_wait < 1.0 and math.isfinite(wt.rate)
    assert math.isfinite(e2e_quantile([big], [512], 0.999))


def test_more_replicas_never_raise_the_quantile() -> None:
    s = StageLoad("a", 30.0, 0.1, service_scv=0.5, arrival_scv=3.0)
    qs = [e2e_quantile([s, s], [c, c], 0.99) for c in range(4, 12)]
    assert all(b <= a + 1e-9 for a, b in itertools.pairwise(qs))
    util, p_wait, q = stage_breakdown([s], [4], 0.99)[0]
    assert util == pytest.approx(0.75) and 0 < p_wait < 1 and q > 0.1


def test_index_of_dispersion_of_poisson_is_one() -> None:
    t = np.cumsum(np.random.default_rng(1).exponential(0.01, 200_000))
    assert index_of_dispersion(t, 1.0) == pytest.approx(1.0, abs=0.1)


def test_bad_input_is_an_error() -> None:
    with pytest.raises(ValueError, match="service_mean_s"):
        StageLoad("x", 1.0, 0.0)
    with pytest.raises(ValueError, match="replica counts"):
        e2e_quantile([StageLoad("x", 1.0, 0.1)], [1, 2], 0.99)

"""Trace workloads in experiments (issue #11 item 3): own time scale, the target rate over
the replayed window, and one independent realisation per seed."""

from __future__ import annotations

import numpy as np
import pytest

from quartfaas.errors import SpecError
from quartfaas.sim import experiments as ex
from quartfaas.workload import Workload


@pytest.mark.parametrize("seed", [1, 2, 3, 4, 5])
def test_rate_is_reached_over_the_replayed_window(seed: int) -> None:
    arr = ex.arrivals_for(ex.make_workload("azure-code", rate=100, seed=seed), 60)
    assert arr.size / 60 == pytest.approx(100, rel=0.06)  # Poisson: sd ~1.3% at 6000
    assert arr[0] < 2.0  # no leading silence: the window starts where the trace has requests


def test_seeds_give_independent_realisations_and_the_same_seed_the_same() -> None:
    a = ex.arrivals_for(ex.make_workload("azure-code", rate=50, seed=1), 120)
    b = ex.arrivals_for(ex.make_workload("azure-code", rate=50, seed=2), 120)
    c = ex.arrivals_for(ex.make_workload("azure-code", rate=50, seed=1), 120)
    assert not np.array_equal(a, b) and np.array_equal(a, c)
    # without a rate the trace is still resampled with the seed, at its own mean rate
    d = ex.arrivals_for(ex.make_workload("azure-code", seed=1), None)
    e = ex.arrivals_for(ex.make_workload("azure-code", seed=2), None)
    assert not np.array_equal(d, e)


def test_time_scale_is_kept_and_squeeze_is_the_old_way() -> None:
    own = ex.make_workload("azure-code", rate=200, seed=1)
    old = ex.make_workload("trace:azure-code,method=squeeze", rate=200, seed=1)
    a, b = ex.arrivals_for(own, 600), ex.arrivals_for(old, 600)
    assert str(own).count("method=thinning") == 1
    # The 1 s count CV of the thinned trace keeps the trace's burstiness (2.27 at 1 s,
    # docs/simulator-truth.md); squeezing 78x averages it away.
    cv = [np.std(np.bincount(x.astype(int))) / np.mean(np.bincount(x.astype(int))) for x in (a, b)]
    assert cv[0] > 1.5 * cv[1]


def test_unknown_method_is_refused() -> None:
    with pytest.raises(SpecError, match="valid methods"):
        Workload.parse("trace:azure-code,rate=5,method=fast")

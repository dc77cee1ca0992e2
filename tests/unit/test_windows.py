"""Time-keyed windows: eviction, rates, inter-arrival CV over time, percentiles, binned CV."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.clock import FakeClock
from quartfaas.metrics.windows import EventWindow, ValueWindow, binned_cv, gap_cv
from quartfaas.workload.synthetic import (
    erlang_renewal,
    gamma_renewal,
    hyperexp_renewal,
    poisson,
)


def filled(times: np.ndarray, window_s: float = 1e9, **kw: object) -> EventWindow:
    w = EventWindow(window_s, max_samples=len(times) + 10, **kw)  # type: ignore[arg-type]
    for t in times:
        w.append(float(t))
    return w


# --- EventWindow -----------------------------------------------------------------------------


def test_eviction_by_age_is_half_open() -> None:
    w = EventWindow(5.0)
    for t in range(10):
        w.append(float(t))
    # (4, 9]: the event at exactly now - window_s = 4 is out
    assert w.count(9.0) == 5
    assert list(w.timestamps(9.0)) == [5.0, 6.0, 7.0, 8.0, 9.0]
    # Queries evict too, so an idle window forgets everything.
    assert w.count(100.0) == 0
    assert w.rate(100.0) == 0.0
    assert len(w) == 0


def test_events_after_now_are_not_counted() -> None:
    w = EventWindow(10.0)
    for t in (1.0, 2.0, 3.0):
        w.append(t)
    assert w.count(2.5) == 2


def test_append_evicts_relative_to_the_new_timestamp() -> None:
    w = EventWindow(1.0)
    for i in range(1000):
        w.append(i * 0.1)
    assert len(w) == 10  # only the last second is held in memory


def test_rate_over_full_window_and_with_start() -> None:
    clock = FakeClock(100.0)
    plain = EventWindow(10.0)
    young = EventWindow(10.0, start=clock.now())
    for _ in range(20):
        clock.advance(0.1)
        plain.append(clock.now())
        young.append(clock.now())
    now = clock.now()  # 102.0: two seconds of observation, 20 events
    assert plain.rate(now) == pytest.approx(2.0)  # 20 over the full 10 s window
    assert young.rate(now) == pytest.approx(10.0)  # 20 over the 2 s observed
    assert EventWindow(10.0, start=5.0).rate(5.0) is None  # nothing observed yet


def test_cap_bounds_memory_and_keeps_rate_honest() -> None:
    w = EventWindow(10.0, max_samples=100)
    for i in range(1000):  # 1 kHz for one second
        w.append(i / 1000.0)
    assert len(w) == 100
    assert w.dropped_by_cap == 900
    # 100 events over the 0.1 s they cover, not 100 over 10 s
    assert w.rate(0.999) == pytest.approx(1000.0, rel=0.02)


def test_cv_is_none_without_enough_gaps() -> None:
    w = EventWindow(10.0)
    assert w.cv(0.0) is None
    assert w.scv(0.0) is None
    w.append(1.0)
    w.append(2.0)
    assert w.cv(3.0) is None  # one gap
    w.append(4.0)
    assert w.cv(5.0) == pytest.approx(np.std([1.0, 2.0]) / 1.5)
    same = EventWindow(10.0)
    for _ in range(5):
        same.append(1.0)
    assert same.cv(1.0) is None  # zero mean gap: undefined, not 0 or inf


def test_cv_is_over_time_in_time_order() -> None:
    rng = np.random.default_rng(3)
    t = np.sort(rng.uniform(0, 100, 500))
    in_order = filled(t)
    shuffled = filled(rng.permutation(t))
    assert in_order.cv(100.0) == pytest.approx(shuffled.cv(100.0), rel=1e-12)
    gaps = np.diff(t)
    assert in_order.cv(100.0) == pytest.approx(gaps.std() / gaps.mean(), rel=1e-12)


@pytest.mark.parametrize(
    ("label", "times", "expected_cv", "rel"),
    [
        ("poisson", poisson(50.0, 1000.0, seed=1), 1.0, 0.03),
        ("erlang-4", erlang_renewal(50.0, 4, 1000.0, seed=2), 0.5, 0.03),
        ("erlang-16", erlang_renewal(50.0, 16, 1000.0, seed=3), 0.25, 0.03),
        ("hyperexp-3", hyperexp_renewal(50.0, 3.0, 1000.0, seed=4), 3.0, 0.08),
        ("gamma-0.5", gamma_renewal(50.0, 0.5, 1000.0, seed=5), 0.5, 0.03),
    ],
)
def test_window_cv_of_renewal_processes(
    label: str, times: np.ndarray, expected_cv: float, rel: float
) -> None:
    w = filled(times)
    now = float(times[-1])
    assert w.cv(now) == pytest.approx(expected_cv, rel=rel), label
    assert w.scv(now) == pytest.approx(expected_cv**2, rel=2.2 * rel), label
    assert w.count(now) == times.size


def test_periodic_arrivals_have_cv_zero_and_exact_rate() -> None:
    w = EventWindow(10.0)
    for i in range(1, 1001):
        w.append(i * 0.05)
    now = 1000 * 0.05
    assert w.cv(now) == pytest.approx(0.0, abs=1e-9)
    assert w.rate(now) == pytest.approx(20.0, rel=1e-9)


@settings(max_examples=60, deadline=None)
@given(
    gaps=st.lists(st.floats(0.0, 5.0), min_size=1, max_size=200),
    window_s=st.floats(0.5, 50.0),
    cap=st.integers(2, 60),
    extra=st.floats(0.0, 20.0),
)
def test_count_matches_brute_force(
    gaps: list[float], window_s: float, cap: int, extra: float
) -> None:
    times = np.cumsum(gaps)
    w = EventWindow(window_s, max_samples=cap)
    for t in times:
        w.append(float(t))
        assert len(w) <= cap
    now = float(times[-1]) + extra
    kept = times[-cap:]
    expected = kept[(kept > now - window_s) & (kept <= now)]
    assert w.count(now) == expected.size
    assert np.array_equal(w.timestamps(now), expected)


# --- ValueWindow -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "numpy_method"), [("nearest", "inverted_cdf"), ("linear", "linear")]
)
def test_percentiles_match_numpy(method: str, numpy_method: str) -> None:
    rng = np.random.default_rng(7)
    values = rng.lognormal(0.0, 1.0, 997)
    w = ValueWindow(1e6, method=method)  # type: ignore[arg-type]
    for i, v in enumerate(values):
        w.append(float(i), float(v))
    now = float(len(values))
    for q in (0.0, 0.5, 0.9, 0.95, 0.99, 1.0):
        expected = np.quantile(values, q, method=numpy_method)  # type: ignore[call-overload]
        assert w.percentile(now, q) == pytest.approx(expected)
    s = w.stats(now)
    assert s.count == values.size
    assert s.mean == pytest.approx(values.mean())
    assert s.scv == pytest.approx(values.var() / values.mean() ** 2)
    assert (s.p50, s.p95, s.p99) == (
        w.percentile(now, 0.5),
        w.percentile(now, 0.95),
        w.percentile(now, 0.99),
    )


def test_nearest_rank_returns_an_observed_value() -> None:
    w = ValueWindow(10.0)
    for t, v in enumerate([10.0, 20.0, 30.0, 40.0]):
        w.append(float(t), v)
    assert w.percentile(3.0, 0.5) == 20.0  # ceil(0.5 * 4) = 2nd value
    assert w.percentile(3.0, 0.99) == 40.0


def test_value_window_evicts_by_age_and_cap() -> None:
    w = ValueWindow(2.0, max_samples=1000)
    for i in range(10):
        w.append(float(i), float(i * 10))
    assert list(w.values(9.0)) == [80.0, 90.0]  # (7, 9]
    assert w.mean(9.0) == 85.0
    assert w.count(20.0) == 0
    capped = ValueWindow(100.0, max_samples=5)
    for i in range(12):
        capped.append(float(i), float(i))
    assert list(capped.values(11.0)) == [7.0, 8.0, 9.0, 10.0, 11.0]
    assert capped.dropped_by_cap == 7


def test_empty_value_window_is_no_data_not_an_error() -> None:
    w = ValueWindow(5.0)
    s = w.stats(1.0)
    assert (s.count, s.mean, s.scv, s.p50, s.p95, s.p99) == (0, None, None, None, None, None)
    assert w.percentile(1.0, 0.5) is None
    assert w.mean(1.0) is None
    assert w.scv(1.0) is None
    with pytest.raises(ValueError, match="q"):
        w.percentile(1.0, 1.5)


def test_service_time_scv_of_exponential_samples() -> None:
    rng = np.random.default_rng(11)
    w = ValueWindow(1e9, max_samples=50_000)
    for i, v in enumerate(rng.exponential(0.02, 40_000)):
        w.append(i * 1e-3, float(v))
    assert w.scv(40.0) == pytest.approx(1.0, rel=0.05)


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan])
def test_window_length_must_be_positive(bad: float) -> None:
    with pytest.raises(ValueError, match="window_s"):
        EventWindow(bad)
    with pytest.raises(ValueError, match="window_s"):
        ValueWindow(bad)


# --- binned CV -------------------------------------------------------------------------------


def brute_binned(t: np.ndarray, bin_s: float, lo: float, n_bins: int) -> list[float]:
    out = []
    for b in range(n_bins):
        inside = t[(t >= lo + b * bin_s) & (t < lo + (b + 1) * bin_s)]
        g = np.diff(inside)
        out.append(g.std() / g.mean() if g.size >= 2 and g.mean() > 0 else math.nan)
    return out


def test_binned_cv_matches_a_brute_force_loop() -> None:
    t = gamma_renewal(3.0, 2.5, 600.0, seed=9)
    b = binned_cv(t, 10.0)
    assert b.start_s == t[0]
    assert b.count.sum() == t.size
    assert b.cv.size == b.count.size == math.floor((t[-1] - t[0]) / 10.0) + 1
    np.testing.assert_allclose(b.cv, brute_binned(t, 10.0, t[0], b.cv.size), rtol=1e-9)
    assert np.allclose(b.rate, b.count / 10.0)
    assert b.bin_start_s[1] == pytest.approx(t[0] + 10.0)


def test_binned_cv_of_poisson_is_about_one_and_sparse_bins_are_nan() -> None:
    t = poisson(20.0, 2000.0, seed=4)
    b = binned_cv(t, 10.0, start_s=0.0, end_s=2000.0)
    assert b.cv.size == 200
    assert np.nanmedian(b.cv) == pytest.approx(1.0, abs=0.05)
    sparse = binned_cv(np.array([0.5, 1.0, 25.0, 26.0, 26.5]), 10.0, start_s=0.0, end_s=30.0)
    assert list(sparse.count) == [2, 0, 3]
    assert math.isnan(sparse.cv[0]) and math.isnan(sparse.cv[1])
    assert sparse.cv[2] == pytest.approx(np.std([1.0, 0.5]) / 0.75)


def test_gap_cv_helper() -> None:
    assert gap_cv([0.0, 1.0]) is None
    assert gap_cv([0.0, 1.0, 2.0, 3.0]) == pytest.approx(0.0)
    assert gap_cv([3.0, 0.0, 1.0, 2.0]) == pytest.approx(0.0)  # sorted first

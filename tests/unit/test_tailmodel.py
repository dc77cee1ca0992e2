"""Tail model pieces against closed forms."""

from __future__ import annotations

import itertools
import math
from dataclasses import fields, replace

import numpy as np
import pytest

from quartfaas.control.corrector.tailmodel import (
    CORR_SCALE,
    StageLoad,
    _comonotone_pmf,
    _wait_rows,
    _Waits,
    correlation_weight,
    e2e_quantile,
    index_of_dispersion,
    service_pmf,
    service_rows,
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


def test_single_server_deterministic_tandem_waits_once() -> None:
    # Friedman: in a tandem of deterministic single servers a request's total wait is its
    # wait at the slowest server alone, so two equal D/1 stages cost one wait + 2 services.
    d = StageLoad("d", 10.0, 0.05, service_scv=0.0, arrival_scv=2.0)
    one = e2e_quantile([d], [1], 0.99)
    assert e2e_quantile([d, d], [1, 1], 0.99) == pytest.approx(one + 0.05, rel=0.01)
    # A 2-server stage of service 0.1 after a D/1 of 0.05: arrivals are >= 0.05 apart,
    # so it never waits, and a D/1 after it still sees them >= 0.05 apart.
    d2 = StageLoad("d2", 10.0, 0.1, service_scv=0.0, arrival_scv=2.0)
    assert e2e_quantile([d, d2, d], [1, 2, 1], 0.99) == pytest.approx(one + 0.15, rel=0.01)


def test_multi_server_deterministic_stage_does_not_shape_the_stream() -> None:
    # Two servers can finish together: the D/1 after them waits on its own (convolution).
    d2 = StageLoad("d2", 10.0, 0.1, service_scv=0.0, arrival_scv=2.0)
    d = StageLoad("d", 10.0, 0.05, service_scv=0.0, arrival_scv=2.0)
    first = e2e_quantile([d2], [2], 0.99)
    both = e2e_quantile([d2, d], [2, 1], 0.99)
    assert both > first + 0.05 + 0.01


def test_correlation_weight_reads_the_burst_excess() -> None:
    plain = StageLoad("a", 30.0, 0.1, arrival_scv=2.0)
    assert correlation_weight([plain, plain]) == 0.0  # no burst factor known
    renewal = replace(plain, burst_factor=1.5)  # I < ca²: no excess
    assert correlation_weight([renewal, renewal]) == 0.0
    shaped = replace(plain, burst_factor=8.0)  # I = 4 ca²: 1 - 1/4 = 0.75 per stage
    assert correlation_weight([shaped, shaped]) == pytest.approx(CORR_SCALE * 0.75)
    # The comonotone share makes the end-to-end tail heavier, never lighter.
    indep = e2e_quantile([replace(shaped, burst_factor=2.0)] * 3, [4] * 3, 0.99)
    corr = e2e_quantile([shaped] * 3, [4] * 3, 0.99)
    single = e2e_quantile([replace(shaped, arrival_scv=8.0, burst_factor=8.0)] * 3, [4] * 3, 0.99)
    assert corr > indep
    assert corr <= single * 1.5  # a mixture, not a different stretch


def test_long_pipeline_quantile_is_grid_stable() -> None:
    # The grid ends at Cantelli's bound, not the (K log K) union bound: 64 stages keep
    # a fine enough step (this case was 3.76 s at 256 points against 4.83 s at 2048).
    rng = np.random.default_rng(64)
    stages = [
        StageLoad(
            f"s{i}",
            200.0,
            float(rng.uniform(0.005, 0.08)),
            service_scv=float(rng.choice([0.0, 0.3, 1.0])),
            arrival_scv=float(rng.uniform(1.0, 4.0)),
        )
        for i in range(64)
    ]
    reps = [s.min_stable() + 2 for s in stages]
    fine = e2e_quantile(stages, reps, 0.99, grid=2048)
    assert e2e_quantile(stages, reps, 0.99, grid=256) == pytest.approx(fine, rel=0.02)


def test_service_rows_match_service_pmf() -> None:
    stages = [StageLoad("a", 1.0, 0.05, service_scv=v) for v in (0.0, 0.3, 1.0, 2.0, 5.0)]
    rows = service_rows(stages, 0.01, 128)
    random = [s for s in stages if not s.deterministic]
    assert rows.shape == (len(random), 128)
    for s, row in zip(random, rows, strict=True):
        assert np.allclose(row, service_pmf(s, 0.01, 128), atol=1e-12)


def test_gamma_rows_match_the_scalar_path_at_every_grid() -> None:
    # Many sub-exponential stages at once (the array path), edges below, inside and past
    # each table's range, against the one-stage path (np.interp on the same table).
    rng = np.random.default_rng(5)
    means, scvs = rng.uniform(0.005, 0.3, 40), rng.uniform(0.02, 0.99, 40)
    stages = [
        StageLoad(f"s{i}", 1.0, float(m), service_scv=float(v))
        for i, (m, v) in enumerate(zip(means, scvs, strict=True))
    ]
    for delta, n in ((0.0005, 128), (0.004, 256), (0.03, 64)):
        rows = service_rows(stages, delta, n)
        for s, row in zip(stages, rows, strict=True):
            assert np.allclose(row, service_pmf(s, delta, n), atol=1e-12, rtol=0)


def test_comonotone_sum_matches_the_unit_by_unit_sum() -> None:
    rng = np.random.default_rng(9)
    ps, rs = rng.uniform(1e-3, 1.0, 30), rng.uniform(2.0, 400.0, 30)
    units = [(np.array([p]), np.array([r])) for p, r in zip(ps, rs, strict=True)]
    units.append((np.array([0.3, 0.6]), np.array([40.0, 90.0])))  # a grouped unit
    waits = _Waits(ps, rs, [units[-1]])
    delta, n = 0.002, 256
    x = -math.log(max(float(p.max()) for p, _ in units)) + np.linspace(0.0, 60.0, 4097)
    total = np.zeros_like(x)
    for p, r in units:
        total += np.maximum(((np.log(p)[:, None] + x[None, :]) / r[:, None]).max(axis=0), 0.0)
    xs = np.interp((np.arange(n) + 0.5) * delta, total, x, right=x[-1])
    expected = np.diff(np.concatenate(([0.0], 1.0 - np.exp(-xs))))
    assert np.allclose(_comonotone_pmf(waits, delta, n), expected, atol=1e-12, rtol=0)


def test_with_load_is_replace() -> None:
    # Every field away from its default, so a field that with_load forgets shows up.
    s = StageLoad("x", 3.0, 0.02, 0.3, 1.7, 2.5, 3, 2.0, 2, 9)
    assert s.with_load(5.0, 0.04) == replace(s, arrival_rate=5.0, service_mean_s=0.04)
    assert s.with_min_replicas(4) == replace(s, min_replicas=4)
    assert s.with_arrivals(6.0, None) == replace(s, arrival_rate=6.0, burst_factor=None)
    assert s.with_arrivals(6.0, 4.0) == replace(s, arrival_rate=6.0, burst_factor=4.0)
    assert StageLoad.__slots__ == tuple(f.name for f in fields(StageLoad))  # all copied above
    # the changed fields are validated as the constructor validates them
    for bad, call in (
        ("arrival_rate", lambda: s.with_load(-1.0, 0.04)),
        ("service_mean_s", lambda: s.with_load(5.0, 0.0)),
        ("arrival_rate", lambda: s.with_arrivals(math.inf, None)),
        ("burst_factor", lambda: s.with_arrivals(6.0, -2.0)),
        ("min_replicas", lambda: s.with_min_replicas(10)),
    ):
        with pytest.raises(ValueError, match=f"stage 'x': bad {bad}"):
            call()


def test_idle_deterministic_stage_at_zero_replicas() -> None:
    # No arrivals and no replicas: it never waits (was a division by zero servers).
    busy = StageLoad("a", 5.0, 0.05)
    idle = StageLoad("d", 0.0, 0.05, service_scv=0.0, min_replicas=0)
    assert e2e_quantile([busy, idle], [1, 0], 0.99) == pytest.approx(
        e2e_quantile([busy], [1], 0.99) + 0.05, rel=0.01
    )


def test_gamma_tables_are_built_once_per_shape_bin(monkeypatch: pytest.MonkeyPatch) -> None:
    # A batch mixing built and new bins builds only the new ones, and a bin's row is
    # the same whichever batch built it.
    from quartfaas.control.corrector import tailmodel as tm

    monkeypatch.setattr(tm, "_UNIT", tm._UnitTables())
    tm._UNIT.need(tm._shape_bins(np.array([2.0])))
    assert int(tm._UNIT.ready.sum()) == 1
    row = tm._UNIT.cdf[tm._shape_bins(np.array([2.0]))[0]].copy()
    tm._UNIT.need(tm._shape_bins(np.array([2.0, 3.0, 4.0, 3.0])))
    assert int(tm._UNIT.ready.sum()) == 3
    alone = tm._UnitTables()
    alone.need(tm._shape_bins(np.array([4.0, 2.0])))
    assert np.array_equal(alone.cdf[tm._shape_bins(np.array([2.0]))[0]], row)


def test_gamma_cdf_keeps_the_mean_and_rounds_the_shape_within_a_percent() -> None:
    # The tables are per shape bin (ln k rounded to 1/64, k within 0.8%) and scaled to
    # the stage's mean: the CDF is the exact Gamma CDF of the rounded shape *at the same
    # mean* within 0.15% (at the old scale, with the mean moved by the rounding, it is
    # off by up to 0.76% at SCV 0.05), within 0.3% of the unrounded one, and shapes in one
    # bin share one table. SCV 0.99 is the shape near 1 whose first step from 0 the
    # trapezoids used to miss (1.6% of the CDF).
    special = pytest.importorskip("scipy.special")
    from quartfaas.control.corrector import tailmodel as tm

    for scv in (0.05, 0.13, 0.5, 0.77, 0.99):
        k, mean = 1.0 / scv, 0.04
        kq = math.exp(float(tm._shape_bins(np.array([k]))[0]) / 64.0)
        t = np.linspace(0.0, 4.0 * mean, 400)
        got = tm._gamma_cdf(k, mean / k, t)
        assert np.max(np.abs(got - special.gammainc(kq, t * kq / mean))) < 1.5e-3
        assert np.max(np.abs(got - special.gammainc(k, t * k / mean))) < 3e-3
    k = 20.0
    moved = special.gammainc(math.exp(float(tm._shape_bins(np.array([k]))[0]) / 64.0), t * k / 0.04)
    assert np.max(np.abs(tm._gamma_cdf(k, 0.04 / k, t) - moved)) > 5e-3  # the mean matters
    a, b = tm._shape_bins(np.array([2.0, 2.0 * 1.001]))
    assert a == b


def _union_bound_loop(stages: list[StageLoad], replicas: list[int], q: float) -> float:
    """``_union_bound`` as it was written before it took arrays: a loop over stages."""
    from quartfaas.control.corrector import tailmodel as tm
    from quartfaas.control.corrector.queueing import service_percentile

    eps = (1.0 - q) / (2.0 * len(stages))
    total = mean = var_svc = sd_waits = var_waits = 0.0
    for s, c in zip(stages, replicas, strict=True):
        wt = tm.wait_tail(s, c)
        if not wt.stable:
            return math.inf
        total += wt.quantile(1.0 - eps)
        if wt.p_wait > 0 and math.isfinite(wt.rate):
            m1 = wt.p_wait / wt.rate
            v = 2.0 * m1 / wt.rate - m1 * m1
            mean += m1
            sd_waits += math.sqrt(max(v, 0.0))
            var_waits += max(v, 0.0)
        if not s.deterministic:
            scv = min(s.service_scv, tm.MAX_SCV)
            mean += s.service_mean_s
            var_svc += scv * s.service_mean_s**2
            if scv > 1.0:
                p, _, mu2 = tm._h2(s.service_mean_s, scv)
                total += math.log(max(1.0 - p, eps) / eps) / mu2
            else:
                total += service_percentile(s.service_mean_s, scv, 1.0 - eps)
    var = var_svc + (sd_waits**2 if tm.correlation_weight(stages) > 0 else var_waits)
    return min(total, mean + math.sqrt(var * q / (1.0 - q)))


@pytest.mark.parametrize("seed", range(6))
def test_union_bound_in_arrays_matches_the_loop(seed: int) -> None:
    from quartfaas.control.corrector import tailmodel as tm

    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    stages = [
        StageLoad(
            f"s{i}",
            float(rng.choice([0.0, rng.uniform(1.0, 80.0)])),
            float(rng.uniform(0.005, 0.1)),
            service_scv=float(
                rng.choice([0.0, rng.uniform(0.01, 0.99), 1.0, rng.uniform(1.5, 9.0)])
            ),
            arrival_scv=float(rng.uniform(0.5, 3.0)),
            burst_factor=None if rng.random() < 0.5 else float(rng.uniform(0.5, 6.0)),
            servers_per_replica=int(rng.choice([1, 2, 4])),
        )
        for i in range(n)
    ]
    reps = [s.min_stable() + int(rng.integers(0, 3)) for s in stages]
    for q in (0.95, 0.99, 0.999):
        assert tm._union_bound(stages, reps, q) == pytest.approx(
            _union_bound_loop(stages, reps, q), rel=1e-9
        )
    unstable = [
        max(0, c - 5) if s.arrival_rate > 0 else c for s, c in zip(stages, reps, strict=True)
    ]
    if any(s.arrival_rate > 0 for s in stages):
        assert (
            tm._union_bound(stages, unstable, 0.99)
            == math.inf
            == _union_bound_loop(stages, unstable, 0.99)
        )


@pytest.mark.parametrize("seed", range(4))
def test_wait_units_without_deterministic_stages_are_the_waiting_stages(seed: int) -> None:
    # With no deterministic stage every waiting stage is its own unit, in order: the
    # array path must give what the per-stage walk (taken when one is deterministic) gives.
    from quartfaas.control.corrector import tailmodel as tm

    rng = np.random.default_rng(seed)
    stages = [
        StageLoad(f"s{i}", float(rng.uniform(0, 50)), float(rng.uniform(0.01, 0.2)),
                  service_scv=float(rng.uniform(0.05, 3.0)), servers_per_replica=2)
        for i in range(30)
    ]  # fmt: skip
    reps = [s.min_stable() + int(rng.integers(0, 3)) for s in stages]
    tails = [tm.wait_tail(s, c) for s, c in zip(stages, reps, strict=True)]
    got = tm._wait_units(stages, reps, tails)
    assert got is not None and not got.runs
    waiting = [wt for wt in tails if wt.p_wait > 0 and math.isfinite(wt.rate)]
    assert got.single_p.tolist() == [wt.p_wait for wt in waiting]
    assert got.single_r.tolist() == [wt.rate for wt in waiting]
    # the walk: one deterministic stage that never waits (its own wait is 0) changes nothing
    idle_det = StageLoad("d", 0.0, 0.05, service_scv=0.0)
    walked = tm._wait_units([*stages, idle_det], [*reps, 1], [*tails, tm.wait_tail(idle_det, 1)])
    assert walked is not None and not walked.runs
    assert walked.single_p.tolist() == got.single_p.tolist()
    assert walked.single_r.tolist() == got.single_r.tolist()
    unstable = [*tails[:-1], tm.WaitTail(1.0, 0.0)]
    assert tm._wait_units(stages, reps, unstable) is None


def test_the_wait_rows_kernels_give_the_array_expression_bit_for_bit() -> None:
    # ``_exponents`` and ``_tail_differences`` against the numpy expression they replaced:
    # no-wait rows (p 0, rate inf), exponents past the 700 cap, an empty batch.
    rng = np.random.default_rng(3)
    for _ in range(200):
        k = int(rng.integers(0, 70))
        n = int(rng.choice([8, 16, 256, 1024]))
        p = rng.uniform(0.0, 1.0, k) * (rng.uniform(size=k) < 0.9)
        r = np.exp(rng.uniform(-3.0, 12.0, k))
        r[rng.uniform(size=k) < 0.05] = math.inf
        delta = float(10 ** rng.uniform(-5.0, 0.0))
        edges = (np.arange(n) + 0.5) * delta
        cdf = 1.0 - p[:, None] * np.exp(-np.minimum(r[:, None] * edges[None, :], 700.0))
        want = np.diff(cdf, axis=1, prepend=0.0)
        assert np.array_equal(_wait_rows(p, r, delta, n), want)

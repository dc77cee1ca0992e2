"""The joint planner on cases with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest

from quartfaas.control.corrector import planner, tailmodel
from quartfaas.control.corrector.planner import (
    CHECK_GRID,
    PlanOutcome,
    plan_above,
    plan_above_at,
    plan_replicas,
)
from quartfaas.control.corrector.tailmodel import StageLoad, e2e_quantile


def test_issue_example_is_feasible_at_high_utilisation() -> None:
    # Issue 12: 3 stages of exponential 100 ms service, SLO 900 ms. Per-stage budgets of
    # 300 ms are each below the service p99 (460 ms); the end-to-end SLO is not.
    stages = [StageLoad(f"s{i}", 8.0, 0.1) for i in range(3)]
    plan = plan_replicas(stages, 0.9)
    assert plan.outcome is PlanOutcome.FEASIBLE
    assert plan.quantile_s <= 0.9
    assert e2e_quantile(stages, plan.replicas, 0.99, grid=CHECK_GRID) <= 0.9
    assert all(b > 0.3 for b in plan.budgets_s)  # budgets are outputs, above the old split


def test_cheaper_stage_gets_the_extra_replicas() -> None:
    cheap = StageLoad("cheap", 40.0, 0.1, cost=1.0)
    dear = StageLoad("dear", 40.0, 0.1, cost=8.0)
    plan = plan_replicas([cheap, dear], 0.8)
    assert plan.outcome is PlanOutcome.FEASIBLE
    assert plan.replicas[0] > plan.replicas[1]  # equal costs give (6, 6) here
    assert plan.cost == plan.replicas[0] * 1.0 + plan.replicas[1] * 8.0


def test_infeasible_is_a_value_with_the_best_vector() -> None:
    stages = [StageLoad(f"s{i}", 8.0, 0.1, service_scv=0.0, max_replicas=4) for i in range(3)]
    plan = plan_replicas(stages, 0.2)  # 300 ms of deterministic service > 200 ms
    assert plan.outcome is PlanOutcome.INFEASIBLE and not plan.feasible
    assert plan.replicas == (4, 4, 4) and "service alone" in plan.reason
    tight = [StageLoad("a", 30.0, 0.1, max_replicas=4)]
    capped = plan_replicas(tight, 0.15)
    assert capped.outcome is PlanOutcome.INFEASIBLE and capped.replicas == (4,)
    over = plan_replicas([StageLoad("b", 100.0, 0.1, max_replicas=5)], 10.0)
    assert over.outcome is PlanOutcome.INFEASIBLE and "cannot carry" in over.reason


def test_idle_pipeline_plans_minimums() -> None:
    plan = plan_replicas([StageLoad("a", 0.0, 0.1, min_replicas=2)], 1.0)
    assert plan.outcome is PlanOutcome.IDLE and plan.replicas == (2,)


def test_caches_do_not_change_the_plan() -> None:
    # The tick's caches (Gamma tables, the service spectrum shared by the plan and the
    # down-scale plan) must give the plan computed from scratch, on a set of loads.
    import random

    from quartfaas.control.corrector import planner, tailmodel

    rng = random.Random(11)
    for _ in range(6):
        stages = [
            StageLoad(
                f"s{i}",
                rng.uniform(5.0, 40.0),
                rng.uniform(0.01, 0.06),
                service_scv=rng.choice((0.0, rng.uniform(0.01, 0.5), 1.0, 2.0)),
                arrival_scv=rng.uniform(0.6, 1.7),
                burst_factor=rng.choice((None, rng.uniform(1.0, 4.0))),
                max_replicas=16,
            )
            for i in range(24)
        ]
        slo = 3.0 * sum(s.service_mean_s for s in stages) + 0.5
        warm = [plan_replicas(stages, slo) for _ in range(2)]
        planner._SVC_CACHE.clear()
        tailmodel._UNIT = tailmodel._UnitTables()
        cold = plan_replicas(stages, slo)
        assert warm[0] == warm[1] == cold


def test_budgets_are_each_stages_service_and_wait_quantiles() -> None:
    # The derived budgets (array operations) against the per-stage formulas.
    from quartfaas.control.corrector.queueing import service_percentile
    from quartfaas.control.corrector.tailmodel import wait_tail

    rng = np.random.default_rng(11)
    stages = [
        StageLoad(
            f"s{i}",
            float(rng.choice([0.0, rng.uniform(1.0, 60.0)])),
            float(rng.uniform(0.005, 0.08)),
            service_scv=float(rng.choice([0.0, rng.uniform(0.05, 0.95), 1.0, 3.0, 80.0])),
            arrival_scv=float(rng.uniform(0.5, 2.0)),
        )
        for i in range(30)
    ]
    reps = [s.min_stable() + int(rng.integers(0, 3)) for s in stages]
    reps[3] = 0 if stages[3].arrival_rate > 0 else reps[3]  # one unstable stage: inf
    for q in (0.95, 0.99):
        got = planner._budgets(stages, reps, q)
        for s, c, b in zip(stages, reps, got, strict=True):
            svc = (
                s.service_mean_s
                if s.deterministic
                else service_percentile(s.service_mean_s, min(s.service_scv, 100.0), q)
            )
            want = svc + wait_tail(s, c).quantile(q)
            assert b == pytest.approx(want, rel=1e-9) or b == want == math.inf


def _pipeline(seed: int, n: int = 12, rate: float = 40.0) -> list[StageLoad]:
    rng = np.random.default_rng(seed)
    return [
        StageLoad(
            f"s{i}",
            rate * float(rng.uniform(0.8, 1.2)),
            float(rng.uniform(0.005, 0.05)),
            service_scv=float(rng.choice([0.0, rng.uniform(0.05, 0.9), 1.0, 2.0])),
            arrival_scv=float(rng.uniform(0.6, 2.0)),
            max_replicas=32,
        )
        for i in range(n)
    ]


def _grid_tail(stages: list[StageLoad], reps: tuple[int, ...], slo: float) -> float:
    """P(T > SLO) on the planner's grid (what plan_above holds to 1 - q)."""
    model = planner._Model(stages, slo, planner.PLAN_GRID)
    phi = np.prod(model.waits(np.array(reps, dtype=np.int64)), axis=0)
    return 1.0 - float((phi * model.weights).sum().real)


@pytest.mark.parametrize("seed", range(5))
def test_plan_above_holds_the_higher_load_from_the_plan_up(seed: int) -> None:
    # The down-scale threshold: never below the plan it starts from, meets the SLO at the
    # higher load on the planner's grid, and keeps no replica above its floors that it
    # could drop and still meet it.
    stages = _pipeline(seed)
    slo = 2.5 * sum(s.service_mean_s for s in stages) + 0.2
    plan = plan_replicas(stages, slo)
    assert plan.feasible
    more = [s.with_load(s.arrival_rate * 1.3, s.service_mean_s) for s in stages]
    above = planner.plan_above(more, slo, plan.replicas)
    assert all(a >= b for a, b in zip(above, plan.replicas, strict=True))
    assert above != plan.replicas  # 30% more load needs more somewhere
    assert _grid_tail(more, above, slo) <= 0.01
    model = planner._Model(more, slo, planner.PLAN_GRID)
    hi = np.array([s.max_replicas for s in more])
    stable = np.minimum(np.array([s.min_stable() for s in more]), hi)
    floors = planner._wait_floor(model, stable, hi, slo - model.shift, 0.99)
    for k in range(len(stages)):
        if above[k] > max(plan.replicas[k], floors[k]):  # what the trim may take back
            fewer = list(above)
            fewer[k] -= 1
            assert _grid_tail(more, tuple(fewer), slo) > 0.01
    # At the plan's own load it asks for nothing more.
    assert planner.plan_above(stages, slo, plan.replicas) == plan.replicas


def test_plan_above_bounds_and_bad_input() -> None:
    stages = _pipeline(1, n=4)
    slo = 2.5 * sum(s.service_mean_s for s in stages) + 0.2
    base = plan_replicas(stages, slo).replicas
    flood = [s.with_load(1e4, s.service_mean_s) for s in stages]  # beyond max_replicas
    assert planner.plan_above(flood, slo, base) == tuple(s.max_replicas for s in stages)
    idle = [s.with_load(0.0, s.service_mean_s) for s in stages]
    assert planner.plan_above(idle, slo, base) == base
    with pytest.raises(ValueError, match="base counts"):
        planner.plan_above(stages, slo, base[:-1])
    with pytest.raises(ValueError, match="bad planner input"):
        planner.plan_above(stages, -1.0, base)


@pytest.mark.parametrize("seed", range(4))
def test_grid_tail_equals_a_direct_convolution_from_far_below_to_far_above_the_plan(
    seed: int,
) -> None:
    # The planner's transforms are only as long as its grid and rely on the exponential
    # tilt to damp what wraps around (a sum beyond the SLO). A direct linear convolution
    # of the same rounded masses, cut at the grid's end after each stage (exact below
    # it), must give the same P(T <= SLO), also for vectors whose mass is mostly beyond
    # the SLO (where an undamped wrap would count it as below).
    stages = _pipeline(seed, n=16, rate=60.0)
    slo = 0.3 + sum(s.service_mean_s for s in stages)
    model = planner._Model(stages, slo, planner.PLAN_GRID)
    n, delta = model.n, model.delta
    svc = tailmodel.service_rows(stages, delta, n)
    start = np.array(planner._start(stages, 0.999), dtype=np.int64)
    plan = np.array(plan_replicas(stages, slo).replicas, dtype=np.int64)
    for reps in (start, np.maximum(start, plan - 1), plan, plan + 3):
        p, r = model.params(np.arange(len(stages)), reps)
        mass = np.zeros(n)
        mass[0] = 1.0
        for row in svc:
            mass = np.convolve(mass, row)[:n]
        for pk, rk in zip(p, r, strict=True):
            wait = np.zeros(n)
            if rk >= 1e300:  # no wait
                wait[0] = 1.0
            elif rk > 0:
                i = np.arange(n)
                wait = 2.0 * pk * math.sinh(0.5 * rk * delta) * np.exp(-rk * delta * i)
                wait[0] = 1.0 - pk * math.exp(-0.5 * rk * delta)
            mass = np.convolve(mass, wait)[:n]
        direct = float(mass.sum())
        phi = np.prod(model.waits(reps), axis=0)
        assert float((phi * model.weights).sum().real) == pytest.approx(direct, abs=1e-7)


def _start_loop(stages: list[StageLoad], max_util: float) -> list[int]:
    """``planner._start`` as it was written before it took arrays: a loop over stages."""
    out = []
    for s in stages:
        need = 0
        if s.arrival_rate > 0:
            need = math.ceil(s.offered_load / (s.servers_per_replica * max_util) - 1e-9)
            if s.offered_load >= need * s.servers_per_replica:
                need += 1
        out.append(max(s.min_replicas, need))
    return out


@pytest.mark.parametrize("seed", range(6))
def test_start_and_wait_tails_in_arrays_match_the_per_stage_code(seed: int) -> None:
    rng = np.random.default_rng(seed)
    n = 40
    spr = rng.integers(1, 5, n)
    mean = rng.uniform(0.001, 0.3, n)
    # loads on and near whole numbers of servers (the ceilings' edges), idle stages too
    load = np.where(rng.random(n) < 0.4, spr * rng.integers(0, 6, n), rng.uniform(0, 20, n))
    stages = [
        StageLoad(
            f"s{i}",
            float(load[i] / mean[i]),
            float(mean[i]),
            service_scv=float(rng.choice([0.0, 0.3, 1.0, 3.0])),
            arrival_scv=float(rng.uniform(0.2, 4.0)),
            burst_factor=None if rng.random() < 0.5 else float(rng.uniform(0.5, 8.0)),
            servers_per_replica=int(spr[i]),
            cost=float(rng.choice([1.0, 2.0])),
            min_replicas=int(rng.integers(0, 3)),
        )
        for i in range(n)
    ]
    for util in (1.0, 0.999, 0.7):
        assert planner._start(stages, util) == _start_loop(stages, util)
    model = planner._Model(stages, 2.0, planner.PLAN_GRID)
    reps = np.array(_start_loop(stages, 1.0), dtype=np.int64) + rng.integers(0, 3, n)
    reps[0] = 0  # unstable
    want = [tailmodel.wait_tail(s, int(c)) for s, c in zip(stages, reps, strict=True)]
    p, r = model.pr(reps)
    for wt, pk, rk in zip(want, p.tolist(), r.tolist(), strict=True):
        assert (pk, rk) == pytest.approx((wt.p_wait, wt.rate), rel=1e-12)
    assert model.tails(reps) == [tailmodel.WaitTail(pk, rk) for pk, rk in zip(p, r, strict=True)]


def test_plan_above_at_refuses_bad_loads() -> None:
    stages = [StageLoad("a", 5.0, 0.02, 0.5), StageLoad("b", 5.0, 0.03, 0.5, max_replicas=4)]
    ok_rates, ok_floors = np.array([6.0, 6.0]), np.array([1, 1])
    assert plan_above_at(stages, 1.0, [1, 1], rates=ok_rates, floors=ok_floors) == plan_above(
        [s.with_load(6.0, s.service_mean_s) for s in stages], 1.0, [1, 1]
    )
    with pytest.raises(ValueError, match="arrival rates"):
        plan_above_at(stages, 1.0, [1, 1], rates=np.array([6.0, math.inf]), floors=ok_floors)
    with pytest.raises(ValueError, match="arrival rates"):
        plan_above_at(stages, 1.0, [1, 1], rates=np.array([-1.0, 6.0]), floors=ok_floors)
    with pytest.raises(ValueError, match="min_replicas"):
        plan_above_at(stages, 1.0, [1, 1], rates=ok_rates, floors=np.array([1, 5]))
    with pytest.raises(ValueError, match="rates"):
        plan_above_at(stages, 1.0, [1, 1], rates=np.array([6.0]), floors=ok_floors)
    with pytest.raises(ValueError, match="base counts"):
        plan_above_at(stages, 1.0, [1], rates=ok_rates, floors=ok_floors)


def _params_in_arrays(
    model: planner._Model, idx: np.ndarray, replicas: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """``_Model.params`` as numpy array formulas (its form before the kernel)."""
    m = replicas * model.spr[idx]
    model._grow(int(m.max()))
    b = model._erlang_b[m, idx]
    lam, a, g, mu = model.lam[idx], model.load[idx], model.g[idx], model.mu[idx]
    mf = m.astype(np.float64)
    cap = mf * mu
    stable = (m > 0) & (lam < cap)
    with np.errstate(divide="ignore", invalid="ignore"):
        c_wait = np.where(a >= mf, 1.0, b / (1.0 - (a / mf) * (1.0 - b)))
        rate = (cap - lam) / g
    none = (model.lam == 0)[idx] | (model.g <= 0)[idx]
    p = np.where(none, 0.0, np.where(stable, c_wait, 1.0))
    r = np.where(none, 1e300, np.where(stable, rate, 0.0))
    return p, r


@pytest.mark.parametrize("seed", range(6))
def test_the_wait_parameters_kernel_is_the_array_formulas_bit_for_bit(seed: int) -> None:
    # Idle stages, deterministic arrivals and service (no wait), several servers a
    # replica, counts from 0 (unstable) through saturation (a >= m) to far above, in
    # batches that need the Erlang-B table grown (several times) and ones that do not.
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 40))
    stages = [
        StageLoad(
            f"s{i}",
            float(rng.choice([0.0, rng.uniform(0.1, 400.0)])),
            float(rng.uniform(0.002, 0.2)),
            service_scv=float(rng.choice([0.0, rng.uniform(0.01, 3.0)])),
            arrival_scv=float(rng.choice([0.0, rng.uniform(0.2, 4.0)])),
            servers_per_replica=int(rng.choice([1, 2, 4])),
            max_replicas=512,
        )
        for i in range(n)
    ]
    model = planner._Model(stages, 2.0, planner.PLAN_GRID)
    reference = planner._Model(stages, 2.0, planner.PLAN_GRID)
    seen_unstable = 0
    for top in (3, 40, 200, 600):
        idx = rng.integers(0, n, size=int(rng.integers(1, 3 * n + 1)))
        reps = rng.integers(0, top, size=idx.size)
        p, r = model.params(idx, reps)
        want_p, want_r = _params_in_arrays(reference, idx, reps)
        assert np.array_equal(p, want_p) and np.array_equal(r, want_r)
        seen_unstable += int((r == 0.0).sum())
    assert seen_unstable > 0
    # and the per-stage reference: tailmodel.wait_tail (closely; its Erlang C is its own)
    reps = np.array([max(1, s.min_stable()) + 1 for s in stages], dtype=np.int64)
    p, r = model.params(np.arange(n), reps)
    for s, c, pk, rk in zip(stages, reps.tolist(), p.tolist(), r.tolist(), strict=True):
        wt = tailmodel.wait_tail(s, c)
        assert pk == pytest.approx(wt.p_wait, rel=1e-9, abs=1e-300)
        assert rk == pytest.approx(wt.rate, rel=1e-12) or (rk >= 1e300 and wt.rate == math.inf)


def test_kept_wait_transforms_are_the_transforms_of_each_pair() -> None:
    # Repeated pairs within a batch, pairs kept from earlier batches, and counts beyond
    # the kept table's first width (it widens): every row is the transform of its pair.
    stages = _pipeline(3, n=6)
    model = planner._Model(stages, 0.5, planner.PLAN_GRID)
    fresh = planner._Model(stages, 0.5, planner.PLAN_GRID)
    rng = np.random.default_rng(0)
    for top in (4, 4, 12, 40, 40):
        idx = rng.integers(0, 6, size=20)
        reps = rng.integers(0, top, size=20)
        idx[5], reps[5] = idx[0], reps[0]  # a repeat within the batch
        got = model.waits_at(idx, reps)
        p, r = fresh.params(idx, reps)
        want = planner._wait_spectra(p, r, fresh.delta, fresh.n, fresh.length)
        assert np.array_equal(got, want)
    assert model._have < 100  # each pair transformed once: fewer rows than asked for


@pytest.mark.parametrize("seed", range(4))
def test_the_wait_masses_kernels_give_the_array_expression_bit_for_bit(seed: int) -> None:
    # The masses the wait transforms are made of: the numpy expression that
    # ``_decay_exponents`` and ``_scale_rows`` replaced, against them, with unstable rows
    # (rate 0), no-wait rows (p 0), exponents past the 700 cap, and grids of 8-256 points.
    rng = np.random.default_rng(seed)
    for _ in range(50):
        k = int(rng.integers(1, 70))
        n = int(rng.choice([8, 16, 128, 256]))
        p = rng.uniform(0.0, 1.0, k) * (rng.uniform(size=k) < 0.9)
        rate = np.exp(rng.uniform(-3.0, 12.0, k))
        rate[rng.uniform(size=k) < 0.1] = 0.0
        delta = float(10 ** rng.uniform(-5.0, 0.0))
        r = np.where(rate > 0, rate, 1.0)
        i = np.arange(n)
        rd = np.minimum(r * delta, 700.0)[:, None]
        decay = np.exp(-np.minimum(rd * i[None, :] + (planner._TILT / n) * i[None, :], 700.0))
        masses = (2.0 * p[:, None] * np.sinh(0.5 * rd)) * decay
        masses[:, 0] = 1.0 - p * np.exp(-0.5 * rd[:, 0])
        want = np.fft.rfft(masses, n, axis=1)
        want[rate <= 0] = 0.0
        assert np.array_equal(planner._wait_spectra(p, rate, delta, n, n), want)

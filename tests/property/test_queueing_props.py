"""Invariants of the queueing model (control/corrector/queueing.py), checked with Hypothesis."""

from __future__ import annotations

import math

from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.control.corrector.queueing import (
    PlanStatus,
    erlang_b,
    erlang_c,
    mmc_wait_mean,
    replicas_for_slo,
    service_percentile,
    sojourn_percentile,
    wait_percentile,
)

servers = st.integers(min_value=1, max_value=512)
loads = st.floats(min_value=0.0, max_value=1000.0, allow_nan=False)
rates = st.floats(min_value=0.01, max_value=500.0, allow_nan=False)
scvs = st.floats(min_value=0.0, max_value=4.0, allow_nan=False)
pcts = st.sampled_from([0.9, 0.95, 0.99, 0.999])


@given(servers, loads)
def test_probabilities_are_probabilities(c: int, a: float) -> None:
    b, pw = erlang_b(c, a), erlang_c(c, a)
    assert 0.0 <= b <= 1.0 and 0.0 <= pw <= 1.0
    assert math.isfinite(b) and math.isfinite(pw)
    if a < c:
        assert pw >= b  # waiting is at least as likely as blocking would be


@given(st.integers(min_value=1, max_value=511), st.floats(min_value=0.0, max_value=500.0))
def test_more_servers_never_wait_longer(c: int, a: float) -> None:
    assert erlang_c(c + 1, a) <= erlang_c(c, a) + 1e-12
    w0, w1 = mmc_wait_mean(c, a, 1.0), mmc_wait_mean(c + 1, a, 1.0)
    assert w1 <= w0  # inf <= inf when both are unstable
    assert wait_percentile(c + 1, a, 1.0, 0.99) <= wait_percentile(c, a, 1.0, 0.99)


@given(c=servers, rho=st.floats(min_value=0.0, max_value=0.999), mu=rates, sa=scvs, ss=scvs, p=pcts)
def test_sojourn_is_at_least_the_service_percentile(
    *, c: int, rho: float, mu: float, sa: float, ss: float, p: float
) -> None:
    lam = rho * c * mu
    t = sojourn_percentile(c, lam, mu, p, scv_a=sa, scv_s=ss)
    assert t >= service_percentile(1 / mu, ss, p) - 1e-12
    assert math.isfinite(t)


@settings(max_examples=200)
@given(
    l1=st.floats(min_value=0.0, max_value=400.0),
    l2=st.floats(min_value=0.0, max_value=400.0),
    mu=rates,
    sa=scvs,
    ss=scvs,
    t=st.floats(min_value=0.01, max_value=10.0),
    p=pcts,
    spr=st.integers(min_value=1, max_value=4),
    u=st.floats(min_value=0.3, max_value=1.0),
)
def test_replicas_monotone_in_arrival_rate(
    *, l1: float, l2: float, mu: float, sa: float, ss: float, t: float, p: float, spr: int, u: float
) -> None:
    lo, hi = sorted((l1, l2))
    a = replicas_for_slo(lo, mu, sa, ss, t, p, spr, max_util=u, c_max=512)
    b = replicas_for_slo(hi, mu, sa, ss, t, p, spr, max_util=u, c_max=512)
    assert a.replicas is not None and b.replicas is not None
    assert a.replicas <= b.replicas


@settings(max_examples=200)
@given(
    lam=st.floats(min_value=0.01, max_value=300.0),
    mu=rates,
    sa=scvs,
    ss=scvs,
    t1=st.floats(min_value=0.001, max_value=20.0),
    t2=st.floats(min_value=0.001, max_value=20.0),
    p=pcts,
    spr=st.integers(min_value=1, max_value=4),
)
def test_replicas_monotone_in_tighter_targets(
    *, lam: float, mu: float, sa: float, ss: float, t1: float, t2: float, p: float, spr: int
) -> None:
    tight, loose = sorted((t1, t2))
    a = replicas_for_slo(lam, mu, sa, ss, tight, p, spr, max_util=0.9)
    b = replicas_for_slo(lam, mu, sa, ss, loose, p, spr, max_util=0.9)
    assert a.replicas is not None and b.replicas is not None
    if a.status is not PlanStatus.INFEASIBLE:  # below the service percentile: best effort
        assert a.replicas >= b.replicas


@settings(max_examples=200)
@given(
    lam=st.floats(min_value=0.01, max_value=600.0),
    mu=rates,
    sa=scvs,
    ss=scvs,
    t=st.floats(min_value=0.001, max_value=20.0),
    p=pcts,
    spr=st.integers(min_value=1, max_value=4),
    u=st.floats(min_value=0.3, max_value=1.0),
)
def test_plan_meets_its_target_minimally_and_stays_stable(
    *, lam: float, mu: float, sa: float, ss: float, t: float, p: float, spr: int, u: float
) -> None:
    plan = replicas_for_slo(lam, mu, sa, ss, t, p, spr, max_util=u, c_max=512)
    assert plan.replicas is not None and 1 <= plan.replicas <= 512
    if plan.status is PlanStatus.OK:
        c = plan.replicas
        assert plan.predicted_s is not None and plan.predicted_s <= t
        assert lam / (c * spr * mu) <= u + 1e-9
        if c > 1:  # one fewer replica must fail the target or the utilisation cap
            fewer = sojourn_percentile((c - 1) * spr, lam, mu, p, scv_a=sa, scv_s=ss)
            assert fewer > t or lam / ((c - 1) * spr * mu) > u + 1e-9
    elif plan.status is PlanStatus.CAPPED:
        assert plan.replicas == 512
    else:
        assert plan.status is PlanStatus.INFEASIBLE
        assert plan.service_pct_s is not None and plan.service_pct_s > t

"""Synthetic arrival processes: target rate and CV, determinism, MMPP maths, Workload strings."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.errors import SpecError
from quartfaas.metrics.windows import gap_cv
from quartfaas.workload import Workload
from quartfaas.workload.synthetic import (
    MMPP,
    erlang_renewal,
    gamma_renewal,
    hyperexp_params,
    hyperexp_renewal,
    mmpp,
    mmpp_for,
    poisson,
)
from quartfaas.workload.traces import load_trace

DURATION_S = 10_000.0
RATE = 20.0  # ~200k arrivals per sample

Gen = Callable[[int], np.ndarray]

CASES: list[tuple[str, Gen, float, float]] = [
    # label, generator(seed), target CV, relative tolerance on the CV
    ("poisson", lambda s: poisson(RATE, DURATION_S, s), 1.0, 0.02),
    ("gamma-0", lambda s: gamma_renewal(RATE, 0.0, DURATION_S, s), 0.0, 0.0),
    ("gamma-0.5", lambda s: gamma_renewal(RATE, 0.5, DURATION_S, s), 0.5, 0.02),
    ("gamma-2", lambda s: gamma_renewal(RATE, 2.0, DURATION_S, s), 2.0, 0.04),
    ("gamma-4", lambda s: gamma_renewal(RATE, 4.0, DURATION_S, s), 4.0, 0.06),
    ("gamma-8", lambda s: gamma_renewal(RATE, 8.0, DURATION_S, s), 8.0, 0.08),
    ("erlang-9", lambda s: erlang_renewal(RATE, 9, DURATION_S, s), 1 / 3, 0.02),
    ("hyperexp-4", lambda s: hyperexp_renewal(RATE, 4.0, DURATION_S, s), 4.0, 0.06),
    ("mmpp-2", lambda s: mmpp(mmpp_for(RATE, 2.0), DURATION_S, s), 2.0, 0.05),
    ("mmpp-4", lambda s: mmpp(mmpp_for(RATE, 4.0, on_frac=0.1), DURATION_S, s), 4.0, 0.06),
    ("mmpp-8", lambda s: mmpp(mmpp_for(RATE, 8.0, on_s=2.0), 4 * DURATION_S, s), 8.0, 0.08),
]


@pytest.mark.parametrize(("label", "gen", "cv", "rel"), CASES, ids=[c[0] for c in CASES])
def test_generators_hit_rate_and_cv(label: str, gen: Gen, cv: float, rel: float) -> None:
    t = gen(1)
    duration = t[-1]
    assert np.all(np.diff(t) >= 0) and t[0] >= 0
    assert (t.size - 1) / duration == pytest.approx(RATE, rel=0.03), label
    assert gap_cv(t) == pytest.approx(cv, rel=rel, abs=1e-9), label


@pytest.mark.parametrize(("label", "gen"), [(c[0], c[1]) for c in CASES], ids=[c[0] for c in CASES])
def test_same_seed_same_array_other_seed_differs(label: str, gen: Gen) -> None:
    a, b = gen(7), gen(7)
    assert np.array_equal(a, b), label
    if label != "gamma-0":  # periodic arrivals do not depend on the seed
        assert not np.array_equal(a, gen(8)), label


def test_arrivals_stay_inside_the_duration() -> None:
    for t in (poisson(5.0, 3.0, 1), mmpp(mmpp_for(5.0, 3.0), 3.0, 1)):
        assert t.size == 0 or (t[0] >= 0.0 and t[-1] < 3.0)


def test_hyperexp_params_give_mean_and_cv() -> None:
    for cv in (1.5, 3.0, 8.0):
        p, mu1, mu2 = hyperexp_params(4.0, cv)
        mean = p / mu1 + (1 - p) / mu2
        second = 2 * p / mu1**2 + 2 * (1 - p) / mu2**2
        assert mean == pytest.approx(0.25)
        assert second / mean**2 - 1 == pytest.approx(cv * cv)
        assert p / mu1 == pytest.approx((1 - p) / mu2)  # balanced means
    with pytest.raises(SpecError, match="> 1"):
        hyperexp_params(4.0, 1.0)


@pytest.mark.parametrize("cv", [1.0, 1.5, 4.0, 8.0, 13.15])
@pytest.mark.parametrize("shape", [{}, {"on_frac": 0.05}, {"on_s": 30.0}])
def test_mmpp_for_is_exact_analytically(cv: float, shape: dict[str, float]) -> None:
    proc = mmpp_for(2.57, cv, **shape)
    assert proc.mean_rate == pytest.approx(2.57, rel=1e-12)
    assert proc.interarrival_cv() == pytest.approx(cv, rel=1e-9)
    if cv > 1 and "on_frac" in shape:
        assert proc.hi_s / (proc.hi_s + proc.lo_s) == pytest.approx(shape["on_frac"])
    if cv > 1 and "on_s" in shape:
        assert proc.hi_s == shape["on_s"]


def test_mmpp_scv_matches_the_on_off_closed_form() -> None:
    # Interrupted Poisson: c² = 1 + 2·λ·ω_off / (ω_off + ω_on)² (Fischer & Meier-Hellstern)
    lam, hi_s, lo_s = 30.0, 2.0, 5.0
    w1, w2 = 1 / hi_s, 1 / lo_s
    expected = 1 + 2 * lam * w1 / (w1 + w2) ** 2
    assert MMPP(lam, 0.0, hi_s, lo_s).interarrival_scv() == pytest.approx(expected)
    assert MMPP(7.0, 7.0, 1.0, 3.0).interarrival_scv() == pytest.approx(1.0)


def test_two_level_mmpp_simulation_matches_its_analytic_cv() -> None:
    proc = MMPP(rate_hi=50.0, rate_lo=2.0, hi_s=5.0, lo_s=20.0)
    t = mmpp(proc, 40_000.0, seed=3)
    assert (t.size - 1) / t[-1] == pytest.approx(proc.mean_rate, rel=0.03)
    assert gap_cv(t) == pytest.approx(proc.interarrival_cv(), rel=0.05)


def test_mmpp_rejects_what_it_cannot_make() -> None:
    with pytest.raises(SpecError, match="use gamma"):
        mmpp_for(5.0, 0.5)
    with pytest.raises(SpecError, match="not both"):
        mmpp_for(5.0, 2.0, on_frac=0.2, on_s=1.0)
    with pytest.raises(SpecError, match="on_frac"):
        mmpp_for(5.0, 2.0, on_frac=1.0)
    with pytest.raises(SpecError, match="rate_hi or rate_lo"):
        MMPP(0.0, 0.0, 1.0, 1.0)
    with pytest.raises(SpecError, match="switch state"):
        mmpp(MMPP(1.0, 0.0, 1e-6, 1e-6), 1e3)


# --- Workload strings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "kind", "params"),
    [
        ("poisson:rate=20", "poisson", {"rate": 20.0}),
        ("gamma:rate=20,cv=4", "gamma", {"rate": 20.0, "cv": 4.0}),
        ("mmpp:rate=20,cv=4", "mmpp", {"rate": 20.0, "cv": 4.0}),
        ("trace:azure-code,rate=5", "trace", {"name": "azure-code", "rate": 5.0}),
        (" erlang: k=4 , rate=3 ", "erlang", {"k": 4.0, "rate": 3.0}),
        ("mmpp:rate_hi=50,rate_lo=2,hi_s=5,lo_s=20", "mmpp", {"rate_hi": 50.0, "rate_lo": 2.0,
                                                            "hi_s": 5.0, "lo_s": 20.0}),
    ],
)  # fmt: skip
def test_parse_examples_and_round_trip(text: str, kind: str, params: dict[str, object]) -> None:
    w = Workload.parse(text)
    assert w.kind == kind
    assert dict(w.params) == params
    assert w.seed == 0
    assert Workload.parse(str(w)) == w


def test_seed_in_string_overrides_argument() -> None:
    assert Workload.parse("poisson:rate=2", seed=5).seed == 5
    assert Workload.parse("poisson:rate=2,seed=9", seed=5).seed == 9


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("foo:rate=1", "expected one of erlang, gamma, hyperexp, mmpp, poisson, trace"),
        ("gamma:rate=1", "gamma needs cv"),
        ("gamma:rate=1,cv=x", "cv='x' is not a number"),
        ("gamma:rate=1,cv=2,burst=3", "unknown parameter 'burst' for gamma; valid: rate, cv, seed"),
        ("gamma:rate=1,rate=2,cv=1", "given twice"),
        ("poisson:20", "expected key=value"),
        ("poisson:rate=-1", "rate"),
        ("poisson:rate=1,seed=1.5", "seed must be an integer"),
        ("erlang:rate=1,k=2.5", "k (2.5) must be an integer"),
        ("hyperexp:rate=1,cv=1", "must be > 1"),
        ("mmpp:rate=1,cv=0.5", "use gamma"),
        ("mmpp:rate=3", "mmpp takes"),
        ("mmpp:rate_hi=3,rate_lo=1,hi_s=1,lo_s=1,cv=2", "mmpp takes"),
        ("trace:azure-code,rate=1,compress=2", "not both"),
        ("trace:azure-code,start=10,end=5", "end (5.0) must be > start"),
        ("trace:rate=2", "trace needs name"),
    ],
)
def test_parse_errors_say_what_is_valid(text: str, message: str) -> None:
    with pytest.raises(SpecError) as info:
        Workload.parse(text)
    assert message in str(info.value)


def test_workload_generates_the_same_arrays_as_the_functions() -> None:
    w = Workload.parse("gamma:rate=20,cv=4,seed=3")
    assert np.array_equal(w.arrivals(100.0), gamma_renewal(20.0, 4.0, 100.0, 3))
    m = Workload.parse("mmpp:rate=20,cv=4,on_s=2")
    assert np.array_equal(m.arrivals(100.0), mmpp(mmpp_for(20.0, 4.0, on_s=2.0), 100.0, 0))
    assert np.array_equal(
        Workload.make("erlang", {"rate": 3, "k": 4}, seed=1).arrivals(50.0),
        erlang_renewal(3.0, 4, 50.0, 1),
    )
    with pytest.raises(SpecError, match="needs a duration"):
        w.arrivals()


def test_trace_workload_rescales_slices_and_covers() -> None:
    base = load_trace("azure-code")
    whole = Workload.parse("trace:azure-code,rate=5,method=squeeze").trace()  # the old way
    assert len(whole) == len(base)
    assert whole.mean_rate == pytest.approx(5.0, rel=1e-12)
    assert whole.prompt_tokens is not None
    own = Workload.parse("trace:azure-code,rate=5").trace()  # default: thinning, own time
    assert len(own) / base.duration_s == pytest.approx(5.0, rel=0.05)
    assert own.arrivals_s[-1] == pytest.approx(base.duration_s, rel=0.01)
    assert own.prompt_tokens is not None
    part = Workload.parse("trace:azure-code,start=600,end=1200,compress=2").trace()
    assert part.duration_s < 300.0
    assert len(part) == int(np.count_nonzero((base.arrivals_s >= 600) & (base.arrivals_s < 1200)))
    long = Workload.parse("trace:azure-conv,rate=20").arrivals(2000.0)
    assert long[-1] < 2000.0 and long.size == pytest.approx(40_000, rel=0.1)


@settings(max_examples=50, deadline=None)
@given(
    kind=st.sampled_from(["poisson", "gamma", "hyperexp", "mmpp"]),
    rate=st.floats(0.01, 1e4, allow_nan=False),
    cv=st.floats(1.01, 20.0),
    seed=st.integers(0, 2**31),
)
def test_canonical_string_round_trips(kind: str, rate: float, cv: float, seed: int) -> None:
    params = {"rate": rate} if kind == "poisson" else {"rate": rate, "cv": cv}
    w = Workload.make(kind, params, seed)
    assert Workload.parse(str(w)) == w
    assert math.isclose(float(w.get("rate") or 0.0), rate)

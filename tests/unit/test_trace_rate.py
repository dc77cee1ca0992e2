"""Traces at their own time scale: rate reached, burstiness kept or averaged, seeds."""

from __future__ import annotations

import numpy as np
import pytest

from quartfaas.errors import SpecError
from quartfaas.workload.trace_rate import (
    at_rate,
    count_cv,
    envelope_thinning,
    superpose_windows,
    token_work_factor,
)
from quartfaas.workload.traces import Trace, load_trace

RATE = 100.0


@pytest.fixture(scope="module")
def code() -> Trace:
    return load_trace("azure-code").slice(0.0, 1200.0)


def test_thinning_reaches_the_rate_and_keeps_the_trace_burstiness(code: Trace) -> None:
    span = code.duration_s
    r = envelope_thinning(code, RATE, duration_s=span, seed=3)
    assert len(r) / span == pytest.approx(RATE, rel=0.05)
    for w in (1.0, 10.0):
        orig, new = count_cv(code.arrivals_s, w, span), count_cv(r.arrivals_s, w, span)
        # CV_new^2 = CV_trace^2 + 1/(rate w) at and above the envelope scale (module doc)
        expected = np.sqrt(orig**2 + 1.0 / (RATE * w))
        assert new == pytest.approx(expected, rel=0.1), (w, orig, new)
    # time is not compressed: the realisation spans the trace's own seconds
    assert 0.9 * span < r.duration_s < span


def test_compression_is_what_loses_the_burstiness(code: Trace) -> None:
    squeezed = code.rescale_to_rate(RATE)
    thinned = envelope_thinning(code, RATE, seed=0)
    w = 1.0
    assert count_cv(squeezed.arrivals_s, w, squeezed.duration_s) < 0.6 * count_cv(
        thinned.arrivals_s, w, thinned.duration_s
    )


def test_superposition_averages_burstiness_by_sqrt_m(code: Trace) -> None:
    span = code.duration_s
    r = superpose_windows(code, RATE, duration_s=span, seed=5)
    assert len(r) / span == pytest.approx(RATE, rel=0.05)
    m = np.ceil(RATE / (len(code) / span))
    for w in (1.0, 10.0):
        orig, new = count_cv(code.arrivals_s, w, span), count_cv(r.arrivals_s, w, span)
        assert new < orig / np.sqrt(m) * 1.6 and new > orig / np.sqrt(m) * 0.5, (w, orig, new)


@pytest.mark.parametrize("method", ["thinning", "superpose"])
def test_seeds_give_independent_realisations_and_repeat_exactly(code: Trace, method: str) -> None:
    a = at_rate(code, 20.0, method=method, seed=1, duration_s=300.0)  # type: ignore[arg-type]
    b = at_rate(code, 20.0, method=method, seed=1, duration_s=300.0)  # type: ignore[arg-type]
    c = at_rate(code, 20.0, method=method, seed=2, duration_s=300.0)  # type: ignore[arg-type]
    assert np.array_equal(a.arrivals_s, b.arrivals_s)
    assert a.prompt_tokens is not None and b.prompt_tokens is not None
    assert np.array_equal(a.prompt_tokens, b.prompt_tokens)
    assert len(a) != len(c) or not np.allclose(a.arrivals_s, c.arrivals_s)
    assert np.all(np.diff(a.arrivals_s) >= 0) and a.arrivals_s[0] >= 0
    assert a.arrivals_s[-1] < 300.0


def test_tokens_come_from_the_trace(code: Trace) -> None:
    r = envelope_thinning(code, 50.0, seed=0)
    assert r.prompt_tokens is not None and r.output_tokens is not None
    assert code.prompt_tokens is not None
    assert set(np.unique(r.prompt_tokens)) <= set(np.unique(code.prompt_tokens))
    assert r.prompt_tokens.mean() == pytest.approx(code.prompt_tokens.mean(), rel=0.15)


def test_a_trace_without_tokens_gives_none() -> None:
    t = Trace("bare", np.linspace(0.0, 100.0, 201))
    r = envelope_thinning(t, 10.0, seed=0)
    assert r.prompt_tokens is None and len(r) > 500


def test_token_work_factor_has_mean_one() -> None:
    f = token_work_factor(np.array([10, 20, 30, 0]))
    assert f.mean() == pytest.approx(1.0)
    assert f[2] > f[1] > f[0]
    assert np.allclose(token_work_factor(np.array([5, 50]), exponent=0.0), 1.0)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"rate": 0.0}, "rate"),
        ({"rate": 5.0, "duration_s": -1.0}, "duration_s"),
        ({"rate": 5.0, "method": "squeeze"}, "unknown rate method"),
        ({"rate": 5.0, "envelope_s": 0.0}, "envelope_s"),
    ],
)
def test_bad_input_is_refused(code: Trace, kw: dict[str, object], match: str) -> None:
    with pytest.raises(SpecError, match=match):
        at_rate(code, **kw)  # type: ignore[arg-type]

"""Model feedback: filtered, bounded, time-stepped factors from measured vs modelled tails."""

from __future__ import annotations

import math

import pytest

from quartfaas.control.corrector.feedback import (
    FeedbackConfig,
    FeedbackSnapshot,
    FeedbackState,
    TailObservation,
    corrected,
    update,
)
from quartfaas.control.corrector.tailmodel import StageLoad

CFG = FeedbackConfig(time_constant_s=20.0, min_dt_s=1.0, max_dt_s=10.0, max_rel=0.5)


def snap(
    now: float, a: float | None, b: float | None, e2e: float | None = None
) -> FeedbackSnapshot:
    """Fixed measurements against a model that does not move (an open loop)."""
    return FeedbackSnapshot(
        now,
        (TailObservation("a", a, 1.0), TailObservation("b", b, 1.0)),
        e2e_measured_s=e2e,
        e2e_modelled_s=None if e2e is None else 2.0,
    )


def closed_loop(times: list[float], true_a: float, true_b: float) -> FeedbackState:
    """A fake plant: stage tails are ``true x 1 s``; the model's tail is ``factor x 1 s``."""
    st = FeedbackState()
    for t in times:
        obs = (
            TailObservation("a", true_a, st.factor("a")),
            TailObservation("b", true_b, st.factor("b")),
        )
        st, _ = update(st, FeedbackSnapshot(t, obs), CFG)
    return st


def run(seq: list[FeedbackSnapshot]) -> FeedbackState:
    st = FeedbackState()
    for s in seq:
        st, _ = update(st, s, CFG)
    return st


def test_slow_stage_grows_fast_stage_shrinks_filtered() -> None:
    st = closed_loop([float(t) for t in range(0, 200, 2)], 1.3, 0.8)
    assert st.factor("a") == pytest.approx(1.3, rel=0.01)
    assert st.factor("b") == pytest.approx(0.8, rel=0.01)
    one = closed_loop([0.0], 1.3, 0.8)
    assert 1.0 < one.factor("a") < 1.05  # one tick moves it only by the EWMA weight


def test_bounded_relative_to_the_stage() -> None:
    st = run([snap(t, 50.0, 0.01) for t in range(0, 400, 2)])
    assert st.factor("a") == pytest.approx(1.5)
    assert st.factor("b") == pytest.approx(1 / 1.5)


def test_ticks_closer_than_min_dt_are_ignored() -> None:
    st, _ = update(FeedbackState(), snap(10.0, 2.0, 2.0), CFG)
    again, reason = update(st, snap(10.001, 1000.0, 1000.0), CFG)
    assert again == st
    assert "held" in reason


def test_gap_is_capped_and_rate_independent() -> None:
    st, _ = update(FeedbackState(), snap(0.0, 1.0, 1.0), CFG)
    after_gap, _ = update(st, snap(1e6, 1.4, 1.0), CFG)
    w = 1 - math.exp(-CFG.max_dt_s / CFG.time_constant_s)
    assert after_gap.factor("a") == pytest.approx(math.exp(w * math.log(1.4)))
    fine = closed_loop([float(t) for t in range(0, 41)], 1.2, 1.0)
    coarse = closed_loop([float(t) for t in range(0, 41, 4)], 1.2, 1.0)
    assert 1.0 < coarse.factor("a") < 1.2
    assert fine.factor("a") == pytest.approx(coarse.factor("a"), rel=0.01)


def test_missing_stage_tail_uses_end_to_end_and_no_data_keeps() -> None:
    st = run([snap(t, None, None, e2e=3.0) for t in range(0, 300, 2)])
    assert st.factor("a") == pytest.approx(1.5) and st.factor("b") == pytest.approx(1.5)
    kept = run([snap(t, None, 0.0) for t in range(0, 100, 2)])
    assert kept.factor("a") == 1.0 and kept.factor("b") == 1.0


def test_corrected_scales_service_means() -> None:
    st = FeedbackState((("a", 1.25),), 0.0)
    a, b = corrected([StageLoad("a", 1.0, 0.1), StageLoad("b", 1.0, 0.2)], st)
    assert a.service_mean_s == pytest.approx(0.125) and b.service_mean_s == 0.2


def test_bad_config_is_an_error() -> None:
    with pytest.raises(ValueError, match="max_rel"):
        FeedbackConfig(max_rel=0)

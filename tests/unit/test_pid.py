"""The PID step (control/corrector/pid.py): sign, derivative on measurement, first tick, anti-windup."""

from __future__ import annotations

import pytest

from quartfaas.control.config import PIDGains
from quartfaas.control.corrector.pid import PIDState, bumpless_state, pid_step, pid_terms

GAINS = PIDGains(kp=2.0, ki=0.3, kd=0.1, integral_limit=4.0)


def test_too_slow_gives_a_positive_output_and_too_fast_a_negative_one() -> None:
    # The prototype's sign bug: e = target - observed, added to the replica count.
    up, _ = pid_step(PIDState(), 0.84, 0.30, 0.0, GAINS, -10, 10)
    down, _ = pid_step(PIDState(), 0.15, 0.30, 0.0, GAINS, -10, 10)
    assert up > 0 > down
    assert up == pytest.approx(2.0 * (0.84 / 0.30 - 1))


def test_first_tick_has_no_derivative_kick_and_no_integration() -> None:
    gains = PIDGains(kp=0.0, ki=5.0, kd=100.0, integral_limit=50.0)
    out, state = pid_step(PIDState(), 3.0, 0.5, 1_000.0, gains, -100, 100)
    assert out == 0.0
    assert state.last_measurement == 3.0 and state.last_time == 1_000.0
    # The second tick does have both, from the measured dt.
    terms, _ = pid_terms(state, 2.0, 0.5, 1_002.0, gains, -100, 100)
    assert terms.d == pytest.approx(100.0 * (2.0 - 3.0) / 0.5 / 2.0)
    assert terms.i == pytest.approx(5.0 * (2.0 / 0.5 - 1) * 2.0)


def test_derivative_is_on_the_measurement_not_the_error() -> None:
    gains = PIDGains(kp=0.0, ki=0.0, kd=1.0, integral_limit=1.0)
    _, state = pid_step(PIDState(), 0.4, 0.5, 0.0, gains, -10, 10)
    # The budget moves (the setpoint) while the measurement stands still: no kick.
    out, _ = pid_step(state, 0.4, 0.2, 1.0, gains, -10, 10)
    assert out == 0.0
    # The measurement rising gives a positive derivative term (towards more replicas).
    out, _ = pid_step(state, 0.6, 0.5, 1.0, gains, -10, 10)
    assert out == pytest.approx((0.6 - 0.4) / 0.5)


@pytest.mark.parametrize("dt", [0.0, -5.0])
def test_non_positive_dt_neither_integrates_nor_differentiates(dt: float) -> None:
    _, state = pid_step(PIDState(), 0.6, 0.3, 10.0, GAINS, -10, 10)
    _, state = pid_step(state, 0.6, 0.3, 11.0, GAINS, -10, 10)
    terms, nxt = pid_terms(state, 0.9, 0.3, 11.0 + dt, GAINS, -10, 10)
    assert terms.d == 0.0 and terms.i == state.integral
    assert terms.output == pytest.approx(terms.p + state.integral)
    assert nxt.last_time == 11.0  # never moves backwards


def test_output_is_clamped_and_integral_limited() -> None:
    state = PIDState()
    for k in range(200):
        out, state = pid_step(state, 3.0, 0.3, float(k), GAINS, -3, 100)
        assert -3 <= out <= 100
    assert state.integral == pytest.approx(GAINS.integral_limit)
    out, _ = pid_step(state, 30.0, 0.3, 200.0, GAINS, -3, 5)
    assert out == 5


def _naive(state: tuple[float, float], e: float, dt: float, lo: float, hi: float) -> tuple:
    """The prototype's PID integral: integrate always (clamped only at the limit)."""
    integral = min(max(state[0] + GAINS.ki * e * dt, -4.0), 4.0)
    return min(max(GAINS.kp * e + integral, lo), hi), (integral, 0.0)


def test_no_windup_leaves_saturation_as_soon_as_the_error_flips() -> None:
    lo, hi = -2.0, 2.0
    state, naive = PIDState(), (0.0, 0.0)
    for k in range(600):  # ten minutes saturated high: 0.6 s against a 0.3 s budget
        out, state = pid_step(state, 0.6, 0.3, float(k), GAINS, lo, hi)
        n_out, naive = _naive(naive, 1.0, 1.0, lo, hi)
        assert out == hi and n_out == hi
    # Latency falls to 0.24 s (error -0.2): out of saturation on the very next tick.
    out, state = pid_step(state, 0.24, 0.3, 600.0, GAINS, lo, hi)
    n_out, _ = _naive(naive, -0.2, 1.0, lo, hi)
    assert out < hi
    assert n_out == hi  # the wound-up integral would have kept it pinned


def test_bumpless_preset_reproduces_the_running_output() -> None:
    state = bumpless_state(0.25, 0.3, 50.0, GAINS, wanted_output=-3.0)
    out, _ = pid_step(state, 0.25, 0.3, 50.0, GAINS, -10, 10)
    assert out == pytest.approx(-3.0)
    # A restart while too slow never presets a negative integral that would hold back.
    slow = bumpless_state(0.6, 0.3, 50.0, GAINS, wanted_output=-3.0, allow_negative=False)
    assert slow.integral == 0.0


def test_invalid_arguments_raise() -> None:
    with pytest.raises(ValueError, match="setpoint"):
        pid_step(PIDState(), 1.0, 0.0, 0.0, GAINS, -1, 1)
    with pytest.raises(ValueError, match="out_min"):
        pid_step(PIDState(), 1.0, 1.0, 0.0, GAINS, 1, -1)


def test_max_dt_caps_the_time_integrated_after_a_gap() -> None:
    _, state = pid_step(PIDState(), 0.6, 0.3, 0.0, GAINS, -100, 100)
    capped, _ = pid_terms(state, 0.6, 0.3, 600.0, GAINS, -100, 100, max_dt=2.0)
    assert capped.i == pytest.approx(GAINS.ki * 1.0 * 2.0)
    full, _ = pid_terms(state, 0.6, 0.3, 600.0, GAINS, -100, 100)
    assert full.i == GAINS.integral_limit

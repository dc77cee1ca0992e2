"""PID invariants (control/corrector/pid.py): bounded output, no wind-up, no first-tick kick."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.control.config import PIDGains
from quartfaas.control.corrector.pid import PIDState, pid_step, pid_terms

gains_st = st.builds(
    PIDGains,
    kp=st.floats(min_value=0.0, max_value=20.0),
    ki=st.floats(min_value=0.0, max_value=20.0),
    kd=st.floats(min_value=0.0, max_value=20.0),
    integral_limit=st.floats(min_value=0.1, max_value=50.0),
)
latency = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)
setpoint = st.floats(min_value=0.001, max_value=10.0)
step = st.floats(min_value=-2.0, max_value=60.0)  # dt, including 0 and clock glitches


@settings(max_examples=200)
@given(
    gains_st,
    st.floats(min_value=-20.0, max_value=0.0),
    st.floats(min_value=0.0, max_value=20.0),
    st.lists(st.tuples(latency, setpoint, step), min_size=1, max_size=40),
)
def test_output_always_within_bounds_and_integral_within_limit(
    gains: PIDGains, lo: float, hi: float, seq: list[tuple[float, float, float]]
) -> None:
    state, now = PIDState(), 0.0
    for m, sp, dt in seq:
        now += dt
        out, state = pid_step(state, m, sp, now, gains, lo, hi)
        assert lo <= out <= hi
        assert abs(state.integral) <= gains.integral_limit + 1e-12


@settings(max_examples=200)
@given(gains_st, latency, setpoint, st.floats(min_value=-1e6, max_value=1e6))
def test_first_tick_is_proportional_only(gains: PIDGains, m: float, sp: float, now: float) -> None:
    terms, _ = pid_terms(PIDState(), m, sp, now, gains, -1e9, 1e9)
    assert terms.d == 0.0 and terms.i == 0.0
    assert terms.output == terms.p


@settings(max_examples=200)
@given(
    gains=st.builds(
        PIDGains,
        kp=st.floats(min_value=0.1, max_value=20.0),
        ki=st.floats(min_value=0.0, max_value=20.0),
        kd=st.floats(min_value=0.0, max_value=20.0),
        integral_limit=st.floats(min_value=0.1, max_value=50.0),
    ),
    hi=st.floats(min_value=0.1, max_value=10.0),
    high=st.floats(min_value=1.01, max_value=10.0),  # measurement/setpoint while saturated
    low=st.floats(min_value=0.0, max_value=0.99),  # ... after the error changes sign
    n=st.integers(min_value=1, max_value=500),
    dt=st.floats(min_value=0.1, max_value=30.0),
)
def test_leaves_saturation_on_the_first_tick_after_the_error_changes_sign(
    *, gains: PIDGains, hi: float, high: float, low: float, n: int, dt: float
) -> None:
    sp, state, now = 0.5, PIDState(), 0.0
    for _ in range(n):
        _, state = pid_step(state, high * sp, sp, now, gains, -hi, hi)
        now += dt
    out, _ = pid_step(state, low * sp, sp, now, gains, -hi, hi)
    assert out < hi


@settings(max_examples=200)
@given(
    gains=gains_st,
    lo=st.floats(min_value=-20.0, max_value=0.0),
    hi=st.floats(min_value=0.0, max_value=20.0),
    history=st.lists(st.tuples(latency, step), min_size=0, max_size=10),
    m1=latency,
    m2=latency,
    dt=st.floats(min_value=0.0, max_value=60.0),
    freeze=st.booleans(),
)
def test_output_is_monotone_in_the_measurement(
    *,
    gains: PIDGains,
    lo: float,
    hi: float,
    history: list[tuple[float, float]],
    m1: float,
    m2: float,
    dt: float,
    freeze: bool,
) -> None:
    # Same history, two measurements now: the slower one never asks for fewer replicas.
    state, now = PIDState(), 0.0
    for m, d in history:
        now += d
        _, state = pid_step(state, m, 0.5, now, gains, lo, hi)
    a, b = sorted((m1, m2))
    ta, _ = pid_terms(state, a, 0.5, now + dt, gains, lo, hi, freeze_integral=freeze)
    tb, _ = pid_terms(state, b, 0.5, now + dt, gains, lo, hi, freeze_integral=freeze)
    assert ta.output <= tb.output + 1e-9

"""Hysteresis: up at once, down after a delay in seconds, starting replicas count."""

from __future__ import annotations

import pytest

from quartfaas.control.corrector.hysteresis import HysteresisState, step


def test_up_at_once_and_starting_counts() -> None:
    s, st = step(2, 0, 5, 0.0, HysteresisState(), 30.0)
    assert s.target == 5 and st == HysteresisState()
    s, _ = step(2, 3, 5, 1.0, HysteresisState(), 30.0)
    assert s.target == 5 and s.reason == "plan met"
    s, _ = step(2, 1, 5, 1.0, HysteresisState(), 30.0)
    assert s.target == 5 and "1 starting" in s.reason


def test_down_only_after_delay_to_highest_plan_seen() -> None:
    st = HysteresisState()
    targets = []
    for now, plan in [(0.0, 3), (10.0, 2), (20.0, 3), (29.9, 2), (30.0, 2)]:
        s, st = step(5, 0, plan, now, st, 30.0)
        targets.append(s.target)
    assert targets == [5, 5, 5, 5, 3]
    assert st == HysteresisState()


def test_plan_back_up_restarts_the_delay() -> None:
    st = HysteresisState()
    for now, plan in [(0.0, 3), (20.0, 5), (25.0, 3), (50.0, 3)]:
        s, st = step(5, 0, plan, now, st, 30.0)
        assert s.target == 5
    s, st = step(5, 0, 3, 55.0, st, 30.0)
    assert s.target == 3


def test_constant_plan_never_flaps() -> None:
    st = HysteresisState()
    actions = 0
    have = 4
    for i in range(600):
        plan = 4 if i % 2 else 3  # a plan that dithers every tick
        s, st = step(have, 0, plan, float(i), st, 60.0)
        actions += s.target != have
        have = s.target
    assert actions <= 1


def test_bad_input() -> None:
    with pytest.raises(ValueError):
        step(-1, 0, 1, 0.0, HysteresisState(), 1.0)


def test_an_unclear_increase_waits_for_confirmation_then_takes_the_lowest_plan() -> None:
    st = HysteresisState()
    targets = []
    for now, plan in [(0.0, 5), (10.0, 4), (19.9, 6), (20.0, 6)]:
        s, st = step(3, 0, plan, now, st, 60.0, up_clear=False, upscale_confirm_s=20.0)
        targets.append(s.target)
    assert targets == [3, 3, 3, 4]  # after 20 s high, to the lowest plan of the period
    assert st == HysteresisState()


def test_a_clear_increase_or_no_confirm_time_goes_up_at_once() -> None:
    s, _ = step(3, 0, 5, 0.0, HysteresisState(), 60.0, up_clear=True, upscale_confirm_s=20.0)
    assert s.target == 5 and "at once" in s.reason
    s, _ = step(3, 0, 5, 0.0, HysteresisState(), 60.0, up_clear=False, upscale_confirm_s=0.0)
    assert s.target == 5
    # an unclear high period that turns clear goes up at once, without waiting
    _, st = step(3, 0, 4, 0.0, HysteresisState(), 60.0, up_clear=False, upscale_confirm_s=20.0)
    s, _ = step(3, 0, 6, 1.0, st, 60.0, up_clear=True, upscale_confirm_s=20.0)
    assert s.target == 6


def test_a_plan_back_at_the_count_ends_the_high_period() -> None:
    st = HysteresisState()
    for now, plan in [(0.0, 4), (15.0, 3), (16.0, 4), (30.0, 4)]:
        s, st = step(3, 0, plan, now, st, 60.0, up_clear=False, upscale_confirm_s=20.0)
        assert s.target == 3  # the high period restarted at 16 s
    s, _ = step(3, 0, 4, 36.0, st, 60.0, up_clear=False, upscale_confirm_s=20.0)
    assert s.target == 4


def test_noise_dithering_upwards_never_flaps() -> None:
    st = HysteresisState()
    actions, have = 0, 3
    for i in range(600):
        plan = 4 if i % 7 in (0, 1) else 3  # short noisy windows asking for one more
        s, st = step(have, 0, plan, float(i), st, 60.0, up_clear=False, upscale_confirm_s=20.0)
        actions += s.target != have
        have = s.target
    assert actions == 0

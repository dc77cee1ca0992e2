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

"""The template's refill gate and memory reading (dataplane/forkpool.py)."""

from __future__ import annotations

import os

from quartfaas.dataplane.forkpool import Saturation, private_bytes


def test_refill_at_once_below_the_threshold() -> None:
    gate = Saturation(2.0, 1.0, read_load=lambda: 1.5)
    assert gate.check(0.0) == (False, "")


def test_refill_waits_when_saturated_then_gives_up_waiting() -> None:
    gate = Saturation(2.0, 1.0, read_load=lambda: 3.0)
    wait, why = gate.check(0.2)
    assert wait and "saturated" in why and "3.00/core" in why
    wait, why = gate.check(1.0)
    assert not wait and "refilling" in why


def test_threshold_zero_is_never_saturated() -> None:
    assert Saturation(0.0, 1.0, read_load=lambda: 99.0).check(0.0) == (False, "")


def test_private_bytes_of_this_process() -> None:
    got = private_bytes(os.getpid())
    assert got is not None and got > 0
    assert private_bytes(2**22 + 7) is None  # no such process

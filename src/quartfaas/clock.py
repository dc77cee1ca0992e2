"""Clocks: the only place the live system reads time.

Control code never reads a clock; it receives ``now`` inside a snapshot. The loops that
own side effects (the controller loop, the gateway's windows, the simulator) take a
``Clock`` so tests can advance a ``FakeClock`` instead of sleeping, and the simulator can
drive the same loop with simulated time.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    """Monotonic seconds. ``now()`` never goes backwards."""

    def now(self) -> float: ...


class MonotonicClock:
    """Wall-independent monotonic time (``time.monotonic``)."""

    def now(self) -> float:
        return time.monotonic()


class FakeClock:
    """A clock that moves only when told to (tests)."""

    def __init__(self, start: float = 0.0) -> None:
        self._t = float(start)

    def now(self) -> float:
        return self._t

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError(f"cannot move a clock backwards (advance by {seconds})")
        self._t += seconds
        return self._t

    def set(self, t: float) -> None:
        if t < self._t:
            raise ValueError(f"cannot move a clock backwards (from {self._t} to {t})")
        self._t = t

"""CPU used by local replica processes, from ``/proc/PID/stat`` (all threads included).

The CPU Compensator needs to know whether a stage's replicas are CPU-bound: cores used
per replica against the CPU share they were given. ``ProcessCpuMeter`` keeps the last
reading per process and turns two readings into cores used over the interval between
them; a process seen for the first time, or gone, has no figure yet (``None``).
Linux only; elsewhere every figure is ``None``.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_seconds(pid: int, proc: str = "/proc") -> float | None:
    """User + system CPU seconds of ``pid`` so far (``None`` if it is gone)."""
    try:
        with open(f"{proc}/{pid}/stat") as f:
            raw = f.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces: split after its closing parenthesis.
    fields = raw[raw.rfind(")") + 2 :].split()
    try:
        return (int(fields[11]) + int(fields[12])) / _TICKS  # utime, stime
    except (IndexError, ValueError):
        return None


class ProcessCpuMeter:
    """Cores used per process between successive ``sample`` calls."""

    def __init__(self, proc: str = "/proc") -> None:
        self.proc = proc
        self._last: dict[int, tuple[float, float]] = {}

    def sample(self, pids: Iterable[int], now: float) -> list[float]:
        """Cores used by each of ``pids`` since its previous sample (new pids: skipped)."""
        out = []
        seen = set()
        for pid in pids:
            seen.add(pid)
            used = cpu_seconds(pid, self.proc)
            if used is None:
                continue
            prev = self._last.get(pid)
            self._last[pid] = (now, used)
            if prev is not None and now > prev[0]:
                out.append(max(0.0, (used - prev[1]) / (now - prev[0])))
        for pid in list(self._last):
            if pid not in seen:
                del self._last[pid]  # gone: forget it (pids are reused)
        return out

"""Host readings the stage template's pre-fork pool acts on (``dataplane/forkserver.py``).

Two measurements, both from ``/proc`` and cheap enough for the template's loop:

- ``private_bytes(pid)``: a warmed child's private memory (``Private_Clean +
  Private_Dirty`` of ``smaps_rollup``). Its shared pages are the template's weights,
  which the ``KeysManager`` counts once; what each extra child costs the host is this.
- ``Saturation``: whether the host is saturated, so a refill should wait. Defined as the
  1-minute load average per core at or above ``max_load_per_core`` (runnable and
  uninterruptible tasks per core: above about 1 every extra process waits for a CPU).
  A refill forks and warms children (a forward pass each); on a saturated host that
  warm-up competes with the replicas that serve requests, so it waits, at most
  ``max_wait_s`` after the handover (a pool that never refills would make the next
  burst slow). Neighbours: the template's loop calls ``check`` before each refill and
  logs (and tells the gateway) when and why it waits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass


def private_bytes(pid: int) -> int | None:
    """Private (unshared) memory of ``pid`` in bytes; None if it cannot be read."""
    total = 0
    seen = False
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith(("Private_Clean:", "Private_Dirty:")):
                    total += int(line.split()[1]) * 1024
                    seen = True
    except (OSError, ValueError, IndexError):
        return None
    return total if seen else None


def load_per_core() -> float:
    """1-minute load average divided by the CPUs this process may run on."""
    try:
        cores = len(os.sched_getaffinity(0))
    except OSError:
        cores = os.cpu_count() or 1
    return os.getloadavg()[0] / max(1, cores)


@dataclass
class Saturation:
    """The refill gate: refill at once unless the host is saturated (module docstring)."""

    max_load_per_core: float  # <= 0: never saturated
    max_wait_s: float
    read_load: Callable[[], float] = load_per_core

    def check(self, waited_s: float) -> tuple[bool, str]:
        """(wait?, why) for a refill that has been pending ``waited_s`` seconds."""
        if self.max_load_per_core <= 0:
            return False, ""
        load = self.read_load()
        if load < self.max_load_per_core:
            return False, ""
        if waited_s >= self.max_wait_s:
            return False, (
                f"host saturated (load {load:.2f}/core >= {self.max_load_per_core:.2f}) but "
                f"the refill waited {waited_s:.2f} s >= {self.max_wait_s:.2f} s: refilling"
            )
        return True, (
            f"refill waits: host saturated (1-min load {load:.2f}/core >= "
            f"{self.max_load_per_core:.2f}); at most {self.max_wait_s:.2f} s"
        )

"""How many CPU cores this process may use: the CPU Compensator's live cap.

``os.cpu_count`` counts the machine's cores, not what a container or a CPU-set allows. This
takes the least of: the CPUs this process may run on (``os.sched_getaffinity``), and the
cgroup's quota (v2 ``cpu.max``, or v1 ``cpu.cfs_quota_us / cpu.cfs_period_us``). The runtime
calls it once at start and passes it in ``ControllerConfig.host_cores``; ``control/`` never
reads the host itself.
"""

from __future__ import annotations

import os
from pathlib import Path


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def cgroup_quota_cores(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """The cgroup's CPU quota in cores (``None``: no quota or not readable)."""
    v2 = _read(root / "cpu.max")
    if v2 is not None:
        quota, _, period = v2.partition(" ")
        if quota != "max" and period:
            try:
                q, p = float(quota), float(period)
            except ValueError:
                return None
            return q / p if q > 0 and p > 0 else None
        return None
    q1 = _read(root / "cpu" / "cpu.cfs_quota_us") or _read(root / "cpu.cfs_quota_us")
    p1 = _read(root / "cpu" / "cpu.cfs_period_us") or _read(root / "cpu.cfs_period_us")
    if q1 is None or p1 is None:
        return None
    try:
        q, p = float(q1), float(p1)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def host_cores(root: Path = Path("/sys/fs/cgroup")) -> float:
    """Cores this process may use: affinity, capped by the cgroup quota (at least 1)."""
    try:
        cores = float(len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = float(os.cpu_count() or 1)
    quota = cgroup_quota_cores(root)
    if quota is not None:
        cores = min(cores, quota)
    return max(cores, 1.0)


__all__ = ["cgroup_quota_cores", "host_cores"]

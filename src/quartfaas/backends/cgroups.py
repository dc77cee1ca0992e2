"""cgroup CPU groups for local replicas: one group per replica, a quota, counters.

The adapters under ``backends/cpu.py``'s lever detection and ``CpuActuator``: each replica
gets its own group ``<parent>/<replica_id>`` under a ``quartfaas`` parent group; its
process moves in through ``cgroup.procs``; the quota uses a 100 ms period (20 ms periods
measured worse on this kind of host) as v1 ``cpu.cfs_period_us``/``cpu.cfs_quota_us`` or
v2 ``cpu.max``; ``cpu.stat`` gives throttling counters. Removing a group first moves any
pid left back to the group it came from (else to the hierarchy root).

Every operation returns a value saying what it did or why it could not, never an
exception: a host without writable cgroups still runs. The mount point and ``/proc`` are
parameters so tests can use a fake tree.
"""

from __future__ import annotations

import errno
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from quartfaas.control.backend import CpuLever

DEFAULT_PERIOD_US = 100_000
MIN_QUOTA_US = 1_000  # the kernel refuses CFS quotas under 1 ms


@dataclass(frozen=True, slots=True)
class LeverResult:
    ok: bool
    lever: CpuLever
    message: str


@dataclass(frozen=True, slots=True)
class CpuStat:
    """Counters of one group; ``None`` where the kernel (or a fake tree) has no value."""

    nr_periods: int | None = None
    nr_throttled: int | None = None
    throttled_s: float | None = None
    usage_s: float | None = None
    usage_source: str = ""
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


def _write(path: Path, value: str) -> None:
    # One write per value: cgroupfs takes one pid (or one setting) per write(2).
    with open(path, "w") as f:
        f.write(value)


def err_text(exc: OSError) -> str:
    return f"[{errno.errorcode.get(exc.errno or 0, exc.errno)}] {exc.strerror or exc}"


def _pids_in(group: Path) -> list[int]:
    try:
        text = (group / "cgroup.procs").read_text()
    except OSError:
        return []
    return [int(tok) for tok in text.split() if tok.isdigit()]


def _safe_name(replica_id: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", replica_id)
    return name if name.strip(".") else f"_{name}"


class CgroupCpu:
    """Per-replica CPU groups in one cgroup hierarchy (see ``CgroupV1Cpu``/``CgroupV2Cpu``)."""

    lever: CpuLever = CpuLever.NONE

    def __init__(
        self,
        mount: Path,
        parent: str = "quartfaas",
        *,
        base: Path | None = None,
        period_us: int = DEFAULT_PERIOD_US,
        proc_root: Path = Path("/proc"),
    ) -> None:
        if not 1_000 <= period_us <= 1_000_000:
            raise ValueError(f"period_us ({period_us}) must be in [1000, 1000000]")
        self.mount = Path(mount)
        self.base = Path(base) if base is not None else self.mount
        self.parent_dir = self.base / parent
        self.period_us = period_us
        self.proc_root = Path(proc_root)
        self._origin: dict[int, Path] = {}

    def _result(self, ok: bool, message: str) -> LeverResult:
        return LeverResult(ok, self.lever, message)

    def group_dir(self, replica_id: str) -> Path:
        return self.parent_dir / _safe_name(replica_id)

    def _prepare_parent(self) -> None:
        self.parent_dir.mkdir(exist_ok=True)

    def ensure_parent(self) -> LeverResult:
        try:
            self._prepare_parent()
        except OSError as exc:
            return self._result(False, f"cannot create {self.parent_dir}: {err_text(exc)}")
        return self._result(True, f"parent group {self.parent_dir}")

    def create_group(self, replica_id: str) -> LeverResult:
        parent = self.ensure_parent()
        if not parent.ok:
            return parent
        group = self.group_dir(replica_id)
        try:
            group.mkdir(exist_ok=True)
        except OSError as exc:
            return self._result(False, f"cannot create {group}: {err_text(exc)}")
        return self._result(True, f"group {group}")

    def _current_cgroup(self, pid: int) -> Path | None:
        """The pid's group in this hierarchy, from ``/proc/<pid>/cgroup``."""
        try:
            lines = (self.proc_root / str(pid) / "cgroup").read_text().splitlines()
        except OSError:
            return None
        for line in lines:
            _, controllers, path = [*line.split(":", 2), "", ""][:3]
            if self._is_this_hierarchy(controllers):
                return self.mount / path.lstrip("/")
        return None

    def _is_this_hierarchy(self, controllers: str) -> bool:
        return "cpu" in controllers.split(",")

    def attach(self, replica_id: str, pid: int) -> LeverResult:
        """Move ``pid`` (all its threads) into the replica's group, creating it if needed."""
        created = self.create_group(replica_id)
        if not created.ok:
            return created
        origin = self._current_cgroup(pid)
        if origin is not None and self.parent_dir not in (origin, *origin.parents):
            self._origin[pid] = origin
        procs = self.group_dir(replica_id) / "cgroup.procs"
        try:
            _write(procs, str(pid))
        except OSError as exc:
            return self._result(False, f"cannot move pid {pid} into {procs}: {err_text(exc)}")
        return self._result(True, f"pid {pid} in {procs.parent}")

    def pids(self, replica_id: str) -> list[int]:
        return _pids_in(self.group_dir(replica_id))

    def quota_us(self, cores: float | None) -> int | None:
        """``cores`` as a quota per period; ``None`` (unlimited) stays ``None``."""
        if cores is None:
            return None
        if not (math.isfinite(cores) and cores > 0):
            raise ValueError(f"cores ({cores}) must be a finite value > 0 (None for unlimited)")
        return max(MIN_QUOTA_US, round(cores * self.period_us))

    def _write_quota(self, group: Path, quota: int | None) -> None:
        raise NotImplementedError

    def set_quota(self, replica_id: str, cores: float | None) -> LeverResult:
        """Limit the replica's group to ``cores`` (``None``: unlimited)."""
        try:
            quota = self.quota_us(cores)
        except ValueError as exc:
            return self._result(False, str(exc))
        group = self.group_dir(replica_id)
        if not group.is_dir():
            return self._result(False, f"no group {group}; attach the replica first")
        try:
            self._write_quota(group, quota)
        except OSError as exc:
            return self._result(False, f"cannot set the quota of {group}: {err_text(exc)}")
        shown = "unlimited" if quota is None else f"{quota}/{self.period_us} us"
        return self._result(True, f"{group.name}: {shown}")

    def _usage_s(self, group: Path, fields: Mapping[str, int]) -> tuple[float | None, str]:
        # v1's cpu.stat has no usage; cpuacct.usage is there only when cpu and cpuacct are
        # co-mounted. Otherwise sum the group's processes' user+system time from /proc.
        try:
            return int((group / "cpuacct.usage").read_text()) / 1e9, "cpuacct.usage"
        except (OSError, ValueError):
            pass
        ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        total, seen = 0.0, False
        for pid in _pids_in(group):
            try:
                stat = (self.proc_root / str(pid) / "stat").read_text()
            except OSError:
                continue
            rest = stat.rsplit(")", 1)[-1].split()
            total += (int(rest[11]) + int(rest[12])) / ticks  # utime, stime (fields 14, 15)
            seen = True
        return (total, "/proc/<pid>/stat") if seen else (None, "")

    def read_stat(self, replica_id: str) -> CpuStat:
        group = self.group_dir(replica_id)
        try:
            text = (group / "cpu.stat").read_text()
        except OSError as exc:
            return CpuStat(error=f"cannot read {group / 'cpu.stat'}: {err_text(exc)}")
        fields: dict[str, int] = {}
        for line in text.splitlines():
            key, _, value = line.partition(" ")
            if value.strip().lstrip("-").isdigit():
                fields[key] = int(value)
        throttled = fields.get("throttled_time")  # v1: ns
        throttled_s = None if throttled is None else throttled / 1e9
        if "throttled_usec" in fields:  # v2
            throttled_s = fields["throttled_usec"] / 1e6
        usage, source = self._usage_s(group, fields)
        return CpuStat(
            nr_periods=fields.get("nr_periods"),
            nr_throttled=fields.get("nr_throttled"),
            throttled_s=throttled_s,
            usage_s=usage,
            usage_source=source,
        )

    def _move_out(self, pid: int) -> str | None:
        """Move ``pid`` back where it came from (else to the hierarchy root)."""
        targets = [t for t in (self._origin.pop(pid, None), self.mount) if t is not None]
        last = ""
        for target in targets:
            try:
                _write(target / "cgroup.procs", str(pid))
                return None
            except OSError as exc:
                if exc.errno == errno.ESRCH:
                    return None  # it exited meanwhile
                last = f"cannot move pid {pid} to {target}: {err_text(exc)}"
        return last

    def remove_group(self, replica_id: str) -> LeverResult:
        """Move any remaining pids out, then remove the group. Idempotent."""
        group = self.group_dir(replica_id)
        if not group.exists():
            return self._result(True, f"{group} already gone")
        problems: list[str] = []
        for _ in range(3):  # a pid may fork while we move its siblings
            for pid in self.pids(replica_id):
                why = self._move_out(pid)
                if why:
                    problems.append(why)
            try:
                group.rmdir()
                return self._result(True, f"removed {group}")
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    problems.append(f"cannot remove {group}: {err_text(exc)}")
                    break
                problems.append(f"{group} busy")
        return self._result(False, "; ".join(problems))

    def remove_parent(self) -> LeverResult:
        """Remove the empty parent group (at backend shutdown)."""
        try:
            self.parent_dir.rmdir()
        except FileNotFoundError:
            return self._result(True, f"{self.parent_dir} already gone")
        except OSError as exc:
            return self._result(False, f"cannot remove {self.parent_dir}: {err_text(exc)}")
        return self._result(True, f"removed {self.parent_dir}")


class CgroupV1Cpu(CgroupCpu):
    """cgroup v1 ``cpu`` controller (``/sys/fs/cgroup/cpu`` or ``cpu,cpuacct``)."""

    lever = CpuLever.CGROUP_V1

    def _write_quota(self, group: Path, quota: int | None) -> None:
        # Period first: the kernel checks quota against the period already in place.
        _write(group / "cpu.cfs_period_us", str(self.period_us))
        _write(group / "cpu.cfs_quota_us", "-1" if quota is None else str(quota))


class CgroupV2Cpu(CgroupCpu):
    """cgroup v2 ``cpu.max`` in a subtree whose ``cgroup.controllers`` lists ``cpu``."""

    lever = CpuLever.CGROUP_V2

    def _is_this_hierarchy(self, controllers: str) -> bool:
        return controllers == ""  # the v2 line is "0::/path"

    def _prepare_parent(self) -> None:
        # The parent and its base must pass the cpu controller down to their children.
        # (The v2 "no internal processes" rule: the parent itself never holds a pid.)
        for d in (self.base, self.parent_dir):
            d.mkdir(exist_ok=True)
            sub = d / "cgroup.subtree_control"
            enabled = sub.read_text().split() if sub.exists() else []
            if "cpu" not in enabled:
                _write(sub, "+cpu")

    def _write_quota(self, group: Path, quota: int | None) -> None:
        _write(group / "cpu.max", f"{'max' if quota is None else quota} {self.period_us}")

    def _usage_s(self, group: Path, fields: Mapping[str, int]) -> tuple[float | None, str]:
        if "usage_usec" in fields:
            return fields["usage_usec"] / 1e6, "cpu.stat usage_usec"
        return None, ""


def v2_mount(root: Path) -> Path | None:
    for candidate in (root, root / "unified"):
        if (candidate / "cgroup.controllers").is_file():
            return candidate
    return None


def v1_mount(root: Path) -> Path | None:
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        if (root / name / "cpu.cfs_quota_us").is_file():
            return root / name
    return None

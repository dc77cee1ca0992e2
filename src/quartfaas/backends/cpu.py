"""In-place CPU levers for local replicas: detection, thread counts, and the actuator.

The CPU Compensator (``control/compensator/compensator.py``) decides a CPU allocation per replica;
the local backend (``backends/local.py``) applies it through ``Backend.set_cpu`` with a
``CpuActuator``, without restarting the replica (the prototype patched the Deployment,
which restarted every pod). The levers, best first:

* **cgroup v2** ``cpu.max`` in a delegated subtree whose ``cgroup.controllers`` has ``cpu``;
* **cgroup v1** ``cpu.cfs_period_us``/``cpu.cfs_quota_us`` under the ``cpu`` controller;
* **threads**: the worker's torch thread count through ``POST /control/threads``.

``detect_cpu_lever`` finds the best one at start and says why the others are unavailable;
the cgroup adapters live in ``backends/cgroups.py`` (re-exported here). With a cgroup lever
the worker's threads are set too, to ``floor(quota)``: on this kind of host two threads
under a 1-CPU quota only add throttling. Kubernetes will use the in-place pod resize.

Nothing here raises for a missing or read-only cgroup tree: detection reports it and the
actuator falls back to threads. Paths (cgroup root, ``/proc``) and the environment are
parameters so tests can use a fake tree.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from quartfaas.backends.cgroups import (
    DEFAULT_PERIOD_US,
    CgroupCpu,
    CgroupV1Cpu,
    CgroupV2Cpu,
    CpuStat,
    LeverResult,
    err_text,
    v1_mount,
    v2_mount,
)
from quartfaas.control.backend import CpuLever, ReplicaInfo
from quartfaas.errors import BackendError

__all__ = [
    "DEFAULT_PERIOD_US",
    "Actuation",
    "CgroupCpu",
    "CgroupV1Cpu",
    "CgroupV2Cpu",
    "CpuActuator",
    "CpuStat",
    "LeverReport",
    "LeverResult",
    "cgroup_for",
    "detect_cpu_lever",
    "set_worker_threads",
    "threads_for_quota",
]

LEVER_ENV = "QUARTFAAS_CPU_LEVER"  # auto | cgroup-v2 | cgroup-v1 | threads | none
V2_BASE_ENV = "QUARTFAAS_CGROUP_V2_BASE"  # a delegated v2 subtree, relative to the mount


@dataclass(frozen=True, slots=True)
class LeverReport:
    """The lever found at start, where, and why each other lever is unavailable."""

    lever: CpuLever
    path: Path | None = None  # the parent group new replica groups go under
    mount: Path | None = None  # the hierarchy's mount point
    unavailable: tuple[tuple[CpuLever, str], ...] = ()

    def describe(self) -> str:
        where = f" at {self.path}" if self.path else ""
        others = "; ".join(f"{lever.value}: {why}" for lever, why in self.unavailable)
        return f"cpu lever {self.lever.value}{where}" + (f" (not: {others})" if others else "")


def _probe(cg: CgroupCpu, probe: bool) -> str | None:
    """``None`` if groups can be made under ``cg.parent_dir``, else why not."""
    if probe:
        made = cg.ensure_parent()
        if not made.ok:
            return made.message
        target = cg.parent_dir
    else:
        target = cg.parent_dir if cg.parent_dir.is_dir() else cg.base
    if not os.access(target, os.W_OK):
        return f"{target} is not writable by uid {os.geteuid()}"
    return None


def _v2_candidate(
    root: Path, env: Mapping[str, str], parent: str, proc_root: Path
) -> CgroupCpu | str:
    mount = v2_mount(root)
    if mount is None:
        return f"no cgroup v2 hierarchy at {root} or {root}/unified"
    base = mount / env.get(V2_BASE_ENV, "").strip("/")
    try:
        controllers = (base / "cgroup.controllers").read_text().split()
    except OSError as exc:
        return f"cannot read {base / 'cgroup.controllers'}: {err_text(exc)}"
    if "cpu" not in controllers:
        listed = " ".join(controllers) or "none"
        return f"cgroup v2 at {base} has no cpu controller (cgroup.controllers: {listed})"
    return CgroupV2Cpu(mount, parent, base=base, proc_root=proc_root)


def _v1_candidate(root: Path, parent: str, proc_root: Path) -> CgroupCpu | str:
    mount = v1_mount(root)
    if mount is None:
        return f"no cgroup v1 cpu controller under {root} (looked for cpu, cpu,cpuacct)"
    return CgroupV1Cpu(mount, parent, proc_root=proc_root)


def detect_cpu_lever(
    cgroup_root: Path = Path("/sys/fs/cgroup"),
    environ: Mapping[str, str] | None = None,
    *,
    parent: str = "quartfaas",
    probe: bool = True,
    proc_root: Path = Path("/proc"),
) -> LeverReport:
    """The best CPU lever on this host, where it is, and why each other one is not used.

    Order: cgroup v2 (``cpu`` in ``cgroup.controllers`` and a writable subtree) > cgroup
    v1 (a mounted, writable ``cpu`` controller) > threads. With ``probe`` it creates the
    (empty) parent group: on cgroupfs that is the only reliable test of writability.
    ``environ`` (default ``os.environ``) may force ``QUARTFAAS_CPU_LEVER`` and point
    ``QUARTFAAS_CGROUP_V2_BASE`` at a delegated subtree. ``cgroup_for`` builds the adapter.
    """
    env = os.environ if environ is None else environ
    want = env.get(LEVER_ENV, "auto").strip().lower() or "auto"
    levers = (CpuLever.CGROUP_V2, CpuLever.CGROUP_V1, CpuLever.THREADS)
    choices = ("auto", "none", *(lever.value for lever in levers))
    root = Path(cgroup_root)
    unavailable: list[tuple[CpuLever, str]] = []
    if "KUBERNETES_SERVICE_HOST" in env:
        k8s = "in a pod: in-place pod resize belongs to the Kubernetes backend"
    else:
        k8s = "not on Kubernetes (KUBERNETES_SERVICE_HOST unset)"
    unavailable.append((CpuLever.K8S_RESIZE, k8s))
    if want not in choices:
        unavailable.append((CpuLever.NONE, f"{LEVER_ENV}={want!r} unknown; one of {choices}"))
        want = "auto"
    if want == "none":
        unavailable.append((CpuLever.THREADS, f"disabled by {LEVER_ENV}=none"))
        return LeverReport(CpuLever.NONE, unavailable=tuple(unavailable))
    for lever in (CpuLever.CGROUP_V2, CpuLever.CGROUP_V1):
        if want not in ("auto", lever.value):
            unavailable.append((lever, f"not chosen ({LEVER_ENV}={want})"))
            continue
        if lever is CpuLever.CGROUP_V2:
            found = _v2_candidate(root, env, parent, proc_root)
        else:
            found = _v1_candidate(root, parent, proc_root)
        why = found if isinstance(found, str) else _probe(found, probe)
        if why is not None:
            unavailable.append((lever, why))
            continue
        assert isinstance(found, CgroupCpu)
        return LeverReport(lever, found.parent_dir, found.mount, tuple(unavailable))
    return LeverReport(CpuLever.THREADS, unavailable=tuple(unavailable))


def cgroup_for(report: LeverReport, proc_root: Path = Path("/proc")) -> CgroupCpu | None:
    """The cgroup adapter for a report's lever (``None`` for threads or none)."""
    if report.path is None or report.mount is None:
        return None
    if report.lever is CpuLever.CGROUP_V1:
        return CgroupV1Cpu(report.mount, report.path.name, proc_root=proc_root)
    if report.lever is CpuLever.CGROUP_V2:
        return CgroupV2Cpu(
            report.mount, report.path.name, base=report.path.parent, proc_root=proc_root
        )
    return None


def threads_for_quota(cores: float) -> int:
    """Worker threads for a quota of ``cores``: ``max(1, floor(cores))``.

    More threads than whole cores of quota only add throttling (host-facts, CPU levers).
    """
    return max(1, math.floor(cores + 1e-9))


def set_worker_threads(
    address: str, threads: int, timeout_s: float = 2.0, *, client: httpx.Client | None = None
) -> int:
    """``POST {address}/control/threads {"threads": n}``; returns the count the worker runs.

    Raises ``BackendError`` when the worker cannot be reached or answers badly.
    """
    if threads < 1:
        raise ValueError(f"threads ({threads}) must be >= 1")
    url = f"{address.rstrip('/')}/control/threads"
    try:
        if client is None:
            resp = httpx.post(url, json={"threads": threads}, timeout=timeout_s)
        else:
            resp = client.post(url, json={"threads": threads}, timeout=timeout_s)
        resp.raise_for_status()
        return int(resp.json()["threads"])
    except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
        raise BackendError(
            f"setting {threads} threads on the worker at {url} failed: {exc!r}; "
            "is the worker up and does it expose /control/threads?"
        ) from exc


@dataclass(frozen=True, slots=True)
class Actuation:
    """What ``CpuActuator.apply`` did: the lever that bounds the replica now, and notes."""

    lever: CpuLever
    cores: float
    threads: int | None
    notes: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return self.lever is not CpuLever.NONE


class CpuActuator:
    """Applies a CPU allocation to one replica with the best lever detected at start.

    With a cgroup lever: the quota, then (if the replica has an address) the matching
    thread count. Without: the thread count alone. Raising applies the quota first and
    lowering the threads first, so the replica never runs more threads than its quota.
    """

    def __init__(
        self,
        report: LeverReport,
        cgroup: CgroupCpu | None = None,
        *,
        set_threads: Callable[[str, int, float], int] = set_worker_threads,
        timeout_s: float = 2.0,
    ) -> None:
        self.report = report
        self.cgroup = cgroup
        self._set_threads = set_threads
        self.timeout_s = timeout_s

    @classmethod
    def detect(
        cls,
        cgroup_root: Path = Path("/sys/fs/cgroup"),
        environ: Mapping[str, str] | None = None,
        *,
        parent: str = "quartfaas",
        proc_root: Path = Path("/proc"),
        set_threads: Callable[[str, int, float], int] = set_worker_threads,
    ) -> CpuActuator:
        report = detect_cpu_lever(cgroup_root, environ, parent=parent, proc_root=proc_root)
        return cls(report, cgroup_for(report, proc_root), set_threads=set_threads)

    def attach(self, replica_id: str, pid: int) -> LeverResult:
        """Put a new replica's process in its own group (no limit yet)."""
        if self.cgroup is None:
            return LeverResult(False, self.report.lever, "no cgroup lever on this host")
        return self.cgroup.attach(replica_id, pid)

    def release(self, replica_id: str) -> LeverResult:
        """The replica stopped: remove its group (moving any pid left back out)."""
        if self.cgroup is None:
            return LeverResult(True, self.report.lever, "no cgroup lever: nothing to remove")
        return self.cgroup.remove_group(replica_id)

    def stat(self, replica_id: str) -> CpuStat:
        if self.cgroup is None:
            return CpuStat(error="no cgroup lever on this host")
        return self.cgroup.read_stat(replica_id)

    def _threads(self, address: str | None, n: int, notes: list[str]) -> int | None:
        if address is None:
            notes.append("threads: the replica has no address")
            return None
        try:
            got = self._set_threads(address, n, self.timeout_s)
        except BackendError as exc:
            notes.append(f"threads: {exc}")
            return None
        notes.append(f"threads {got}")
        return got

    def _quota(self, replica_id: str, pid: int | None, cores: float, notes: list[str]) -> bool:
        assert self.cgroup is not None
        if pid is not None and pid not in self.cgroup.pids(replica_id):
            attached = self.cgroup.attach(replica_id, pid)
            if not attached.ok:
                notes.append(attached.message)
                return False
        done = self.cgroup.set_quota(replica_id, cores)
        notes.append(done.message)
        return done.ok

    def apply(
        self,
        replica_id: str,
        cores: float,
        *,
        pid: int | None = None,
        address: str | None = None,
        previous_cores: float | None = None,
    ) -> Actuation:
        """Give the replica ``cores`` in place; never raises for an unavailable lever."""
        notes: list[str] = []
        n = threads_for_quota(cores)
        if self.report.lever is CpuLever.NONE:
            return Actuation(CpuLever.NONE, cores, None, ("cpu levers disabled",))
        if self.cgroup is None:
            got = self._threads(address, n, notes)
            lever = CpuLever.THREADS if got is not None else CpuLever.NONE
            return Actuation(lever, cores, got, tuple(notes))
        lowering = previous_cores is not None and cores < previous_cores
        got = self._threads(address, n, notes) if lowering else None
        quota_ok = self._quota(replica_id, pid, cores, notes)
        if not lowering:
            got = self._threads(address, n, notes)
        if quota_ok:
            lever = self.cgroup.lever
        else:
            lever = CpuLever.THREADS if got is not None else CpuLever.NONE
        return Actuation(lever, cores, got, tuple(notes))

    def set_cpu(self, replica: ReplicaInfo, cores: float) -> CpuLever:
        """``Backend.set_cpu`` for a local replica; ``BackendError`` if no lever worked."""
        done = self.apply(
            replica.replica_id,
            cores,
            pid=replica.pid,
            address=replica.address,
            previous_cores=replica.cpu,
        )
        if not done.ok:
            raise BackendError(
                f"could not give replica {replica.replica_id} {cores:g} cores: "
                + "; ".join(done.notes)
            )
        return done.lever

"""A real cgroup CPU quota on this host: two spinning children held to a quarter core (~2 s).

Runs where a cgroup cpu controller is writable (root on the dev machines: cgroup v1
``/sys/fs/cgroup/cpu``); skipped elsewhere with the detector's reason. Uses its own parent
group (``quartfaas-test-<pid>``) and removes it, so it never touches a live backend's.

Two spinners (2 cores of demand) and a 0.25-core quota: the dev machines have 2 shared
vCPUs, and a single spinner often gets under half a core there anyway, which a 0.5-core
quota would then never throttle.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from quartfaas.backends.cpu import CgroupCpu, cgroup_for, detect_cpu_lever
from quartfaas.control.backend import CpuLever

pytestmark = pytest.mark.cgroup

QUOTA_CORES = 0.25
WINDOW_S = 1.0


@pytest.fixture
def cgroup() -> Iterator[CgroupCpu]:
    report = detect_cpu_lever(environ={}, parent=f"quartfaas-test-{os.getpid()}")
    if report.lever not in (CpuLever.CGROUP_V1, CpuLever.CGROUP_V2):
        pytest.skip(f"no writable cgroup cpu controller: {report.describe()}")
    cg = cgroup_for(report)
    assert cg is not None
    try:
        yield cg
    finally:
        if cg.parent_dir.is_dir():
            for group in cg.parent_dir.iterdir():
                if group.is_dir():
                    cg.remove_group(group.name)
        cg.remove_parent()


@pytest.fixture
def spinners() -> Iterator[list[subprocess.Popen[bytes]]]:
    children = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(2)]
    try:
        yield children
    finally:
        for child in children:
            child.kill()
            child.wait(timeout=5)


def _cpu_line(pid: int, cg: CgroupCpu) -> str:
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if (cg.lever is CpuLever.CGROUP_V2 and controllers == "") or "cpu" in controllers.split(
            ","
        ):
            return path
    return ""


def test_quota_throttles_a_busy_process_and_the_group_is_removed(
    cgroup: CgroupCpu, spinners: list[subprocess.Popen[bytes]]
) -> None:
    pids = sorted(c.pid for c in spinners)
    origin = [_cpu_line(pid, cgroup) for pid in pids]
    rid = "r-throttle"
    for pid in pids:
        attached = cgroup.attach(rid, pid)
        assert attached.ok, attached.message
    assert sorted(cgroup.pids(rid)) == pids
    quota = cgroup.set_quota(rid, QUOTA_CORES)
    assert quota.ok, quota.message

    before, t0 = cgroup.read_stat(rid), time.monotonic()
    time.sleep(WINDOW_S)  # a measurement interval, not a wait for readiness
    after, t1 = cgroup.read_stat(rid), time.monotonic()
    assert before.ok and after.ok, (before.error, after.error)
    assert before.usage_s is not None and after.usage_s is not None
    cores = (after.usage_s - before.usage_s) / (t1 - t0)
    throttled = (after.nr_throttled or 0) - (before.nr_throttled or 0)
    print(
        f"\n{cgroup.lever.value}: quota {QUOTA_CORES} cores -> used {cores:.3f} cores over "
        f"{t1 - t0:.2f}s, throttled in {throttled} periods ({after.usage_source})"
    )
    # Two spinning loops would take both cores; the quota holds them to a quarter of one
    # (the /proc usage clock ticks every 10 ms per process, hence the margin).
    assert cores <= QUOTA_CORES + 0.1
    assert throttled >= 3

    removed = cgroup.remove_group(rid)
    assert removed.ok, removed.message
    assert not cgroup.group_dir(rid).exists()
    assert all(c.poll() is None for c in spinners)  # removal never kills a replica
    assert [_cpu_line(pid, cgroup) for pid in pids] == origin

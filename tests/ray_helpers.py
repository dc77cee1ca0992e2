"""A local multi-node Ray cluster for the Ray tests: ``from ray_helpers import local_cluster``.

The machine is shared and may be busy (issue #13: the suite must pass with two busy loops
on both cores), so the Ray tests' deadlines are not fixed: ``local_cluster`` times its own
start and ``LocalCluster.deadline(quiet_s)`` scales a deadline that holds on a quiet host
by how much slower than quiet this start was.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
MIB = 1024**2
# Seconds a head + one worker node (dashboard off) took to come up on a quiet 2-vCPU host
# of this kind with Ray 2.60 (measured 2026-12-02 by the team, in a throwaway script).
QUIET_START_S = 3.5
# The most a deadline is stretched: under two busy loops on 2 cores the factor was 3-4; a
# test that needs more than 8x its quiet time fails in minutes instead of running on.
MOST_SLOW = 8.0


async def wait_for(pred: Callable[[], bool], deadline_s: float, what: str) -> None:
    """Poll ``pred`` every 50 ms until it holds; fail naming ``what`` after ``deadline_s``."""
    end = time.monotonic() + deadline_s
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class LocalCluster(NamedTuple):
    cluster: Any  # ray.cluster_utils.Cluster
    nodes: list[Any]
    start_s: float  # measured: Cluster() to every node registered

    @property
    def slow(self) -> float:
        """How many times slower than a quiet host this host is now (at least 1): the
        larger of how much slower Ray started, and ``1 + runnable processes per core``
        (the 1-min load average, read at each call). The start alone under-states it:
        under two busy loops Ray started 1.5x slower, but a replica that imports torch
        took longer than 1.5x its quiet deadline, and a host can get busier after the
        start. At most ``MOST_SLOW``."""
        cores = os.cpu_count() or 1
        slow = max(1.0, self.start_s / QUIET_START_S, 1.0 + os.getloadavg()[0] / cores)
        return min(MOST_SLOW, slow)

    def deadline(self, quiet_s: float) -> float:
        """A deadline that holds on a quiet host, scaled to this host's speed now."""
        return quiet_s * self.slow

    def ceiling(self, quiet_s: float) -> float:
        """A timeout of the system under test that is fixed once for several tests (a
        module's spec: the backend's start deadline, a call's budget): the most a host
        may slow down, ``MOST_SLOW`` times the quiet figure. Sized with ``deadline`` when
        the module starts, it was too short when the host got busier later (a cold start
        at 2.39x the quiet figure's 60 s gave up at 143 s while the test still waited);
        the tests' own waits, scaled when each starts, are what bound a test's time."""
        return quiet_s * MOST_SLOW


@contextlib.contextmanager
def local_cluster(head: dict[str, Any], workers: list[dict[str, Any]]) -> Iterator[LocalCluster]:
    """Head + worker nodes on loopback, dashboard off, this checkout's sources on the
    workers' PYTHONPATH (Ray workers and Serve's controller import quartfaas)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = SRC + (os.pathsep + old if old else "")
    t0 = time.monotonic()
    c = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **head})
    try:
        nodes = [c.add_node(**w) for w in workers]
        ray.init(address=c.address, include_dashboard=False, logging_level="ERROR")
        c.wait_for_nodes()
        # per node: the quiet figure is for a head and one worker
        start_s = (time.monotonic() - t0) * 2 / (1 + len(workers))
        yield LocalCluster(c, nodes, start_s)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        c.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old

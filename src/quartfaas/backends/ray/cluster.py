"""The Ray connection of ``quartfaas serve/run --backend ray``: attach, or start one here.

- ``address`` given (``ray://...``, ``host:port`` or ``auto``): attach to that running
  cluster (its nodes must be able to import quartfaas: install it there);
- ``local_nodes == 0``: ``ray.init()`` starts a one-node cluster in this process's session
  (with ``node_cpus`` logical CPUs and ``accelerator_units`` of ``accelerator``);
- ``local_nodes > 0``: a head plus ``local_nodes`` worker nodes (separate raylets on
  loopback, ``ray.cluster_utils.Cluster``) with ``node_cpus`` CPUs and ``accelerator``
  units each; the head has no accelerator, so replicas land on the worker nodes.

Dashboard off. Started clusters are always shut down by ``close`` (or the ``with`` block),
raylets included. The workers get this package's source directory on ``PYTHONPATH``, so a
checkout works without an install.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from pathlib import Path
from typing import Any

import ray

import quartfaas
from quartfaas.errors import BackendError

log = logging.getLogger(__name__)
MIB = 1024**2


# Ray's node health check for a local (loopback) cluster: a probe every 500 ms, a node
# declared dead after this many misses on an idle host (~1.5 s instead of Ray's ~30 s).
HEALTH_PERIOD_MS = 500
HEALTH_MISSES_IDLE = 3
HEALTH_MISSES_MOST = 24  # 12 s: a starved node is still noticed in seconds


def fast_health_check(load_per_core: float | None = None) -> dict[str, int]:
    """Ray ``_system_config`` for a local cluster's fast dead-node detection, with the
    allowed misses scaled by ``1 + load_per_core`` (default: the 1-minute load average
    per core now, 0 where the platform has none). On 2 cores with three CPU-bound
    processes beside the Ray tests, 3 misses declared live raylets dead ("missing too
    many heartbeats") and failed two of them; the raylets were starved, not dead."""
    if load_per_core is None:
        try:
            load_per_core = os.getloadavg()[0] / (os.cpu_count() or 1)
        except OSError:
            load_per_core = 0.0
    misses = math.ceil(HEALTH_MISSES_IDLE * (1.0 + max(0.0, load_per_core)))
    return {
        "health_check_period_ms": HEALTH_PERIOD_MS,
        "health_check_failure_threshold": min(HEALTH_MISSES_MOST, misses),
    }


class RayConnection:
    """``ray.init`` (attach or local) now; ``close`` shuts down what it started."""

    def __init__(
        self,
        address: str | None = None,
        *,
        local_nodes: int = 0,
        node_cpus: int = 2,
        accelerator: str | None = None,
        accelerator_units: int = 4,
        object_store_bytes: int = 512 * MIB,
        fast_failure_detection: bool = True,
    ) -> None:
        if ray.is_initialized():
            raise BackendError("Ray is already initialised in this process")
        self.address = address
        self.cluster: Any = None
        self._old_path = os.environ.get("PYTHONPATH")
        src = str(Path(quartfaas.__file__).resolve().parent.parent)
        os.environ["PYTHONPATH"] = src + (os.pathsep + self._old_path if self._old_path else "")
        try:
            if address:
                ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR)
            elif local_nodes <= 0:
                ray.init(include_dashboard=False, logging_level=logging.ERROR,
                         object_store_memory=object_store_bytes, num_cpus=node_cpus,
                         resources={accelerator: accelerator_units} if accelerator else None,
                         )  # fmt: skip
            else:
                self._start_local(local_nodes, node_cpus, accelerator, accelerator_units,
                                  store=object_store_bytes,
                                  fast=fast_failure_detection)  # fmt: skip
        except Exception as exc:
            self.close()
            where = address or "a local cluster"
            raise BackendError(f"could not connect to Ray ({where}): {exc}") from exc
        self.nodes = len([n for n in ray.nodes() if n.get("Alive")])
        log.info("ray %s: %d node(s) (%s)", ray.__version__, self.nodes, address or "local")

    def _start_local(
        self, n: int, cpus: int, accel: str | None, units: int, *, store: int, fast: bool
    ) -> None:
        from ray.cluster_utils import Cluster

        head: dict[str, Any] = {"include_dashboard": False, "num_cpus": 1,
                                "object_store_memory": store}  # fmt: skip
        if fast:  # a dead node is noticed in ~1.5 s on an idle host, not Ray's ~30 s
            head["_system_config"] = fast_health_check()
        self.cluster = Cluster(initialize_head=True, head_node_args=head)
        worker: dict[str, Any] = {"num_cpus": cpus, "object_store_memory": store}
        if accel is not None:
            worker["resources"] = {accel: units}
        for _ in range(n):
            self.cluster.add_node(**worker)
        ray.init(address=self.cluster.address, include_dashboard=False, logging_level=logging.ERROR)
        self.cluster.wait_for_nodes()

    def describe(self) -> str:
        where = self.address or ("local cluster" if self.cluster is not None else "local node")
        return f"ray {ray.__version__}, {where}, {self.nodes} node(s)"

    def close(self) -> None:
        with contextlib.suppress(Exception):
            ray.shutdown()
        if self.cluster is not None:
            with contextlib.suppress(Exception):
                self.cluster.shutdown()
            self.cluster = None
        if self._old_path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = self._old_path

    def __enter__(self) -> RayConnection:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

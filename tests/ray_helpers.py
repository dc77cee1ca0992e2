"""A local multi-node Ray cluster for the Ray tests: ``from ray_helpers import local_cluster``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

SRC = str(Path(__file__).resolve().parents[1] / "src")
MIB = 1024**2


@contextlib.contextmanager
def local_cluster(
    head: dict[str, Any], workers: list[dict[str, Any]]
) -> Iterator[tuple[Any, list[Any]]]:
    """Head + worker nodes on loopback, dashboard off, this checkout's sources on the
    workers' PYTHONPATH (Ray workers and Serve's controller import quartfaas)."""
    ray = pytest.importorskip("ray")
    from ray.cluster_utils import Cluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = SRC + (os.pathsep + old if old else "")
    c = Cluster(initialize_head=True, head_node_args={"include_dashboard": False, **head})
    try:
        nodes = [c.add_node(**w) for w in workers]
        ray.init(address=c.address, include_dashboard=False, logging_level="ERROR")
        c.wait_for_nodes()
        yield c, nodes
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        c.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old

"""Replica start on Ray, per parameter-cache tier, vs a new Ray Serve replica (issue #14).

One run, one local multi-node Ray cluster (a head and two worker nodes with the custom
resource ``accel``, dashboard off), the 1 GiB ``bert-1g`` stage
(``quartfaas make-weights src/quartfaas/examples/bert-1g.yaml`` first):

- quartfaas ``RayBackend``, call -> ready (``start_replica`` until ``ready()`` answers,
  weights mapped and one warm-up forward done):
  * cold: no node holds the weights; the node's owner reads the safetensors file;
  * object-store hit: a second replica on the node that holds them (zero-copy map);
  * remote: a replica on the other node; its owner pulls the object across first;
- object-store hit with a warm actor: as the hit, but the replica takes an actor started
  ahead of demand (``RayBackend.prewarm``: process up, torch imported, no weights);
- Ray Serve: the same stage as a Serve deployment (``serve_app.build_app``) scaled from
  1 to 2 replicas by a config update; call -> the new replica RUNNING.

Also printed: the part of call -> ready spent inside the new actor mapping the weights
and running one warm-up forward (``map+warm``; the rest is Ray starting a worker process
that imports torch, plus the tier's transfer), and each replica's RSS, PSS and private memory (``/proc/self/smaps_rollup``),
which shows whether the weights were mapped (shared) or copied (private).

    PYTHONPATH=src .venv/bin/python benchmarks/ray_backend.py [--repeats 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
GIB = 1024**3


def start_cluster() -> Any:
    import ray
    from ray.cluster_utils import Cluster

    os.environ["PYTHONPATH"] = str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", "")
    c = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False,
                        "object_store_memory": 512 * 1024**2},
    )  # fmt: skip
    for _ in range(2):
        # logical CPUs (placement only): room for 3 one-CPU replicas + a standby per node
        c.add_node(num_cpus=4, resources={"accel": 4}, object_store_memory=int(2.5 * GIB))
    ray.init(address=c.address, include_dashboard=False, logging_level="ERROR")
    c.wait_for_nodes()
    return c


async def wait_ready(backend: Any, rid: str, timeout_s: float = 300) -> Any:
    from quartfaas.control.backend import ReplicaState

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        for r in backend.list_replicas():
            if r.replica_id == rid and r.state is ReplicaState.READY:
                return r
        if rid not in {r.replica_id for r in backend.list_replicas()}:
            raise RuntimeError(f"replica {rid} failed to start")
        await asyncio.sleep(0.01)
    raise TimeoutError(rid)


class Listener:
    def replica_starting(self, info: Any) -> None: ...
    def replica_ready(self, info: Any) -> None: ...
    def replica_start_failed(self, info: Any) -> None: ...
    def replica_gone(self, info: Any) -> None: ...

    async def drain_replica(self, info: Any, timeout_s: float) -> bool:
        return True


async def quartfaas_tiers(spec: Any, repeats: int) -> list[dict[str, Any]]:
    from quartfaas.backends.ray.backend import RayBackend
    from quartfaas.backends.ray.nodes import cluster_nodes

    stage = spec.stages[0].name
    rows: list[dict[str, Any]] = []
    for rep in range(repeats):
        backend = RayBackend(spec, Listener(), placer="quart", accelerator_resource="accel")
        try:
            workers = [n.node_id for n in cluster_nodes() if n.resources.get("accel")]
            for label in ("cold", "object-store", "remote"):
                # cold: nobody holds it; object-store: the placer picks the holding node;
                # remote: pinned to the other worker node, which pulls the object across
                t0 = time.perf_counter()
                other = [n for n in workers if n not in backend.cache.holders(stage)]
                pin = other[0] if label == "remote" else None
                info = backend.start_replica(stage, node_id=pin)
                r = await wait_ready(backend, info.replica_id)
                dt = time.perf_counter() - t0
                mem = backend.ready_info[info.replica_id]
                rows.append({
                    "path": f"quartfaas Ray: {label}", "tier": str(r.tier), "repeat": rep,
                    "seconds": dt, "load_s": mem["load_s"], "node": r.host[:8],
                    "rss_mib": mem.get("rss", 0) / 1024, "pss_mib": mem.get("pss", 0) / 1024,
                    "private_mib": (mem.get("private_clean", 0) + mem.get("private_dirty", 0))
                    / 1024,
                })  # fmt: skip
                print(f"  {rows[-1]['path']:<32} {r.tier!s:<13} {dt:6.2f} s", flush=True)
            # both worker nodes hold the weights now: a standby actor on each (started
            # ahead of demand, not timed), then a start that takes one
            for node in backend.cache.holders(stage):
                await backend.prewarm(stage, node)
            t0 = time.perf_counter()
            info = backend.start_replica(stage)
            r = await wait_ready(backend, info.replica_id)
            dt = time.perf_counter() - t0
            mem = backend.ready_info[info.replica_id]
            assert "warm standby" in r.message, r.message
            rows.append({
                "path": "quartfaas Ray: object-store+warm", "tier": str(r.tier), "repeat": rep,
                "seconds": dt, "load_s": mem["load_s"], "node": r.host[:8],
                "rss_mib": mem.get("rss", 0) / 1024, "pss_mib": mem.get("pss", 0) / 1024,
                "private_mib": (mem.get("private_clean", 0) + mem.get("private_dirty", 0))
                / 1024,
            })  # fmt: skip
            print(f"  {rows[-1]['path']:<32} {r.tier!s:<13} {dt:6.2f} s", flush=True)
        finally:
            await backend.close()
    return rows


def serve_new_replica(spec: Any, repeats: int) -> list[dict[str, Any]]:
    from ray import serve

    from quartfaas.backends.ray.serve_app import deploy_pipeline

    stage = spec.stages[0].name
    serve.start(http_options={"location": "NoServer"})
    rows: list[dict[str, Any]] = []
    opts = {"resources": {"accel": 1}}
    try:
        for rep in range(repeats):
            app = f"serve-{rep}"
            deploy_pipeline(spec, app_name=app, ray_actor_options=opts,
                            autoscaling={"min_replicas": 1, "initial_replicas": 1})  # fmt: skip
            t0 = time.perf_counter()
            deploy_pipeline(spec, app_name=app, ray_actor_options=opts, timeout_s=300,
                            autoscaling={"min_replicas": 2, "initial_replicas": 2})  # fmt: skip
            while True:
                dep = serve.status().applications[app].deployments[stage]
                if dep.replica_states.get("RUNNING", 0) >= 2:
                    break
                time.sleep(0.01)
            dt = time.perf_counter() - t0
            rows.append({"path": "Ray Serve: new replica", "tier": "file (mmap)",
                         "repeat": rep, "seconds": dt})  # fmt: skip
            print(f"  {rows[-1]['path']:<32} {'file (mmap)':<13} {dt:6.2f} s", flush=True)
            serve.delete(app)
    finally:
        serve.shutdown()
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "src/quartfaas/examples/bert-1g.yaml"))
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)

    import ray

    from quartfaas.spec import load_spec

    spec = load_spec(args.spec)
    if not Path(spec.stage_weights_path(0)).is_file():
        print(f"no weights: run quartfaas make-weights {args.spec}", file=sys.stderr)
        return 2
    cluster = start_cluster()
    try:
        print(f"ray {ray.__version__}: head + 2 worker nodes; stage {spec.stages[0].name}")
        rows = asyncio.run(quartfaas_tiers(spec, args.repeats))
        rows += serve_new_replica(spec, args.repeats)
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()

    def med(path: str) -> float:
        return statistics.median(r["seconds"] for r in rows if r["path"] == path)

    paths = list(dict.fromkeys(r["path"] for r in rows))
    serve_s = med("Ray Serve: new replica")
    print()
    print(f"{'path':<34}{'tier':<14}{'call->ready s (median)':>24}{'vs Serve':>10}"
          f"{'map+warm s':>11}{'RSS MiB':>9}{'PSS MiB':>9}{'private MiB':>13}")  # fmt: skip
    for p in paths:
        sel = [r for r in rows if r["path"] == p]
        mem = sel[-1]
        runs = ", ".join(f"{r['seconds']:.2f}" for r in sel)
        ratio = serve_s / med(p)
        print(f"{p:<34}{sel[0]['tier']:<14}{med(p):>10.2f} ({runs}){'':>3}{ratio:>9.1f}x"
              + (f"{statistics.median(r['load_s'] for r in sel):>11.2f}{mem['rss_mib']:>9.0f}{mem['pss_mib']:>9.0f}{mem['private_mib']:>13.0f}"
                 if "rss_mib" in mem else ""))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())

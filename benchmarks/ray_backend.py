"""Replica start on Ray, per parameter-cache tier, vs a new Ray Serve replica; and a
zero-work 3-stage pipeline through the quartfaas gateway (local / Ray backend) vs plain
Ray Serve (issue #14).

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

Then, on the same cluster, a zero-work 3-stage pipeline (``gateway_overhead._spec(3)``:
synthetic stages that do nothing), driven over HTTP from this process with
``gateway_overhead.drive`` (latency with one request outstanding; closed-loop throughput
with ``--concurrency`` clients for ``--seconds``):

- quartfaas gateway, local backend: ``EmbeddedRuntime`` in a child process (worker
  processes over HTTP);
- quartfaas gateway, Ray backend: ``RayRuntime`` in a child process attached to the
  cluster (stage replicas are actors with the ``accel`` resource on the worker nodes;
  activations between stages stay object refs);
- plain Ray Serve: an HTTP ingress deployment calling three zero-work stage deployments
  through deployment handles (``max_ongoing_requests`` 64, as the stages' concurrency;
  access log off, as the gateway writes none per call).

Per hop = e2e p50 / 4 (client->gateway plus one hop per stage, as for Serve's figure).

Then (``--part activations``) one large activation (``--activation-mib``) handed to a
zero-work stage replica on a worker node, already in that node's object store, as the
backend sends it now (a ``uint8`` array, read in place: ``backends/ray/activations.py``)
and as it sent it before (``bytes``, rebuilt in the actor's heap): call -> meta seconds
(median of ``--activation-calls``; the output is written to the object store in both) and
how far the actor's anonymous memory rose while the input was alive.

    PYTHONPATH=src .venv/bin/python benchmarks/ray_backend.py [--repeats 2] [--part all]
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


def _serve_ray(spec_data: dict[str, Any], conn: Any, address: str) -> None:
    """Child process: the quartfaas gateway on the Ray backend, attached to ``address``."""
    from quartfaas.backends.ray.cluster import RayConnection
    from quartfaas.backends.ray.runtime import RayRuntime
    from quartfaas.spec import parse_spec

    async def main() -> None:
        rt = RayRuntime(parse_spec(spec_data), accelerator_resource="accel", standbys=0,
                        connection=RayConnection(address))  # fmt: skip
        await rt.start()
        conn.send(rt.url)
        await rt.serve_forever()

    try:
        asyncio.run(main())
    except Exception as exc:
        conn.send(exc)


def serve_zero_pipeline(args: Any) -> dict[str, float]:
    """Plain Ray Serve (Ray initialised by the caller): HTTP ingress -> 3 zero-work stage
    deployments through deployment handles; driven like the gateway."""
    import socket

    from ray import serve

    from gateway_overhead import drive  # benchmarks/gateway_overhead.py

    quiet = {"enable_access_log": False, "log_level": "WARNING"}  # as the gateway: no per-call log

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25},
                      logging_config=quiet)  # fmt: skip
    class ZeroStage:
        def __call__(self, x: Any) -> Any:
            return x

    @serve.deployment(max_ongoing_requests=64, ray_actor_options={"num_cpus": 0.25},
                      logging_config=quiet)  # fmt: skip
    class Ingress:
        def __init__(self, *stages: Any) -> None:
            self.stages = stages

        async def __call__(self, request: Any) -> dict[str, Any]:
            x = (await request.json())["inputs"]
            for handle in self.stages:
                x = await handle.remote(x)
            return {"output": x}

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        stages = [ZeroStage.options(name=f"zero3-s{i}").bind() for i in range(3)]
        serve.run(Ingress.bind(*stages), name="zero3", route_prefix="/function/zero3")
        return drive(f"http://127.0.0.1:{port}/function/zero3", args)
    finally:
        serve.shutdown()


def pipeline_rows(address: str, args: Any) -> list[dict[str, Any]]:
    import gateway_overhead as go

    rows = []
    for name, fn in (
        ("quartfaas gateway, local backend", lambda: go.measure(3, args)),
        ("quartfaas gateway, Ray backend",
         lambda: go.measure(3, args, serve=_serve_ray, extra=(address,))),
        ("plain Ray Serve, deployment handles", lambda: serve_zero_pipeline(args)),
    ):  # fmt: skip
        m = fn()
        rows.append({"path": name, **m})
        print(f"  {name:<38} p50 {m['p50_ms']:6.2f} ms  {m['rps']:7.0f} req/s", flush=True)
    return rows


def print_pipeline(rows: list[dict[str, Any]]) -> None:
    serve_rps = rows[-1]["rps"]
    print()
    print("zero-work 3-stage pipeline over HTTP (per hop = e2e p50 / 4)")
    print(f"{'path':<38}{'p50 ms':>9}{'p99 ms':>9}{'per hop ms':>12}{'req/s':>9}{'vs Serve':>10}")
    for r in rows:
        print(f"{r['path']:<38}{r['p50_ms']:>9.2f}{r['p99_ms']:>9.2f}{r['p50_ms'] / 4:>12.2f}"
              f"{r['rps']:>9.0f}{r['rps'] / serve_rps:>9.1f}x")  # fmt: skip


async def activation_rows(mib: int, calls: int) -> list[dict[str, Any]]:
    """A zero-work stage fed a ``mib`` MiB frame: as a uint8 array vs as bytes."""
    import numpy as np
    import ray

    from quartfaas.backends.ray.activations import to_object
    from quartfaas.backends.ray.backend import RayBackend
    from quartfaas.dataplane import framing
    from quartfaas.spec import parse_spec

    size = mib * 1024**2
    spec = parse_spec({
        "name": "act", "model": {"kind": "synthetic"},
        "gateway": {"max_body_bytes": 2 * size, "replica_start_timeout_s": 300},
        "stages": [{"name": "act-s0", "cpu": 1.0, "synthetic": {"work": "none"}}],
    })  # fmt: skip
    frame = framing.encode_numpy({"x": np.ones(size, np.uint8)})
    backend = RayBackend(spec, Listener(), accelerator_resource="accel")
    rows = []
    try:
        info = backend.start_replica("act-s0")
        await wait_ready(backend, info.replica_id)
        actor = backend.actor(info.replica_id)
        for path, obj in (("uint8 array, read in place", to_object(frame)),
                          ("bytes, copied to the heap", frame)):  # fmt: skip
            ref = ray.put(obj)
            await actor.invoke.options(num_returns=2).remote(ref)[0]  # pulled to the node
            times = []
            for _ in range(calls):
                t0 = time.perf_counter()
                await actor.invoke.options(num_returns=2).remote(ref)[0]
                times.append(time.perf_counter() - t0)
            base = await actor.watch_inputs.remote(True)
            await actor.invoke.options(num_returns=2).remote(ref)[0]
            (seen,) = await actor.inputs_seen.remote()
            await actor.watch_inputs.remote(False)
            grown = max(seen["entry_kib"]["anonymous"], seen["exit_kib"]["anonymous"])
            rows.append({"path": path, "ms": 1000 * statistics.median(times),
                         "anon_mib": (grown - base["anonymous"]) / 1024,
                         "owner": seen["owner"]})  # fmt: skip
            print(f"  {path:<28} {rows[-1]['ms']:7.2f} ms", flush=True)
            del ref
    finally:
        await backend.close()
    return rows


def print_activations(rows: list[dict[str, Any]], mib: int) -> None:
    print()
    print(f"one {mib} MiB activation into a zero-work stage replica (call -> meta, median)")
    print(f"{'input':<30}{'ms':>9}{'heap growth MiB':>17}  owner")
    for r in rows:
        print(f"{r['path']:<30}{r['ms']:>9.2f}{r['anon_mib']:>17.1f}  {r['owner']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default=str(ROOT / "src/quartfaas/examples/bert-1g.yaml"))
    parser.add_argument("--repeats", type=int, default=2, help="replica starts per tier")
    parser.add_argument("--part", choices=("all", "tiers", "pipeline", "activations"),
                        default="all")  # fmt: skip
    parser.add_argument("--activation-mib", type=int, default=32)
    parser.add_argument("--activation-calls", type=int, default=20)
    parser.add_argument("--requests", type=int, default=500, help="latency samples")
    parser.add_argument("--pipeline-repeats", type=int, default=1)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args(argv)
    drive_args = argparse.Namespace(
        requests=args.requests,
        repeats=args.pipeline_repeats,
        concurrency=args.concurrency,
        seconds=args.seconds,
    )

    import ray

    from quartfaas.spec import load_spec

    spec = load_spec(args.spec)
    if args.part in ("all", "tiers") and not Path(spec.stage_weights_path(0)).is_file():
        print(f"no weights: run quartfaas make-weights {args.spec}", file=sys.stderr)
        return 2
    cluster = start_cluster()
    try:
        print(f"ray {ray.__version__}: head + 2 worker nodes; stage {spec.stages[0].name}")
        rows: list[dict[str, Any]] = []
        if args.part in ("all", "tiers"):
            rows = asyncio.run(quartfaas_tiers(spec, args.repeats))
            rows += serve_new_replica(spec, args.repeats)
        pipe = (
            pipeline_rows(cluster.address, drive_args) if args.part in ("all", "pipeline") else []
        )
        act = (asyncio.run(activation_rows(args.activation_mib, args.activation_calls))
               if args.part in ("all", "activations") else [])  # fmt: skip
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        cluster.shutdown()

    if rows:
        print_tiers(rows)
    if pipe:
        print_pipeline(pipe)
    if act:
        print_activations(act, args.activation_mib)
    return 0


def print_tiers(rows: list[dict[str, Any]]) -> None:
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


if __name__ == "__main__":
    sys.exit(main())

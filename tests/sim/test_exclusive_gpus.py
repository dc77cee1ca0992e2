"""Accelerators are exclusive (issue #11 item 1): one replica per GPU unless the cluster
shares, a sharer slows down by ``sharing_multiplier``, GPU-seconds are occupancy."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from quartfaas.clock import FakeClock
from quartfaas.control.placement import get_placer
from quartfaas.errors import InsufficientMemory
from quartfaas.sim.backend import SimBackend
from quartfaas.sim.cluster import GpuSharing, cluster_preset, sharing_multiplier
from quartfaas.sim.engine import Engine
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.placement import ControlPlacer, Placer


def _backend(sharing: GpuSharing, placer: Placer | None = None) -> tuple[SimBackend, FakeClock]:
    pipe = pipeline_preset("whisper-time-3")  # stages of 0.7-1.7 GiB: memory never binds
    n = 4
    engine = Engine(np.linspace(0, 1, n), np.full((3, n), 0.01), [100] * 3)
    clock = FakeClock()
    cluster = replace(cluster_preset("small"), sharing=sharing)
    return SimBackend(cluster, pipe, engine, clock, placer), clock


@pytest.mark.parametrize("placer", ["first-fit", "quart", "least-loaded", "bin-pack"])
def test_exclusive_cluster_never_stacks_replicas_on_a_gpu(placer: str) -> None:
    pipe = pipeline_preset("whisper-time-3")
    chosen = None if placer == "first-fit" else ControlPlacer(get_placer(placer), pipe)
    b, _ = _backend(GpuSharing.EXCLUSIVE, chosen)
    names = [s.name for s in pipe.stages]
    started = 0
    with pytest.raises(InsufficientMemory, match="unoccupied"):
        for i in range(100):
            b.start_replica(names[i % 3])
            started += 1
    assert started == b.cluster.total_gpus == 8
    gpus = [r.message for r in b.list_replicas()]
    assert len(set(gpus)) == len(gpus)  # one replica per GPU


def test_shared_gpu_slows_each_tenant_and_counts_once() -> None:
    b, clock = _backend(GpuSharing.MPS)
    names = [s.name for s in b.pipeline.stages]
    for name in names:  # stage anti-affinity only: first fit stacks them on GPU 0
        b.start_replica(name)
    gpus = {r.message for r in b.list_replicas()}
    assert len(gpus) == 1
    base = 1.0 / b.cluster.servers[0].gpu.speed
    expected = base * sharing_multiplier(GpuSharing.MPS, 3)
    assert b.engine.slot_mult[0, 0] == pytest.approx(expected)
    clock.set(10.0)
    assert b.replica_seconds(10.0) == pytest.approx(30.0)
    assert b.gpu_seconds(10.0) == pytest.approx(10.0)  # one GPU held for 10 s
    rid = b.list_replicas(names[2])[0].replica_id
    b.stop_replica(rid)  # idle: leaves at once, the others speed up
    assert b.engine.slot_mult[0, 0] == pytest.approx(base * 2)


def test_exclusive_gpu_seconds_equal_replica_seconds() -> None:
    b, clock = _backend(GpuSharing.EXCLUSIVE)
    for s in b.pipeline.stages:
        b.start_replica(s.name)
    clock.set(4.0)
    assert b.gpu_seconds(4.0) == pytest.approx(b.replica_seconds(4.0)) == pytest.approx(12.0)

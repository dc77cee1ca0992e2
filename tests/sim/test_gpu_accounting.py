"""Exclusive GPUs: occupancy, sharing slowdown, static peak provisioning fit, table delays."""

from __future__ import annotations

from dataclasses import replace

import pytest

from quartfaas.control.backend import StartTier
from quartfaas.control.placement.startup_delays import DelayTable
from quartfaas.errors import SimulationError
from quartfaas.sim.cluster import (
    GPU_TYPES,
    GpuSharing,
    TableDelays,
    cluster_preset,
    sharing_multiplier,
)
from quartfaas.sim.gpu_accounting import (
    Demand,
    fit_replicas,
    gpu_occupancy_seconds,
    replica_seconds,
    static_peak_fit,
)
from quartfaas.sim.pipelines import pipeline_preset


def test_occupancy_counts_a_shared_gpu_once_and_clips() -> None:
    holds = [("g0", 0.0, 10.0), ("g0", 5.0, 12.0), ("g1", 2.0, 4.0), ("g0", 20.0, 30.0)]
    assert replica_seconds(holds, 25.0) == pytest.approx(10 + 7 + 2 + 5)
    assert gpu_occupancy_seconds(holds, 25.0) == pytest.approx(12 + 2 + 5)
    exclusive = [("a", 0.0, 3.0), ("b", 1.0, 2.0)]
    assert gpu_occupancy_seconds(exclusive, 9.0) == replica_seconds(exclusive, 9.0)
    with pytest.raises(SimulationError, match="before it begins"):
        gpu_occupancy_seconds([("g", 2.0, 1.0)], 5.0)


def test_sharing_multiplier() -> None:
    assert sharing_multiplier(GpuSharing.EXCLUSIVE, 1) == 1.0
    with pytest.raises(SimulationError, match="exclusive"):
        sharing_multiplier(GpuSharing.EXCLUSIVE, 2)
    assert sharing_multiplier(GpuSharing.MPS, 3) == pytest.approx(3.0)
    assert sharing_multiplier(GpuSharing.MPS, 3, busy_frac=0.5) == pytest.approx(2.0)
    ts = sharing_multiplier(GpuSharing.TIME_SLICE, 3, switch_overhead=0.05)
    assert ts > sharing_multiplier(GpuSharing.MPS, 3)


def test_exclusive_fit_needs_one_gpu_per_replica_with_enough_memory() -> None:
    paper = cluster_preset("paper")
    assert paper.sharing is GpuSharing.EXCLUSIVE
    ok = fit_replicas(paper, [Demand("s", 30.0, 48)])  # 12 A100 + 24 V100 + 12 A40 >= 30 GiB
    assert ok.fits and ok.gpus_needed == 48 and ok.gpus_available == 72
    big = fit_replicas(paper, [Demand("s", 30.0, 49)])
    assert not big.fits and big.unplaced == 1 and "find none" in big.reason
    too_many = fit_replicas(paper, [Demand("s", 1.0, 73)])
    assert not too_many.fits


def test_sharing_packs_within_anti_affinity() -> None:
    shared = replace(cluster_preset("small"), sharing=GpuSharing.MPS)  # 8 x V100 32 GiB
    f = fit_replicas(shared, [Demand("a", 10.0, 3, "a"), Demand("b", 10.0, 3, "b")])
    assert f.fits and f.gpus_needed == 3
    same_group = fit_replicas(shared, [Demand("a", 10.0, 3, "m"), Demand("b", 10.0, 3, "m")])
    assert same_group.gpus_needed == 6


def test_static_peak_fit_on_the_paper_cluster() -> None:
    pipe = pipeline_preset("bert-21b-me-21")
    paper = cluster_preset("paper")
    per_stage = {s.name: 3 for s in pipe.stages}
    f = static_peak_fit(pipe, paper, per_stage)
    assert f.fits and f.gpus_needed == 63
    over = static_peak_fit(pipe, paper, {s.name: 4 for s in pipe.stages})
    assert not over.fits and over.gpus_needed == 84 > over.gpus_available
    mps = static_peak_fit(pipe, replace(paper, sharing=GpuSharing.MPS), per_stage, "stage")
    assert mps.fits and mps.gpus_needed < 63
    with pytest.raises(SimulationError, match="unknown stage"):
        static_peak_fit(pipe, paper, {"nope": 1})


def test_table_delays_charge_the_cuda_context_to_a_forked_gpu_replica() -> None:
    table = DelayTable(fork_s=0.08, cuda_context_s=1.5, host_memcpy_bytes_per_s=1e18)
    d = TableDelays(table=table)
    v100 = GPU_TYPES["V100"]
    fork = d.seconds(StartTier.FORK, 2.0, v100, 0.01)
    assert fork == pytest.approx(0.08 + 1.5 + 2.0 / v100.h2d_gib_per_s + 0.01, rel=1e-6)
    assert d.seconds(StartTier.FORK, 2.0, None, 0.01) == pytest.approx(0.09)
    assert d.seconds(StartTier.COLD, 2.0, v100, 0.0) > fork
    assert d.seconds(StartTier.NONE, 0.0, None, 0.5) == pytest.approx(table.process_start_s)

"""Pipeline and cluster presets, start delays, and the bad-name errors."""

from __future__ import annotations

import math

import pytest

from quartfaas.control.backend import StartTier
from quartfaas.errors import SimulationError
from quartfaas.sim.cluster import GPU_TYPES, StartDelays, WeightSource, cluster_preset
from quartfaas.sim.pipelines import from_spec, pipeline_names, pipeline_preset
from quartfaas.spec import parse_spec

EXPECTED = {
    # name: (stages, total GiB from the reference's model table)
    "bert-21b-me-21": (21, 40.78),
    "bert-21b-latency-41": (41, 40.78),
    "opt-66b-me-22": (22, 122.41),
    "llama-7b-me-5": (5, 12.31),
    "whisper-time-3": (3, 2.88),
}


def test_preset_names_are_the_five_benchmark_pipelines() -> None:
    assert pipeline_names() == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_presets_follow_the_profile_csvs(name: str) -> None:
    stages, total_gib = EXPECTED[name]
    p = pipeline_preset(name)
    assert p.num_stages == stages
    assert [s.index for s in p.stages] == list(range(stages))
    assert sum(s.size_gib for s in p.stages) == pytest.approx(total_gib, abs=0.01)
    for s in p.stages:
        assert s.gpu_memory_gib == pytest.approx(min(1.4 * s.size_gib, 43.0))
        assert s.cpus == max(1, math.ceil(s.size_gib / 2))
        assert s.max_concurrency == 2 and (s.min_replicas, s.max_replicas) == (1, 8)
        assert s.name.endswith(p.variant.lower())
    assert p.anti_affinity == ("model" if "-me-" in name else "stage")


def test_service_times_split_the_interpolated_total_by_parameter_share() -> None:
    p = pipeline_preset("bert-21b-me-21")
    # bert-21b profile: 16 stages x 0.012 s, 32 x 0.007 s; 21 lies between, in log2 N.
    frac = (math.log2(21) - 4) / (5 - 4)
    total = 16 * 0.012 + (32 * 0.007 - 16 * 0.012) * frac
    assert p.total_service_s == pytest.approx(total)
    size = sum(s.size_gib for s in p.stages)
    for s in p.stages:
        assert s.service_s == pytest.approx(total * s.size_gib / size)


def test_beyond_the_profile_the_last_segment_is_extended() -> None:
    p = pipeline_preset("bert-21b-latency-41")
    total = 32 * 0.007 + (32 * 0.007 - 16 * 0.012) * (math.log2(41) - 5)
    assert p.total_service_s == pytest.approx(total)


def test_time_variant_is_time_balanced() -> None:
    p = pipeline_preset("whisper-time-3")
    times = {round(s.service_s, 12) for s in p.stages}
    assert len(times) == 1
    # whisper profile ("whishper-9b"): 2 x 0.042 and 4 x 0.023, 3 in between in log2 N.
    frac = math.log2(3) - 1
    assert p.total_service_s == pytest.approx(0.084 + (0.092 - 0.084) * frac)


def test_stage_overrides_apply_to_every_stage() -> None:
    p = pipeline_preset("llama-7b-me-5", max_replicas=3, service_scv=0.4)
    assert {(s.max_replicas, s.service_scv) for s in p.stages} == {(3, 0.4)}


def test_unknown_names_list_the_valid_ones() -> None:
    with pytest.raises(SimulationError, match="valid pipelines: bert-21b-latency-41, "):
        pipeline_preset("gpt-5")
    with pytest.raises(SimulationError, match="valid clusters: paper, small"):
        cluster_preset("moon")


def test_paper_cluster_mixes_the_prototype_gpu_types() -> None:
    c = cluster_preset("paper")
    assert len(c.servers) == 12
    per_node = {s.gpu.name: s.gpus for s in c.servers}
    assert per_node == {"3090": 8, "A100": 4, "V100": 8, "A40": 4}
    assert c.total_gpus == 72
    assert GPU_TYPES["V100"].speed == 1.0
    assert GPU_TYPES["A100"].speed > GPU_TYPES["3090"].speed > 1.0 > GPU_TYPES["A40"].speed
    assert "72 GPUs" in c.describe()


def test_start_delays_by_tier() -> None:
    d = StartDelays(fork_s=0.1, process_start_s=0.8, disk_gib_per_s=0.5, remote_gib_per_s=0.25)
    v100 = GPU_TYPES["V100"]
    copy = 2.0 / v100.h2d_gib_per_s
    assert d.seconds(StartTier.FORK, 2.0, v100, 0.01) == pytest.approx(0.1 + copy + 0.01)
    assert d.seconds(StartTier.COLD, 2.0, v100, 0.01) == pytest.approx(0.8 + 4.0 + copy + 0.01)
    remote = StartDelays(remote_gib_per_s=0.25, source=WeightSource.REMOTE)
    assert remote.seconds(StartTier.COLD, 2.0, v100, 0.0) == pytest.approx(0.8 + 8.0 + copy)
    assert d.seconds(StartTier.NONE, 0.0, None, 0.0) == pytest.approx(0.8)
    with pytest.raises(SimulationError, match="mmap"):
        d.seconds(StartTier.MMAP, 1.0, v100, 0.0)
    c = cluster_preset("paper", delays=StartDelays(fork_s=0.05))
    assert c.delays.fork_s == 0.05


def test_synthetic_spec_becomes_a_sim_pipeline() -> None:
    spec = parse_spec(
        {
            "name": "toy",
            "model": {"kind": "synthetic"},
            "stages": [
                {"name": "a", "synthetic": {"mean_ms": 20, "scv": 1.0}, "max_concurrency": 3},
                {"name": "b", "synthetic": {"mean_ms": 5}},
            ],
            "slo": {"p99_ms": 250},
        }
    )
    p = from_spec(spec)
    assert [(s.name, s.service_s, s.max_concurrency) for s in p.stages] == [
        ("a", 0.02, 3),
        ("b", 0.005, 1),
    ]
    assert p.stages[0].service_scv == 1.0 and p.slo_p99_s == 0.25
    bert = parse_spec({"name": "b", "model": {"kind": "bert"}, "stages": [{"name": "x"}]})
    with pytest.raises(SimulationError, match="synthetic"):
        from_spec(bert)

"""Simulated pipelines: the prototype's benchmark partitions, from its profile CSVs.

``data/stage_sizes.csv`` gives GiB per stage for each partition variant and
``data/stage_times.csv`` seconds per stage for *uniform* N-stage splits (copies of the
prototype's ``function_model_size.csv`` and ``model_config.csv``; reference section 4).

Per-stage service time (seconds on the reference GPU, see ``cluster.GpuType``):

1. total model time at N stages, ``T(N) = N x t(N)``, interpolated linearly in log2 N
   between the profiled N (bert 2..32, opt 4..64, llama 1..8, whisper 1..8) and
   extrapolated along the nearest segment outside them (bert LATENCY-41 needs N = 41);
   ``T`` rises with N because every stage pays a fixed overhead;
2. stage i of an ME/LATENCY/PARAM variant gets ``T(N) x size_i / sum(size)`` (time taken
   proportional to parameters, which holds for the bandwidth-bound batch-1 inference the
   profile measured); a TIME variant is time-balanced by construction, so each stage
   gets ``T(N) / N``.

Other per-stage settings copy the prototype (reference section 8): GPU memory
``min(1.4 x size, 43)`` GiB, CPU ``max(1, ceil(size / 2))`` cores, 2 concurrent requests
per replica, replicas in [1, 8]. ``-me-`` pipelines use model-level anti-affinity (no two
stages of the model on one GPU), others stage-level. The SLO default, 5x the pipeline's
total compute time, is our choice (the prototype has none; its 10 s is a timeout).
Neighbours: ``sim/run.py`` samples work from ``SimStage.service_s``/``service_scv``;
``sim/backend.py`` places replicas by ``gpu_memory_gib``/``cpus``.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, replace
from functools import cache
from importlib import resources
from typing import Literal

from quartfaas.errors import SimulationError
from quartfaas.spec import PipelineSpec

GPU_MEMORY_FACTOR = 1.4
GPU_MEMORY_CAP_GIB = 43.0


@dataclass(frozen=True, slots=True)
class SimStage:
    name: str
    index: int
    service_s: float  # mean seconds per request on the reference GPU
    size_gib: float = 0.0  # weights; 0 = none (start tier NONE, no GPU needed)
    service_scv: float = 0.0  # squared CV of service time (profile gives means only)
    gpu_memory_gib: float = 0.0
    cpus: float = 1.0
    cpu_frac: float = 0.0  # share of service time that scales with 1/CPU (0: GPU-bound)
    max_concurrency: int = 2
    min_replicas: int = 1
    max_replicas: int = 8
    queue_bound: int = 1024


@dataclass(frozen=True, slots=True)
class SimPipeline:
    name: str
    model: str
    variant: str
    stages: tuple[SimStage, ...]
    slo_p99_s: float
    anti_affinity: Literal["model", "stage"] = "stage"
    note: str = ""

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    @property
    def total_service_s(self) -> float:
        return sum(s.service_s for s in self.stages)

    def with_stages(self, **changes: object) -> SimPipeline:
        """The same pipeline with ``changes`` applied to every stage (e.g. max_replicas=4)."""
        return replace(self, stages=tuple(replace(s, **changes) for s in self.stages))  # type: ignore[arg-type]


# (preset name, model id in the CSVs, family, variant, name in stage_times.csv)
_PRESETS: dict[str, tuple[str, str, str, str]] = {
    "bert-21b-me-21": ("bert-21b", "BERT", "ME-21", "bert-21b"),
    "bert-21b-latency-41": ("bert-21b", "BERT", "LATENCY-41", "bert-21b"),
    "opt-66b-me-22": ("opt-66b", "GPT", "ME-22", "opt-66b"),
    "llama-7b-me-5": ("llama-7b", "LLAMA", "ME-5", "llama-7b"),
    "whisper-time-3": ("whisper-large-v2", "WHISPER", "TIME-3", "whishper-9b"),
}


def pipeline_names() -> list[str]:
    return sorted(_PRESETS)


def _read_csv(name: str) -> list[dict[str, str]]:
    text = resources.files("quartfaas.data").joinpath(name).read_text(encoding="utf-8")
    return list(csv.DictReader(text.splitlines()))


@cache
def stage_times() -> dict[str, list[tuple[int, float]]]:
    """Model -> [(N, seconds per stage)] sorted by N."""
    out: dict[str, list[tuple[int, float]]] = {}
    for row in _read_csv("stage_times.csv"):
        out.setdefault(row["model"], []).append((int(row["stages"]), float(row["inference_time"])))
    return {k: sorted(v) for k, v in out.items()}


@cache
def stage_sizes(family: str, variant: str) -> tuple[tuple[int, str, float], ...]:
    """(stage index, function name, GiB) of one partition variant, by index."""
    rows = []
    for row in _read_csv("stage_sizes.csv"):
        if row["model"] == family and row["partition"] == variant:
            index = int(row["function"].rsplit("-", 1)[1])
            rows.append((index, row["function_name"], float(row["size_gib"])))
    return tuple(sorted(rows))


def total_time_s(times_model: str, n: int) -> float:
    """``T(n) = n x t(n)``, interpolated/extrapolated linearly in log2 n."""
    pts = [(math.log2(k), k * t) for k, t in stage_times()[times_model]]
    x = math.log2(n)
    if len(pts) == 1:
        return pts[0][1]
    i = 0
    while i < len(pts) - 2 and x > pts[i + 1][0]:
        i += 1
    (x0, y0), (x1, y1) = pts[i], pts[i + 1]
    return y0 + (y1 - y0) * (x - x0) / (x1 - x0)


def pipeline_preset(name: str, **stage_changes: object) -> SimPipeline:
    """A named benchmark pipeline; ``stage_changes`` override fields of every stage."""
    try:
        model, family, variant, times_model = _PRESETS[name]
    except KeyError:
        raise SimulationError(
            f"unknown pipeline {name!r}; valid pipelines: {', '.join(pipeline_names())}"
        ) from None
    sizes = stage_sizes(family, variant)
    n = len(sizes)
    expect = int(variant.rsplit("-", 1)[1])
    if n != expect or [i for i, _, _ in sizes] != list(range(n)):
        raise SimulationError(f"stage_sizes.csv has {n} stages for {model} {variant}")
    total = total_time_s(times_model, n)
    size_sum = sum(s for _, _, s in sizes)
    stages = []
    for i, fn, size in sizes:
        share = 1.0 / n if variant.startswith("TIME") else size / size_sum
        stages.append(
            SimStage(
                name=fn,
                index=i,
                service_s=total * share,
                size_gib=size,
                gpu_memory_gib=min(GPU_MEMORY_FACTOR * size, GPU_MEMORY_CAP_GIB),
                cpus=float(max(1, math.ceil(size / 2))),
            )
        )
    note = (
        f"{model} {variant}: T({n}) = {total:.4f} s from stage_times.csv ({times_model}), "
        f"split {'evenly' if variant.startswith('TIME') else 'by parameter share'}"
    )
    pipe = SimPipeline(
        name=name,
        model=model,
        variant=variant,
        stages=tuple(stages),
        slo_p99_s=round(5 * total, 3),
        anti_affinity="model" if "-me-" in name else "stage",
        note=note,
    )
    return pipe.with_stages(**stage_changes) if stage_changes else pipe


def from_spec(spec: PipelineSpec) -> SimPipeline:
    """A simulated pipeline for a spec with ``model.kind: synthetic`` (CPU stages, no weights)."""
    if spec.model.kind != "synthetic":
        raise SimulationError(
            f"only synthetic specs can be simulated directly (model.kind is "
            f"{spec.model.kind!r}); use a preset: {', '.join(pipeline_names())}"
        )
    stages = []
    for i, st in enumerate(spec.stages):
        assert st.synthetic is not None  # PipelineSpec guarantees it for synthetic models
        stages.append(
            SimStage(
                name=st.name,
                index=i,
                service_s=st.synthetic.mean_ms / 1000.0,
                service_scv=st.synthetic.scv,
                cpus=st.cpu,
                max_concurrency=st.max_concurrency,
                min_replicas=st.min_replicas,
                max_replicas=st.max_replicas,
                queue_bound=spec.gateway.max_queue_len,
            )
        )
    return SimPipeline(
        name=spec.name,
        model="synthetic",
        variant=f"SPEC-{len(stages)}",
        stages=tuple(stages),
        slo_p99_s=spec.slo.p99_ms / 1000.0,
        note="from a synthetic pipeline spec",
    )

"""GPU accounting for the simulated cluster: occupancy, and whether a deployment fits.

- ``gpu_occupancy_seconds``: GPUs held x time. A GPU counts from the start call of the
  first replica on it (starting time included) until the last one leaves (draining
  included), so two replicas sharing a GPU count it once. ``replica_seconds`` is the plain
  sum of replica lifetimes; the two are equal when every GPU is exclusive.
- ``fit_replicas`` / ``static_peak_fit``: how many GPUs a fixed set of replicas needs on a
  cluster and whether it fits. Exclusive GPUs (``GpuSharing.EXCLUSIVE``, the default) give
  each replica of a GPU stage a whole GPU with enough memory; with sharing, replicas are
  packed by GPU memory (first fit decreasing) under the pipeline's anti-affinity.

Neighbours: ``sim/cluster.py`` (``ClusterSpec``, ``GpuSharing``); ``sim/experiments.py``'s
``static_counts`` gives the peak-provisioning replica counts ``static_peak_fit`` checks;
``backends/sim.py`` is to report ``gpu_seconds`` through ``gpu_occupancy_seconds``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from quartfaas.errors import SimulationError
from quartfaas.sim.cluster import ClusterSpec, GpuSharing
from quartfaas.sim.pipelines import SimPipeline

Hold = tuple[Hashable, float, float]  # (GPU key, held from, held until)


def _check(begin: float, end: float) -> None:
    if not end >= begin:
        raise SimulationError(f"a GPU hold ends ({end}) before it begins ({begin})")


def replica_seconds(holds: Iterable[Hold], until: float) -> float:
    """Sum of hold lengths, each clipped to ``[0, until]``."""
    total = 0.0
    for _, begin, end in holds:
        _check(begin, end)
        total += max(0.0, min(end, until) - max(begin, 0.0))
    return total


def gpu_occupancy_seconds(holds: Iterable[Hold], until: float) -> float:
    """GPUs held x time: per GPU key, the length of the union of its holds in ``[0, until]``."""
    by_gpu: dict[Hashable, list[tuple[float, float]]] = {}
    for key, begin, end in holds:
        _check(begin, end)
        b, e = max(begin, 0.0), min(end, until)
        if e > b:
            by_gpu.setdefault(key, []).append((b, e))
    total = 0.0
    for spans in by_gpu.values():
        spans.sort()
        cur_b, cur_e = spans[0]
        for b, e in spans[1:]:
            if b > cur_e:
                total += cur_e - cur_b
                cur_b, cur_e = b, e
            else:
                cur_e = max(cur_e, e)
        total += cur_e - cur_b
    return total


@dataclass(frozen=True, slots=True)
class Demand:
    """``replicas`` replicas of one stage, each needing ``gpu_memory_gib`` on one GPU."""

    stage: str
    gpu_memory_gib: float
    replicas: int
    group: str = ""  # anti-affinity group: two replicas of one group never share a GPU


@dataclass(frozen=True, slots=True)
class Fit:
    """The answer: GPUs needed and available, and whether the deployment fits."""

    replicas: int  # replicas of GPU stages
    gpus_needed: int  # GPUs used when placed (or the lower bound when it does not fit)
    gpus_available: int
    fits: bool
    sharing: GpuSharing
    unplaced: int
    reason: str


def fit_replicas(cluster: ClusterSpec, demands: Iterable[Demand]) -> Fit:
    """Place every replica on the cluster's GPUs, largest first; report what it takes.

    Exclusive: replicas sorted by memory need (descending) take the largest free GPUs in
    turn; this greedy fits whenever any assignment does (each replica only needs a GPU at
    least as large). Sharing: first fit decreasing by memory over GPUs sorted by memory,
    never two replicas of one ``group`` on a GPU; it may use more GPUs than the optimum
    (bin packing), which the reason says.
    """
    dem = [d for d in demands if d.gpu_memory_gib > 0]
    for d in dem:
        if d.replicas < 0:
            raise SimulationError(f"stage {d.stage}: replicas must be >= 0, got {d.replicas}")
    items = sorted(
        ((d.gpu_memory_gib, d.group or d.stage, d.stage) for d in dem for _ in range(d.replicas)),
        reverse=True,
    )
    gpus = sorted((s.gpu.memory_gib for s in cluster.servers for _ in range(s.gpus)), reverse=True)
    n_rep, avail = len(items), len(gpus)
    if cluster.sharing is GpuSharing.EXCLUSIVE:
        unplaced = 0
        used = 0
        for need, _, _ in items:
            if used < avail and gpus[used] + 1e-9 >= need:
                used += 1
            else:
                unplaced += 1
        fits = unplaced == 0
        reason = (
            f"{n_rep} replicas of GPU stages, one whole GPU each: {n_rep} of {avail} GPUs"
            if fits
            else f"{n_rep} replicas need {n_rep} whole GPUs with enough memory; the cluster "
            f"has {avail} GPUs and {unplaced} replicas find none"
        )
        return Fit(n_rep, n_rep, avail, fits, cluster.sharing, unplaced, reason)
    free = list(gpus)
    groups: list[set[str]] = [set() for _ in gpus]
    unplaced = 0
    for need, group, _ in items:
        for i, f in enumerate(free):
            if f + 1e-9 >= need and group not in groups[i]:
                free[i] -= need
                groups[i].add(group)
                break
        else:
            unplaced += 1
    used = sum(1 for g in groups if g)
    fits = unplaced == 0
    reason = (
        f"{n_rep} replicas packed by GPU memory ({cluster.sharing.value}, first fit "
        f"decreasing) onto {used} of {avail} GPUs"
        if fits
        else f"{unplaced} of {n_rep} replicas find no GPU with enough free memory outside "
        f"their anti-affinity group ({cluster.sharing.value}, {avail} GPUs)"
    )
    return Fit(n_rep, used, avail, fits, cluster.sharing, unplaced, reason)


def static_peak_fit(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    replicas: Mapping[str, int],
    anti_affinity: Literal["model", "stage"] | None = None,
) -> Fit:
    """Does a fixed replica count per stage (e.g. static peak provisioning) fit ``cluster``?

    ``anti_affinity`` defaults to the pipeline's: ``model`` (the ``-me-`` rule) keeps every
    replica of the pipeline on its own GPU, ``stage`` keeps replicas of one stage apart.
    """
    unknown = sorted(set(replicas) - {s.name for s in pipeline.stages})
    if unknown:
        raise SimulationError(f"unknown stage(s) {', '.join(unknown)} in pipeline {pipeline.name}")
    rule = anti_affinity or pipeline.anti_affinity
    return fit_replicas(
        cluster,
        (
            Demand(
                s.name,
                s.gpu_memory_gib,
                int(replicas.get(s.name, 0)),
                pipeline.model if rule == "model" else s.name,
            )
            for s in pipeline.stages
        ),
    )


__all__ = [
    "Demand",
    "Fit",
    "fit_replicas",
    "gpu_occupancy_seconds",
    "replica_seconds",
    "static_peak_fit",
]

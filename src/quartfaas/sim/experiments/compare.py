"""The comparisons: each named policy (or placer) run on the same arrivals and cluster,
one row each. Refused before any work when too large or when the cluster cannot hold the
pipeline; ``ControlLoop``'s per-refusal warnings are counted in a column, not logged."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.control.placement.cache_plan import CachePlanConfig
from quartfaas.errors import SpecError
from quartfaas.sim.choices import MAX_VISITS
from quartfaas.sim.cluster import ClusterSpec
from quartfaas.sim.experiments.setups import (
    PolicySetup,
    check_fits,
    make_placer,
    parse_list,
    parse_policies,
    placement_names,
    policy_setup,
)
from quartfaas.sim.experiments.tables import (
    PLACEMENT_COLUMNS,
    POLICY_COLUMNS,
    Comparison,
    Row,
    placement_values,
    policy_values,
)
from quartfaas.sim.experiments.workloads import (
    Estimate,
    arrivals_for,
    expected_requests,
)
from quartfaas.sim.pipelines import SimPipeline
from quartfaas.sim.placement import Placer
from quartfaas.sim.run import SimResult, simulate
from quartfaas.workload import Workload


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Run ``run`` of ``runs`` (labelled) has finished ``done`` of ``total`` requests."""

    run: int
    runs: int
    label: str
    done: int
    total: int


ProgressFn = Callable[[ProgressEvent], None]


def prepare_run(
    pipeline: SimPipeline, slo_ms: float | None, workload: Workload, duration_s: float | None
) -> tuple[SimPipeline, np.ndarray, str]:
    if slo_ms is not None:
        if not (slo_ms > 0 and math.isfinite(slo_ms)):
            raise SpecError(f"slo_ms ({slo_ms}) must be a finite number > 0")
        pipeline = replace(pipeline, slo_p99_s=slo_ms / 1000.0)
        slo_note = "given"
    else:
        slo_note = f"default: {pipeline.slo_p99_s / pipeline.total_service_s:.1f} x total service"
    arrivals = arrivals_for(workload, duration_s)
    span = float(arrivals[-1]) if arrivals.size else 0.0
    title = (
        f"pipeline {pipeline.name} ({pipeline.num_stages} stages, total service "
        f"{pipeline.total_service_s * 1000:.1f} ms) | workload {workload} "
        f"({arrivals.size} requests over {span:.0f} s, mean {arrivals.size / max(span, 1e-9):.1f}"
        f"/s) | SLO p99 {pipeline.slo_p99_s * 1000:.0f} ms ({slo_note})"
    )
    return pipeline, arrivals, title


def run_one(
    setup: PolicySetup, pipeline: SimPipeline, arrivals: np.ndarray, placer: Placer, *,
    seed: int, cfg: ControllerConfig, index: int, runs: int, progress: ProgressFn | None,
) -> SimResult:  # fmt: skip
    def tick(_t: float, done: int, total: int) -> None:
        assert progress is not None
        progress(ProgressEvent(index, runs, setup.name, done, total))

    with _quiet_loop():
        return simulate(
            pipeline,
            setup.cluster,
            setup.policy,
            arrivals,
            seed=seed,
            controller=cfg,
            placer=placer,
            initial_replicas=setup.initial,
            progress=tick if progress is not None else None,
            cache_planning=CachePlanConfig() if setup.prewarm else None,
        )


@contextlib.contextmanager
def _quiet_loop() -> Iterator[None]:
    # ControlLoop warns once per refused action; a simulated hour can refuse thousands
    # (a full server). They are counted in the "refused" column instead of flooding stderr.
    log = logging.getLogger("quartfaas.control.loop")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def compare_policies(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    workload: Workload,
    policies: Sequence[str],
    *,
    seed: int = 0,
    duration_s: float | None = None,
    slo_ms: float | None = None,
    placement: str | None = None,
    controller: ControllerConfig | None = None,
    progress: ProgressFn | None = None,
    max_visits: int = MAX_VISITS,
) -> Comparison:
    """One row per policy (p50/p99, SLO attainment, GPU-seconds, scale events, start tiers).

    Each ``POLICY[+INFRA]`` runs on its infrastructure (``choices.INFRAS``; by default its
    platform's); ``placement`` overrides the placer of every policy.
    """
    names = parse_policies(policies)
    if placement is not None:
        make_placer(placement, pipeline)  # name check before any work
    cfg = controller or ControllerConfig.model_validate({})
    Estimate(
        expected_requests(workload, duration_s),
        pipeline.num_stages,
        len(names),
        int((duration_s or 0) / cfg.interval_s),
    ).check(max_visits, f"comparing {len(names)} policies")
    initial = sum(s.min_replicas for s in pipeline.stages)
    check_fits(pipeline, cluster, placement or "quart", initial)
    pipeline, arrivals, title = prepare_run(pipeline, slo_ms, workload, duration_s)
    rows, notes = [], []
    infra = []
    for i, name in enumerate(names):
        setup = policy_setup(name, pipeline, cluster, arrivals, cfg)
        if setup.note:
            notes.append(setup.note)
        chosen = placement or setup.placer
        infra.append(f"{name}: {chosen}" + (", fork" if setup.fork else ", no fork")
                     + (", pre-warm" if setup.prewarm else ""))  # fmt: skip
        placer = make_placer(chosen, pipeline)  # fresh: placers may keep state
        r = run_one(setup, pipeline, arrivals, placer, seed=seed, cfg=cfg, index=i,
                 runs=len(names), progress=progress)  # fmt: skip
        r = replace(r, policy=name)  # plots label lines by the name the user typed
        rows.append(Row(name, policy_values(name, r, not setup.fork), r))
    title += (f"\ncluster {cluster.describe()} ({cluster.sharing.value} GPUs) | seed {seed}"
              f"\ninfrastructure: {'; '.join(infra)}")  # fmt: skip
    return Comparison(title, POLICY_COLUMNS, tuple(rows), tuple(notes))


def compare_placements(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    workload: Workload,
    placers: Sequence[str],
    *,
    policy: str = "quart",
    seed: int = 0,
    duration_s: float | None = None,
    slo_ms: float | None = None,
    controller: ControllerConfig | None = None,
    progress: ProgressFn | None = None,
    max_visits: int = MAX_VISITS,
) -> Comparison:
    """One row per placer under one policy: start-tier hit ratio, start seconds, e2e tail."""
    names = parse_list(placers, placement_names(), "placers")
    cfg = controller or ControllerConfig.model_validate({})
    Estimate(
        expected_requests(workload, duration_s),
        pipeline.num_stages,
        len(names),
        int((duration_s or 0) / cfg.interval_s),
    ).check(max_visits, f"comparing {len(names)} placers")
    for name in names:
        check_fits(pipeline, cluster, name, sum(s.min_replicas for s in pipeline.stages))
    pipeline, arrivals, title = prepare_run(pipeline, slo_ms, workload, duration_s)
    rows = []
    for i, name in enumerate(names):
        setup = policy_setup(policy, pipeline, cluster, arrivals, cfg)
        setup = replace(setup, name=name)
        r = run_one(setup, pipeline, arrivals, make_placer(name, pipeline), seed=seed, cfg=cfg,
                 index=i, runs=len(names), progress=progress)  # fmt: skip
        r = replace(r, policy=name)  # plots label lines by placer
        rows.append(Row(name, placement_values(name, r), r))
    title += f"\ncluster {cluster.describe()} | policy {policy} | seed {seed}"
    notes = ("fork_hit_pct: starts served from a host-memory copy of the weights",)
    return Comparison(title, PLACEMENT_COLUMNS, tuple(rows), notes)

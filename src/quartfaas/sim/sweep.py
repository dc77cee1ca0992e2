"""CV x load sweeps on the simulator: the figure users would put in a paper.

For every (CV, load) cell and every policy, one simulated run (``sim/experiments.py``'s
``prepare_run``/``run_one``, the same choices as a policy comparison); the rows go to
``sweep.csv``/``sweep.txt`` and ``sweep.png`` (SLO attainment and GPU-seconds against CV,
one panel per load). Only the numbers of each run are kept, so a sweep's memory stays
that of one run. ``sim/commands.py``'s ``sweep`` command is the CLI on top.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.errors import SpecError
from quartfaas.sim.cluster import ClusterSpec
from quartfaas.sim.experiments import (
    MAX_VISITS,
    Comparison,
    Estimate,
    ProgressFn,
    Row,
    check_fits,
    make_placer,
    parse_policies,
    policy_setup,
    policy_values,
    prepare_run,
    run_one,
)
from quartfaas.sim.pipelines import SimPipeline
from quartfaas.sim.run import SimResult
from quartfaas.workload import Workload

SWEEP_COLUMNS = (
    ("cv", "{:g}"), ("load_rps", "{:g}"), ("policy", "{}"), ("requests", "{:d}"),
    ("p50_ms", "{:.1f}"), ("p99_ms", "{:.1f}"), ("slo_attain_pct", "{:.2f}"),
    ("gpu_seconds", "{:.0f}"), ("replica_seconds", "{:.0f}"), ("scale_ups", "{:d}"),
    ("scale_downs", "{:d}"), ("refused", "{:d}"), ("starts", "{}"),
)  # fmt: skip


def sweep_workload(cv: float, load: float, seed: int) -> Workload:
    """MMPP (on-off, 25 % on) for CV >= 1; Gamma renewal below (an MMPP cannot go under 1)."""
    kind = "mmpp" if cv >= 1 else "gamma"
    return Workload.make(kind, {"rate": load, "cv": cv}, seed)


@dataclass(frozen=True, eq=False)
class SweepResult:
    table: Comparison
    csv_path: Path | None
    figure_path: Path | None


def sweep(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    cvs: Sequence[float],
    loads: Sequence[float],
    policies: Sequence[str],
    *,
    seed: int = 0,
    duration_s: float = 300.0,
    slo_ms: float | None = None,
    placement: str | None = None,
    controller: ControllerConfig | None = None,
    out_dir: str | Path | None = None,
    progress: ProgressFn | None = None,
    max_visits: int = MAX_VISITS,
) -> SweepResult:
    """Every (CV, load, policy): a row; ``sweep.csv`` and ``sweep.png`` under ``out_dir``.

    Results are kept only as rows (not the per-request records), so a sweep's memory stays
    that of one run.
    """
    names = parse_policies(policies)
    if not cvs or not loads:
        raise SpecError("a sweep needs at least one CV (--cvs) and one load (--loads)")
    cells = [(float(c), float(ld)) for c in cvs for ld in loads]
    for c, ld in cells:
        sweep_workload(c, ld, seed)  # validate every cell before running any
    cfg = controller or ControllerConfig.model_validate({})
    total_requests = sum(math.ceil(ld * duration_s) for _, ld in cells)
    Estimate(
        total_requests, pipeline.num_stages, len(names), int(duration_s / cfg.interval_s)
    ).check(max_visits, f"a sweep of {len(cells)} (CV, load) cells x {len(names)} policies")
    initial = sum(s.min_replicas for s in pipeline.stages)
    check_fits(pipeline, cluster, placement or "quart", initial)
    runs = len(cells) * len(names)
    rows: list[Row] = []
    title = ""
    for j, (c, ld) in enumerate(cells):
        w = sweep_workload(c, ld, seed)
        pipe, arrivals, title = prepare_run(pipeline, slo_ms, w, duration_s)
        for i, name in enumerate(names):
            setup = policy_setup(name, pipe, cluster, arrivals, cfg)
            label = f"{name} cv={c:g} load={ld:g}"
            placer = make_placer(placement or setup.placer, pipe)
            r = run_one(replace(setup, name=label), pipe, arrivals, placer,
                     seed=seed, cfg=cfg, index=j * len(names) + i, runs=runs,
                     progress=progress)  # fmt: skip
            v = policy_values(name, r, not setup.fork)
            v.update(cv=c, load_rps=ld)
            # Drop the per-request arrays: a sweep keeps only its numbers.
            rows.append(Row(name, v, _light(r)))
    head = title.split(" | workload")[0]
    slo = pipeline.slo_p99_s * 1000 if slo_ms is None else slo_ms
    table = Comparison(
        f"{head} | SLO p99 {slo:.0f} ms | {duration_s:g} s per cell\n"
        f"cluster {cluster.describe()} | placer {placement or 'per policy'} | seed {seed}",
        SWEEP_COLUMNS,
        tuple(rows),
        ("workload per cell: mmpp:rate=LOAD,cv=CV (on 25 % of the time); gamma below CV 1",),
    )
    csv_path = fig = None
    if out_dir is not None:
        d = Path(out_dir)
        d.mkdir(parents=True, exist_ok=True)
        csv_path = d / "sweep.csv"
        csv_path.write_text(table.csv(), encoding="utf-8")
        (d / "sweep.txt").write_text(table.text(), encoding="utf-8")
        fig = plot_sweep(table, d / "sweep.png")
    return SweepResult(table, csv_path, fig)


def _light(r: SimResult) -> SimResult:
    empty = np.empty(0)
    return replace(
        r, arrivals=empty, latency_s=empty, rejected_at=np.empty(0, dtype=np.int32),
        stage_start=np.empty((0, 0)), stage_finish=np.empty((0, 0)), served_by=None,
        replica_events=(), scale_events=(),
    )  # fmt: skip


def plot_sweep(table: Comparison, path: str | Path) -> Path:
    """SLO attainment (top) and GPU-seconds (bottom) against CV, one panel per load."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = sorted({float(r.values["load_rps"]) for r in table.rows})  # type: ignore[arg-type]
    policies = list(dict.fromkeys(r.name for r in table.rows))
    fig, axes = plt.subplots(
        2, len(loads), figsize=(3.6 * len(loads) + 1.0, 6.0), squeeze=False, sharex=True
    )
    for col, ld in enumerate(loads):
        for pol in policies:
            pts = sorted(
                (float(r.values["cv"]), r.values["slo_attain_pct"], r.values["gpu_seconds"])  # type: ignore[arg-type]
                for r in table.rows
                if r.name == pol and r.values["load_rps"] == ld
            )
            xs = [p[0] for p in pts]
            axes[0][col].plot(xs, [p[1] for p in pts], marker="o", label=pol)
            axes[1][col].plot(xs, [p[2] for p in pts], marker="o", label=pol)
        axes[0][col].set_title(f"load {ld:g} req/s")
        axes[1][col].set_xlabel("inter-arrival CV")
        for ax in axes[:, col]:
            ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("SLO attainment (%)")
    axes[1][0].set_ylabel("GPU-seconds")
    axes[0][-1].legend(loc="lower left", fontsize="small")
    fig.suptitle(table.title.split("\n")[0], fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out

"""Replicated comparisons: every policy on N independent realisations of the workload.

One simulated run is one sample: a trace realisation (``workload/trace_rate.py``) or a
synthetic process drawn with one seed. ``replicate_policies`` runs ``compare_policies``
once per seed and reports, per policy, the mean over seeds and a 95% confidence interval
of the mean (Student's t with n - 1 degrees of freedom; ``T95``) for SLO attainment, p99
latency and GPU-seconds, plus ``plot_attainment_vs_gpu``: SLO attainment against
GPU-seconds, one point per run and one point cloud per policy.

The seeds of a replication are drawn from ``numpy.random.SeedSequence(seed)``, so two base
seeds give disjoint, independent sets and the same base seed the same set: the table is a
deterministic function of the arguments (no wall-clock figure is in it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.errors import SpecError
from quartfaas.sim.choices import MAX_VISITS
from quartfaas.sim.cluster import ClusterSpec
from quartfaas.sim.experiments.compare import ProgressEvent, ProgressFn, compare_policies
from quartfaas.sim.experiments.setups import parse_policies
from quartfaas.sim.experiments.tables import Comparison, Row
from quartfaas.sim.experiments.workloads import make_workload
from quartfaas.sim.pipelines import SimPipeline

# Two-sided 95% quantiles of Student's t, degrees of freedom 1..30 (any statistics table,
# e.g. NIST/SEMATECH e-Handbook of Statistical Methods, table 1.3.6.7.2); 1.96 beyond.
T95 = (
    12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179,
    2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064,
    2.060, 2.056, 2.052, 2.048, 2.045, 2.042,
)  # fmt: skip

METRICS = ("slo_attain_pct", "p99_ms", "gpu_seconds")

REPLICATED_COLUMNS = (
    ("policy", "{}"), ("runs", "{:d}"),
    ("slo_attain_pct", "{:.2f}"), ("slo_ci95", "±{:.2f}"),
    ("p99_ms", "{:.1f}"), ("p99_ci95", "±{:.1f}"),
    ("gpu_seconds", "{:.0f}"), ("gpu_s_ci95", "±{:.0f}"),
    ("replica_seconds", "{:.0f}"), ("refused", "{:.1f}"), ("rejected", "{:.1f}"),
)  # fmt: skip


def seeds_for(seed: int, n: int) -> list[int]:
    """``n`` independent run seeds derived from a base ``seed``."""
    if n < 1:
        raise SpecError(f"the number of seeds must be >= 1, got {n}")
    if seed < 0:
        raise SpecError(f"seed must be >= 0, got {seed}")
    return [int(s) for s in np.random.SeedSequence(seed).generate_state(n)]


def mean_ci95(values: Sequence[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% t interval (NaN half-width for one value)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if x.size == 0:
        return math.nan, math.nan
    if x.size == 1:
        return float(x[0]), math.nan
    t = T95[x.size - 2] if x.size - 1 <= len(T95) else 1.96
    return float(x.mean()), float(t * x.std(ddof=1) / math.sqrt(x.size))


@dataclass(frozen=True, eq=False)
class Replicated:
    """The summary table and every run's row (``runs[policy]``: one row per seed)."""

    table: Comparison
    runs: dict[str, list[dict[str, object]]]
    seeds: tuple[int, ...]


def replicate_policies(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    workload: str,
    policies: str | Sequence[str],
    *,
    rate: float | None = None,
    seed: int = 0,
    n_seeds: int = 5,
    duration_s: float | None = None,
    slo_ms: float | None = None,
    placement: str | None = None,
    controller: ControllerConfig | None = None,
    progress: ProgressFn | None = None,
    max_visits: int = MAX_VISITS,
) -> Replicated:
    """``compare_policies`` on ``n_seeds`` realisations of ``workload``; mean and 95% CI."""
    names = parse_policies(policies)
    seeds = seeds_for(seed, n_seeds)
    runs: dict[str, list[dict[str, object]]] = {n: [] for n in names}
    title = ""
    for j, s in enumerate(seeds):
        w = make_workload(workload, rate=rate, seed=s)

        def tick(ev: ProgressEvent, j: int = j) -> None:
            assert progress is not None
            label = f"seed {j + 1}/{len(seeds)} {ev.label}"
            progress(ProgressEvent(j * len(names) + ev.run, len(seeds) * len(names), label,
                                   ev.done, ev.total))  # fmt: skip

        t = compare_policies(
            pipeline, cluster, w, names, seed=s, duration_s=duration_s, slo_ms=slo_ms,
            placement=placement, controller=controller,
            progress=tick if progress is not None else None, max_visits=max_visits,
        )  # fmt: skip
        if not title:  # the first run's title, without what differs between seeds
            lines = t.title.split("\n")
            at = f" at {rate:g}/s" if rate is not None else ""
            lines[0] = re.sub(r" \| workload .*? \| SLO", f" | workload {workload}{at} | SLO",
                              lines[0])  # fmt: skip
            lines[1] = lines[1].rsplit(" | seed", 1)[0]
            title = "\n".join(lines)
        for row in t.rows:
            runs[row.name].append(dict(row.values))
    rows = []
    for name in names:
        vals = runs[name]
        out: dict[str, object] = {"policy": name, "runs": len(vals)}
        for metric, ci in (("slo_attain_pct", "slo_ci95"), ("p99_ms", "p99_ci95"),
                           ("gpu_seconds", "gpu_s_ci95")):  # fmt: skip
            out[metric], out[ci] = mean_ci95([float(v[metric]) for v in vals])  # type: ignore[arg-type]
        for metric in ("replica_seconds", "refused", "rejected"):
            out[metric] = float(np.mean([float(v[metric]) for v in vals]))  # type: ignore[arg-type]
        rows.append(Row(name, out, None))  # type: ignore[arg-type]
    title += f"\n{len(seeds)} seeds from base seed {seed}: mean and 95% t interval of the mean"
    notes = (
        "slo_attain_pct: share of all requests within the SLO (rejected/unfinished miss it)",
        "gpu_seconds: GPU occupancy (GPUs held x time, starting and draining included); "
        "replica_seconds: sum of replica lifetimes",
        "refused: scale actions or up-front replicas that found no free GPU, mean per run",
    )
    table = Comparison(title, REPLICATED_COLUMNS, tuple(rows), notes)
    return Replicated(table, runs, tuple(seeds))


def plot_attainment_vs_gpu(rep: Replicated, path: str | Path) -> Path:
    """SLO attainment against GPU-seconds: one point per run, one cloud per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(path)
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for i, (name, vals) in enumerate(rep.runs.items()):
        gx = [float(v["gpu_seconds"]) for v in vals]  # type: ignore[arg-type]
        sy = [float(v["slo_attain_pct"]) for v in vals]  # type: ignore[arg-type]
        color = f"C{i % 10}"
        ax.scatter(gx, sy, s=22, alpha=0.7, color=color, label=name)
        ax.scatter([np.mean(gx)], [np.mean(sy)], s=90, marker="x", color=color)
    ax.set_xlabel("GPU-seconds (GPU occupancy)")
    ax.set_ylabel("SLO attainment (%)")
    ax.set_title(f"{len(rep.seeds)} seeds per policy (x: mean)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


__all__ = [
    "METRICS",
    "REPLICATED_COLUMNS",
    "T95",
    "Replicated",
    "mean_ci95",
    "plot_attainment_vs_gpu",
    "replicate_policies",
    "seeds_for",
]

"""Tables and plots of simulation results (``sim/run.SimResult``), one row per policy.

``summary_table`` is plain fixed-width text whose content depends only on the results
(no wall-clock figures), so two runs with the same seed give byte-identical tables; the
determinism test relies on it. Plots use matplotlib's Agg backend (no display): latency
CDF per policy and GPUs held over time per policy, plus replicas per stage for one run.

Latency percentiles are over completed requests; SLO attainment counts rejected and
unfinished requests as misses, so a policy cannot look good by dropping load.
``gpu_seconds`` is GPU occupancy (GPUs held x time); ``replica_seconds`` the sum of replica
lifetimes (equal on an exclusive cluster without CPU-only stages).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from quartfaas.sim.run import SimResult

_COLUMNS = (
    ("policy", "{}"),
    ("requests", "{:d}"),
    ("completed", "{:d}"),
    ("rejected", "{:d}"),
    ("unfinished", "{:d}"),
    ("p50_ms", "{:.1f}"),
    ("p99_ms", "{:.1f}"),
    ("slo_ms", "{:.0f}"),
    ("slo_attain_pct", "{:.2f}"),
    ("gpu_seconds", "{:.0f}"),
    ("replica_seconds", "{:.0f}"),
    ("scale_ups", "{:d}"),
    ("scale_downs", "{:d}"),
    ("starts", "{}"),
)


def summary_row(r: SimResult) -> dict[str, object]:
    lat = r.latency_s[~np.isnan(r.latency_s)]
    p50, p99 = (np.percentile(lat, [50, 99]) * 1000.0) if lat.size else (np.nan, np.nan)
    tiers = r.starts_by_tier
    return {
        "policy": r.policy,
        "requests": r.n_requests,
        "completed": r.completed,
        "rejected": r.rejected,
        "unfinished": r.unfinished,
        "p50_ms": float(p50),
        "p99_ms": float(p99),
        "slo_ms": r.pipeline.slo_p99_s * 1000.0,
        "slo_attain_pct": 100.0 * r.slo_attainment(),
        "gpu_seconds": r.gpu_seconds,
        "replica_seconds": r.replica_seconds,
        "refused_initial": r.refused_initial,
        "scale_ups": sum(1 for e in r.scale_events if e.action == "scale-up"),
        "scale_downs": sum(1 for e in r.scale_events if e.action == "scale-down"),
        "starts": " ".join(f"{k}:{v}" for k, v in tiers.items()) or "-",
    }


def summary_table(results: Sequence[SimResult]) -> str:
    """Fixed-width text table, one line per result, deterministic for equal results."""
    header = [name for name, _ in _COLUMNS]
    rows = [[fmt.format(summary_row(r)[name]) for name, fmt in _COLUMNS] for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    title = ""
    if results:
        r0 = results[0]
        title = (
            f"pipeline {r0.pipeline.name} ({r0.pipeline.num_stages} stages) on cluster "
            f"{r0.cluster}, seed {r0.seed}, tick {r0.interval_s:g} s\n"
        )
    lines = ["  ".join(h.rjust(w) for h, w in zip(header, widths, strict=True))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return title + "\n".join(lines) + "\n"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_latency_cdf(results: Sequence[SimResult], path: str | Path) -> Path:
    """End-to-end latency CDF per policy, with the SLO as a vertical line."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in results:
        lat = np.sort(r.latency_s[~np.isnan(r.latency_s)]) * 1000.0
        if lat.size:
            # Fractions of *all* requests, so drops show as a curve that never reaches 1.
            ax.step(lat, np.arange(1, lat.size + 1) / r.n_requests, where="post", label=r.policy)
    if results:
        ax.axvline(results[0].pipeline.slo_p99_s * 1000.0, color="grey", ls="--", label="SLO")
    ax.set_xlabel("end-to-end latency (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_ylim(0, 1.01)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_replicas(results: Sequence[SimResult], path: str | Path) -> Path:
    """GPUs held (ready + starting + draining replicas, all stages) over time per policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for r in results:
        held = (r.ready + r.starting + r.draining).sum(axis=1)
        ax.step(r.tick_times, held, where="post", label=r.policy)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("replicas (GPUs held)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def plot_stage_replicas(result: SimResult, path: str | Path) -> Path:
    """Ready replicas per stage over time for one run (one line per stage)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for k, st in enumerate(result.pipeline.stages):
        ax.step(result.tick_times, result.ready[:, k], where="post", lw=0.8, label=st.name)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("ready replicas")
    ax.set_title(f"{result.policy}: {result.pipeline.name}")
    ax.grid(alpha=0.3)
    if result.pipeline.num_stages <= 8:
        ax.legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    out = Path(path)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def write_report(results: Sequence[SimResult], out_dir: str | Path) -> dict[str, Path]:
    """``summary.txt``, ``latency_cdf.png`` and ``replicas.png`` under ``out_dir``."""
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    table = d / "summary.txt"
    table.write_text(summary_table(results), encoding="utf-8")
    return {
        "summary": table,
        "latency_cdf": plot_latency_cdf(results, d / "latency_cdf.png"),
        "replicas": plot_replicas(results, d / "replicas.png"),
    }

"""Plots of a ``quartfaas run`` report directory (matplotlib, Agg backend, PNG).

- ``latency.png``: each request's latency against its send time, a rolling p99 over 5 s,
  the SLO line, and errors marked on the time axis;
- ``replicas.png``: ready replicas per stage over time, with the request rate;
- ``queues.png``: queue length per stage over time.

Inputs are the files ``jobs/run.py`` wrote (``requests.csv``, ``timeline.csv``), so a
report can be re-plotted later with ``write_plots(DIR)``.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

ROLL_S = 5.0


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(x: str | None) -> float | None:
    if x is None or x == "":
        return None
    try:
        return float(x)
    except ValueError:
        return None


def rolling_quantile(
    t: np.ndarray, v: np.ndarray, q: float, width_s: float
) -> tuple[np.ndarray, np.ndarray]:
    """``q``-quantile of ``v`` over windows of ``width_s`` ending at each second."""
    if t.size == 0:
        return np.array([]), np.array([])
    order = np.argsort(t)
    t, v = t[order], v[order]
    grid = np.arange(np.floor(t[0]) + width_s, np.ceil(t[-1]) + 1.0, 1.0)
    out = []
    for g in grid:
        lo, hi = np.searchsorted(t, g - width_s), np.searchsorted(t, g)
        out.append(np.quantile(v[lo:hi], q) if hi > lo else np.nan)
    return grid, np.asarray(out)


def write_plots(out_dir: Path, *, slo_ms: float) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    reqs = _read_csv(out_dir / "requests.csv")
    timeline = _read_csv(out_dir / "timeline.csv")
    sent = np.array([_float(r.get("sent_s")) or _float(r.get("scheduled_s")) or 0.0 for r in reqs])
    lat = np.array([(_float(r.get("latency_s")) or np.nan) * 1000.0 for r in reqs])
    ok = np.array([r.get("outcome") == "ok" for r in reqs], dtype=bool)
    paths: list[Path] = []

    fig, ax = plt.subplots(figsize=(10, 4.5))
    ax.scatter(sent[ok], lat[ok], s=4, alpha=0.35, color="tab:gray", label="request")
    g, p99 = rolling_quantile(sent[ok], lat[ok], 0.99, ROLL_S)
    ax.plot(g, p99, color="tab:blue", lw=1.8, label=f"p99 over {ROLL_S:.0f} s")
    ax.axhline(slo_ms, color="tab:red", ls="--", lw=1.2, label=f"SLO p99 {slo_ms:.0f} ms")
    if (~ok).any():
        ax.scatter(sent[~ok], np.full((~ok).sum(), slo_ms * 0.05), marker="x", color="tab:red",
                   s=14, label=f"errors ({int((~ok).sum())})")  # fmt: skip
    ax.set_yscale("log")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("latency (ms)")
    ax.set_title("End-to-end latency")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "latency.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    stages: dict[str, dict[str, list[Any]]] = {}
    for r in timeline:
        d = stages.setdefault(r["stage"], {"t": [], "ready": [], "queue": [], "starting": []})
        d["t"].append(float(r["t_s"]))
        d["ready"].append(int(r["ready"]))
        d["starting"].append(int(r["starting"]))
        d["queue"].append(int(r["queue"]))

    fig, ax = plt.subplots(figsize=(10, 4.5))
    for name, d in stages.items():
        ax.step(d["t"], d["ready"], where="post", lw=1.6, label=f"{name} ready")
    ax.set_xlabel("time (s)")
    ax.set_ylabel("ready replicas")
    ax.set_title("Replicas per stage")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax2 = ax.twinx()
    if sent.size:
        bins = np.arange(0.0, float(sent.max()) + 1.0, 1.0)
        rate, edges = np.histogram(sent, bins=bins)
        ax2.plot(edges[:-1], rate, color="tab:gray", alpha=0.5, lw=1, label="requests/s")
        ax2.set_ylabel("requests / s")
    lines = ax.get_legend_handles_labels()
    lines2 = ax2.get_legend_handles_labels()
    ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], loc="upper right", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "replicas.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(10, 3.5))
    for name, d in stages.items():
        ax.plot(d["t"], d["queue"], lw=1.2, label=name)
    ax.set_xlabel("time (s)")
    ax.set_ylabel("queued requests")
    ax.set_title("Queue length per stage")
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    paths.append(out_dir / "queues.png")
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
    return paths

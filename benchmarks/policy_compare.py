"""Policy and placement comparison: bert-21b ME-21 on the paper cluster, two bursty workloads.

The issue's closing tables. For each workload - the Azure LLM code trace rescaled to
``--rate`` requests/s on average (repeated to cover ``--duration``) and an on-off MMPP
with the same mean rate and inter-arrival CV 4 - it prints:

1. one row per scaling policy (quart, the seven baselines, the three Quart ablations),
   every policy on Quart's cache-aware placer: p50/p99, SLO attainment, GPU-seconds,
   scale events, replica starts per cache tier (``sim/experiments.compare_policies``);
2. one row per placer under Quart's scaling: host-memory hit ratio of replica starts,
   p50/p99 start seconds, end-to-end p99, SLO attainment, GPU-seconds
   (``compare_placements``).

Same seed, same tables (the run is deterministic). ``--out DIR`` also writes each table
as txt/csv/json and the latency-CDF and replicas plots.
Usage: ``python benchmarks/policy_compare.py [--rate 200] [--duration 600] [--seed 1]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from quartfaas.sim import experiments as ex
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.report import plot_latency_cdf, plot_replicas


def _progress(ev: ex.ProgressEvent) -> None:
    if ev.done == ev.total:
        print(f"  [{ev.run + 1}/{ev.runs}] {ev.label} done", file=sys.stderr, flush=True)


def _save(table: ex.Comparison, out: Path | None, stem: str) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.txt").write_text(table.text(), encoding="utf-8")
    (out / f"{stem}.csv").write_text(table.csv(), encoding="utf-8")
    (out / f"{stem}.json").write_text(table.json(), encoding="utf-8")
    plot_latency_cdf(table.results, out / f"{stem}_latency_cdf.png")
    plot_replicas(table.results, out / f"{stem}_replicas.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pipeline", default="bert-21b-me-21")
    ap.add_argument("--cluster", default="paper")
    ap.add_argument("--rate", type=float, default=200.0, help="mean requests/s")
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of arrivals")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--placers", default="quart,random,least-loaded,bin-pack,locality")
    ap.add_argument("--no-placements", action="store_true", help="skip the placer tables")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    pipe = pipeline_preset(args.pipeline)
    cluster = cluster_preset(args.cluster)
    workloads = {
        "azure-code": ex.make_workload("azure-code", rate=args.rate, seed=args.seed),
        "mmpp-cv4": ex.make_workload("mmpp:cv=4", rate=args.rate, seed=args.seed),
    }
    for tag, w in workloads.items():
        t0 = time.perf_counter()
        table = ex.compare_policies(
            pipe, cluster, w, ex.policy_names(), seed=args.seed, duration_s=args.duration,
            progress=_progress,
        )  # fmt: skip
        print(f"== policies, {tag} ({time.perf_counter() - t0:.0f} s wall)\n{table.text()}")
        _save(table, args.out, f"policies_{tag}")
        if args.no_placements:
            continue
        t0 = time.perf_counter()
        placed = ex.compare_placements(
            pipe, cluster, w, args.placers.split(","), seed=args.seed,
            duration_s=args.duration, progress=_progress,
        )  # fmt: skip
        print(f"== placers, {tag} ({time.perf_counter() - t0:.0f} s wall)\n{placed.text()}")
        _save(placed, args.out, f"placers_{tag}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

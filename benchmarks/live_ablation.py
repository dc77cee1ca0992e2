"""Quart on the live runtime, with and without its smoother and CPU compensator.

Runs ``quartfaas run`` (the embedded runtime with real model stages) once per
configuration on the same bursty workload and prints p50/p99, SLO attainment and
replica-seconds side by side, plus two references: the corrector alone and static
minimum provisioning. Each configuration is a fresh runtime; the order is interleaved
across repeats so drifting background load on the shared vCPUs hits all alike.

    python benchmarks/live_ablation.py [--repeats 1] [--workload W] [--out runs/ablation]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

from quartfaas.jobs.run import DEFAULT_SPEC, DEFAULT_WORKLOAD, RunConfig, run_job
from quartfaas.spec import load_spec
from quartfaas.workload import Workload

CONFIGS: dict[str, dict[str, Any]] = {
    "quart": {"policy": "quart"},
    "quart --no-smoother": {"policy": "quart", "smoother": False},
    "quart --no-compensator": {"policy": "quart", "compensator": False},
    "quart-corrector": {"policy": "quart-corrector"},
    "static (min replicas)": {"policy": "none"},
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    ap.add_argument("--workload", default=DEFAULT_WORKLOAD)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--out", type=Path, default=Path("runs/ablation"))
    args = ap.parse_args()
    spec = load_spec(args.spec)
    rows: dict[str, list[dict[str, Any]]] = {k: [] for k in CONFIGS}
    for rep in range(args.repeats):
        for name, kw in CONFIGS.items():
            out = args.out / f"r{rep}-{name.replace(' ', '').replace('(', '').replace(')', '')}"
            print(f"== {name} (repeat {rep + 1}/{args.repeats})", file=sys.stderr, flush=True)
            cfg = RunConfig(spec=spec, workload=Workload.parse(args.workload), out_dir=out,
                            progress=False, **kw)  # fmt: skip
            rows[name].append(run_job(cfg, log=lambda m: print(m, file=sys.stderr)))
    print(f"\n{args.workload} on {spec.name}, SLO p99 {spec.slo.p99_ms:.0f} ms, "
          f"median of {args.repeats} run(s)")  # fmt: skip
    print(f"{'config':<26}{'p50 ms':>9}{'p99 ms':>9}{'SLO att.':>10}{'replica-s':>11}"
          f"{'errors':>8}")  # fmt: skip
    table = {}
    for name, runs in rows.items():
        med = {
            "p50": statistics.median(r["load"]["latency_p50_s"] * 1000 for r in runs),
            "p99": statistics.median(r["load"]["latency_p99_s"] * 1000 for r in runs),
            "slo": statistics.median(r["load"]["slo_attainment"] * 100 for r in runs),
            "rs": statistics.median(sum(r["replica_seconds"].values()) for r in runs),
            "err": statistics.median(sum(r["load"]["errors"].values()) for r in runs),
        }
        table[name] = med
        print(f"{name:<26}{med['p50']:>9.1f}{med['p99']:>9.1f}{med['slo']:>9.1f}%"
              f"{med['rs']:>11.0f}{med['err']:>8.0f}")  # fmt: skip
    (args.out / "ablation.json").write_text(json.dumps(table, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

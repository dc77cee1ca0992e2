"""Live policy comparison: every autoscaler on the same spec and workload, interleaved.

Each run is its own ``quartfaas run SPEC --policy P`` process (a fresh runtime: gateway,
worker processes, parameter cache, controller). Policies are interleaved round-robin over
the repeats, so drifting background load on shared vCPUs hits all of them alike. Prints,
per policy, the median and min-max of SLO attainment, p99 latency and replica-seconds,
with the conditions (spec, workload, repeats, the 1-min load average around each run).

    python benchmarks/live_compare.py [--spec emulated-bert21b] [--repeats 3]
        [--workload 'trace:azure-code,start=520,end=580,rate=4'] [--duration D]
        [--policies quart,knative,hpa,openfaas-pro,ray,static] [--out runs/compare] [--resume]

``--resume`` keeps the runs already saved in ``OUT/runs.json`` (e.g. from an interrupted
or shorter session) and runs only the missing (repeat, policy) pairs.

``static`` means the spec's minimum replicas with the controller off (``--policy none``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

POLICIES = ("quart", "knative", "hpa", "openfaas-pro", "ray", "static")
DEFAULT_SPEC = "emulated-bert21b"
DEFAULT_WORKLOAD = "trace:azure-code,start=520,end=580,rate=4"


def _cli() -> list[str]:
    exe = shutil.which("quartfaas") or str(Path(sys.executable).parent / "quartfaas")
    return [exe] if Path(exe).exists() else [sys.executable, "-m", "quartfaas.cli"]


def run_one(
    spec: str, policy: str, workload: str, duration: float | None, out: Path
) -> dict[str, Any]:
    cmd = [*_cli(), "run", spec, "--policy", "none" if policy == "static" else policy,
           "--workload", workload, "--out", str(out), "--no-progress"]  # fmt: skip
    if duration is not None:
        cmd += ["--duration", str(duration)]
    load_before = os.getloadavg()[0]
    t0 = time.monotonic()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.monotonic() - t0
    summary = out / "summary.json"
    if proc.returncode != 0 or not summary.is_file():
        raise RuntimeError(f"{' '.join(cmd)} failed (rc {proc.returncode}):\n{proc.stderr[-2000:]}")
    s = json.loads(summary.read_text())
    return {
        "policy": policy,
        "slo": s["load"]["slo_attainment"] * 100,
        "p99_ms": s["load"]["latency_p99_s"] * 1000,
        "replica_s": sum(s["replica_seconds"].values()),
        "errors": sum(s["load"]["errors"].values()),
        "sent": s["load"]["sent"],
        "load": (load_before + os.getloadavg()[0]) / 2,
        "wall_s": wall,
        "slo_ms": s["slo_p99_ms"],
    }


def _fmt(vals: list[float], spec: str) -> str:
    med = statistics.median(vals)
    return f"{med:{spec}} [{min(vals):{spec}}-{max(vals):{spec}}]"


def table(rows: list[dict[str, Any]], policies: list[str]) -> str:
    lines = [f"{'policy':<14}{'SLO att. % med [min-max]':>28}{'p99 ms med [min-max]':>28}"
             f"{'replica-s med [min-max]':>28}{'errors':>8}"]  # fmt: skip
    for p in policies:
        rs = [r for r in rows if r["policy"] == p]
        if not rs:
            continue
        lines.append(
            f"{p:<14}{_fmt([r['slo'] for r in rs], '.1f'):>28}"
            f"{_fmt([r['p99_ms'] for r in rs], '.0f'):>28}"
            f"{_fmt([r['replica_s'] for r in rs], '.0f'):>28}{sum(r['errors'] for r in rs):>8}"
        )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spec", default=DEFAULT_SPEC, help="spec file or bundled example name")
    ap.add_argument("--workload", default=DEFAULT_WORKLOAD)
    ap.add_argument("--duration", type=float, default=None, help="seconds (synthetic workloads)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--policies", default=",".join(POLICIES))
    ap.add_argument("--out", type=Path, default=Path("runs/compare"))
    ap.add_argument("--resume", action="store_true",
                    help="keep the runs already in OUT/runs.json and add only missing ones")  # fmt: skip
    args = ap.parse_args()
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    rows: list[dict[str, Any]] = []
    args.out.mkdir(parents=True, exist_ok=True)
    saved = args.out / "runs.json"
    if args.resume and saved.is_file():
        rows = [r for r in json.loads(saved.read_text()) if r["policy"] in policies]
    done = {(r["repeat"], r["policy"]) for r in rows}
    for rep in range(args.repeats):
        for p in policies:
            if (rep, p) in done:
                continue
            print(f"== {p} (repeat {rep + 1}/{args.repeats})", file=sys.stderr, flush=True)
            r = run_one(args.spec, p, args.workload, args.duration, args.out / f"r{rep}-{p}")
            r["repeat"] = rep
            rows.append(r)
            print(f"   SLO {r['slo']:.1f}% p99 {r['p99_ms']:.0f} ms replica-s "
                  f"{r['replica_s']:.0f} load {r['load']:.2f} wall {r['wall_s']:.0f} s",
                  file=sys.stderr, flush=True)  # fmt: skip
            saved.write_text(json.dumps(rows, indent=2))
    loads = [r["load"] for r in rows]
    print(f"\nspec {args.spec} (SLO p99 {rows[0]['slo_ms']:.0f} ms), workload {args.workload}"
          + (f", duration {args.duration:g} s" if args.duration else "")
          + f"; {args.repeats} interleaved repeat(s) per policy, fresh runtime per run; "
          f"1-min load average {min(loads):.2f}-{max(loads):.2f} on {os.cpu_count()} CPUs")  # fmt: skip
    print(table(rows, policies))
    return 0


if __name__ == "__main__":
    sys.exit(main())

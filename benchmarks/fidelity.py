"""Fidelity benchmark: live runtime vs simulator on longer runs and several loads.

For each rate: a *calibration* run (Poisson arrivals, seed ``--seed``) of ``--duration``
seconds of the fidelity pipeline (``sim/fidelity.py``: three sleep stages, fixed replicas,
controller off) on this machine measures the per-stage profile; a *check* run with other
arrivals (seed ``--seed + 1000``) is then compared with the simulator parameterised from
the spec and that profile (not fitted to the checked run, issue #11 item 7), and with a
replay of the check run's own measured per-visit work (the model alone). One table row
per rate: live and simulated p50/p99, their relative errors, the measured per-hop and
per-request overheads, the generator's lateness (a busy host shows there first). The bar
is 15 % on p50 and p99 of the calibrated row. ``--out`` writes the rows as CSV.

**Controlled-run check** (``--checks controlled``; ``sim/fidelity_control.py``): the
controller on (the spec's policy, ``ControlLoop`` live and in the simulator), the
emulated-accelerator example on a bursty trace slice, the simulator fed only the spec and
a separate calibration run (controller off, Poisson ``--calib-rate`` for
``--calib-duration`` s, seed ``--seed``; it also measures replica start delays). Prints
SLO attainment and replica-seconds live against simulated, every simulator input, and
pass/fail against 5 points / 15 %. The default runs both checks, the latency one first.

Usage: ``python benchmarks/fidelity.py [--checks latency,controlled] [--duration 120]
[--rates 33,40] [--seed 1] [--spec emulated-bert21b] [--workload TRACE] [--tail 30]``.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import os
import sys
from pathlib import Path

from quartfaas.sim.fidelity import DEFAULT_RATE, compare, fidelity_spec, run_live, utilisation
from quartfaas.sim.fidelity_live import check_controlled, emulated_spec
from quartfaas.workload.synthetic import poisson

CONTROLLED_WORKLOAD = "trace:azure-code,start=520,end=580,rate=4"
SLO_POINTS = 5.0  # controlled run: SLO attainment within 5 percentage points
REPLICA_SECONDS_REL = 0.15  # ... and replica-seconds within 15 %

COLUMNS = (
    "rate", "util_max", "requests", "failed", "live_p50_ms", "live_p99_ms", "sim_p50_ms",
    "sim_p99_ms", "err_p50", "err_p99", "replay_p99_ms", "replay_err_p99", "hop_ms",
    "overhead_ms", "lateness_p99_ms",
)  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checks", default="latency,controlled", help="comma list of both")
    ap.add_argument("--duration", type=float, default=120.0, help="seconds of load per rate")
    ap.add_argument("--rates", default=f"{DEFAULT_RATE:g},40", help="requests/s, comma list")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--tolerance", type=float, default=0.15)
    ap.add_argument("--out", type=Path, default=None, help="CSV of the rows")
    ap.add_argument("--stages", type=int, default=None,
                    help="controlled: the example's first N stages (default all 8)")  # fmt: skip
    ap.add_argument("--workload", default=CONTROLLED_WORKLOAD, help="controlled: the workload")
    ap.add_argument("--calib-rate", type=float, default=8.0, help="controlled: requests/s")
    ap.add_argument("--calib-replicas", type=int, default=1,
                    help="controlled: replicas a stage in the calibration")  # fmt: skip
    ap.add_argument("--calib-duration", type=float, default=60.0, help="controlled: seconds")
    ap.add_argument("--tail", type=float, default=30.0,
                    help="controlled: seconds after the last send, counted too")  # fmt: skip
    ap.add_argument("--sim-seeds", type=int, default=5, help="controlled: simulator seeds")
    args = ap.parse_args()
    checks = {c.strip() for c in args.checks.split(",") if c.strip()}
    if not checks or checks - {"latency", "controlled"}:
        ap.error(f"--checks takes latency and/or controlled, got {args.checks!r}")
    print(f"host: {os.cpu_count()} CPUs, 1/5/15-min load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} at start", flush=True)  # fmt: skip
    bad_latency = latency_check(args) if "latency" in checks else False
    bad_controlled = controlled_check(args) if "controlled" in checks else False
    print(f"1/5/15-min load average {' '.join(f'{x:.2f}' for x in os.getloadavg())} at the end")
    return 1 if bad_latency or bad_controlled else 0


def controlled_check(args: argparse.Namespace) -> bool:
    """The controlled-run check; True when it failed."""
    spec = emulated_spec(args.stages, name="fidctl")
    report = check_controlled(
        spec, args.workload, seed=args.seed, calib_rate=args.calib_rate,
        calib_replicas=args.calib_replicas,
        calib_duration_s=args.calib_duration, tail_s=args.tail,
        sim_seeds=range(args.sim_seeds), progress=lambda m: print(f"-- {m}", flush=True),
    )  # fmt: skip
    print(report.text(SLO_POINTS, REPLICA_SECONDS_REL), flush=True)
    if not report.within(SLO_POINTS, REPLICA_SECONDS_REL):
        print("controlled-run check outside 5 points / 15 % (or the controller did not act)",
              file=sys.stderr)  # fmt: skip
        return True
    return False


def latency_check(args: argparse.Namespace) -> bool:
    """The fixed-replica latency check (p50/p99 within ``--tolerance``); True when it failed."""
    spec = fidelity_spec(name="fidbench")
    rows = []
    for rate in (float(x) for x in args.rates.split(",")):
        calib = asyncio.run(run_live(spec, poisson(rate, args.duration, seed=args.seed)))
        live = asyncio.run(run_live(spec, poisson(rate, args.duration, seed=args.seed + 1000)))
        rep = compare(spec, live, calibration=calib)
        print(f"-- rate {rate:g}/s, {args.duration:g} s, profile from the calibration run "
              f"(seed {args.seed}), checked on seed {args.seed + 1000}\n{rep.text()}",
              flush=True)  # fmt: skip
        rows.append(
            {
                "rate": rate,
                "util_max": max(utilisation(spec, rate).values()),
                "requests": rep.requests,
                "failed": rep.failed,
                "live_p50_ms": rep.live_p50_s * 1e3,
                "live_p99_ms": rep.live_p99_s * 1e3,
                "sim_p50_ms": rep.sim_p50_s * 1e3,
                "sim_p99_ms": rep.sim_p99_s * 1e3,
                "err_p50": rep.err_p50,
                "err_p99": rep.err_p99,
                "replay_p99_ms": rep.replay_p99_s * 1e3,
                "replay_err_p99": rep.replay_err_p99,
                "hop_ms": 1e3 * sum(p.hop_mean_s for p in rep.profile) / len(rep.profile),
                "overhead_ms": rep.entry_overhead_s * 1e3,
                "lateness_p99_ms": rep.lateness_p99_s * 1e3,
                "ok": rep.within(args.tolerance),
            }
        )
    fmt = {"rate": "{:g}", "requests": "{:d}", "failed": "{:d}", "util_max": "{:.2f}",
           "err_p50": "{:.1%}", "err_p99": "{:.1%}", "replay_err_p99": "{:.1%}"}  # fmt: skip
    cells = [[fmt.get(c, "{:.1f}").format(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
    if args.out is not None:
        with args.out.open("w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, [*COLUMNS, "ok"])
            w.writeheader()
            w.writerows(rows)
    bad = [r["rate"] for r in rows if not r["ok"]]
    if bad:
        print(f"outside {args.tolerance:.0%} (or with failures) at rates {bad}", file=sys.stderr)
    return bool(bad)


if __name__ == "__main__":
    raise SystemExit(main())

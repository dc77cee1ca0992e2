"""Does a long-running Quart controller's memory grow? Many ticks in one process.

A live controller ticks every few seconds for days, in the gateway's process
(``live_control.py``); a cache without a bound or state that keeps every tick's objects
would show up as memory that grows with the ticks. This runs ``--ticks`` full Quart ticks
(the default predictor, state threaded through as the control loop does, ``now``
moving one second a tick) over ``controller_tick.build_snapshots`` pipelines of
``--stages`` stages from ``--seeds`` different seeds (so loads, services and counts keep
changing), and prints the resident set size every ``--every`` ticks. After the first
``--warmup`` ticks (kernels loaded, caches filled) it also traces Python allocations
(``tracemalloc``) and prints the sites whose allocations since then are still held at the
end: the last ticks' state (tens of KB) when nothing grows, and a growing cache or list on
top when something does. Exits 1 if the resident set grew by more than ``--max-growth-mb`` between
the end of the warm-up and the last tick.

    python benchmarks/controller_soak.py [--ticks 12000] [--stages 64] [--seeds 10]
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import sys
import time
import tracemalloc
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from controller_tick import build_snapshots
from quartfaas.control.config import ControllerConfig
from quartfaas.control.quart import QuartPolicy


def rss_mb() -> float:
    """This process's resident set now (``/proc/self/statm``; Linux)."""
    with open("/proc/self/statm", encoding="ascii") as f:
        pages = int(f.read().split()[1])
    return pages * 4096 / 2**20


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ticks", type=int, default=12_000)
    ap.add_argument("--stages", type=int, default=64)
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2_000)
    ap.add_argument("--every", type=int, default=2_000)
    ap.add_argument("--max-growth-mb", type=float, default=16.0)
    args = ap.parse_args(argv)
    if args.ticks < 1 or args.stages < 1 or args.seeds < 1 or args.every < 1:
        ap.error("--ticks, --stages, --seeds and --every must be at least 1")
    if not 1 <= args.warmup < args.ticks:
        ap.error("--warmup must be at least 1 (the first tick loads the kernels) and below --ticks")
    snaps = [s for seed in range(args.seeds) for s in build_snapshots(args.stages, 240, seed)]
    policy = QuartPolicy(ControllerConfig(), host_cores=16)
    state = policy.initial_state(snaps[0])
    print(f"{args.ticks} ticks, {args.stages} stages, snapshots of {args.seeds} seeds "
          f"({len(snaps)}), predictor: {policy.predictor_reason}")  # fmt: skip
    base_rss = 0.0
    base: tracemalloc.Snapshot | None = None
    t0 = time.perf_counter()
    for k in range(args.ticks):
        snap = dataclasses.replace(snaps[k % len(snaps)], now=1000.0 + k)
        _, state = policy.decide(snap, state)
        if k + 1 == args.warmup:
            gc.collect()
            base_rss = rss_mb()
            tracemalloc.start()
            base = tracemalloc.take_snapshot()
        if (k + 1) % args.every == 0 or k + 1 == args.ticks:
            gc.collect()
            print(f"tick {k + 1:>7}: RSS {rss_mb():8.1f} MB  "
                  f"({time.perf_counter() - t0:.0f} s)", flush=True)  # fmt: skip
    gc.collect()
    end_rss = rss_mb()
    assert base is not None  # taken at the end of the warm-up, which is before the last tick
    grown = tracemalloc.take_snapshot().compare_to(base, "lineno")
    tracemalloc.stop()
    print("allocated after the warm-up and still held at the end (top 5 sites):")
    for stat in grown[:5]:
        print(f"  {stat}")
    growth = end_rss - base_rss
    verdict = "PASS" if growth <= args.max_growth_mb else "FAIL"
    print(f"RSS after the warm-up {base_rss:.1f} MB, at the end {end_rss:.1f} MB: "
          f"{growth:+.1f} MB over {args.ticks - args.warmup} ticks "
          f"(limit {args.max_growth_mb:g}) {verdict}")  # fmt: skip
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

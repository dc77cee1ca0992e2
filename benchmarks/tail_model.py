"""The end-to-end tail model against the simulator's engine on tandem pipelines.

For every case of ``sim.tailcheck.default_grid()`` (Poisson, hyper-exponential CV 3 and
on-off MMPP CV 3 arrivals; utilisation 0.3/0.6/0.9; 3-5 stages of 1-4 replicas;
deterministic and exponential service), or of ``validation_grid()`` with ``--validation``
(utilisation 0.45/0.75/0.85, other shapes, CV 2 and 4, Gamma service, other seeds), it
simulates the pipeline with fixed replicas over ``--seeds`` seeds and prints the p99 of
the pooled latencies, the range of the per-seed p99s (the simulation's own noise), the
model's p99 (burst factor = index of dispersion over the modelled latency), the ratio, and
the ratio with the inter-arrival SCV alone. Target (issue 12): ratio in [0.95, 1.10].

    PYTHONPATH=src python benchmarks/tail_model.py [--requests 200000] [--seeds 5] [--validation]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from quartfaas.sim.tailcheck import default_grid, run_pooled, validation_grid


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, default=5)
    ap.add_argument("--validation", action="store_true", help="the second grid")
    args = ap.parse_args()
    grid = validation_grid() if args.validation else default_grid()
    print(
        f"{'case':<50} {'sim p99':>8} {'seed range':>13} {'model':>8} {'ratio':>6} "
        f"{'scv-only':>8}  ok"
    )
    ratios = []
    for case in grid:
        p = run_pooled(replace(case, requests=args.requests), args.seeds)
        r = p.result
        ratios.append(r.ratio)
        ok = "yes" if 0.95 <= r.ratio <= 1.10 else ("UNDER" if r.ratio < 0.95 else "over")
        print(
            f"{case.label:<50} {r.simulated:>8.3f} {p.seed_low:>6.3f}-{p.seed_high:<6.3f} "
            f"{r.modelled:>8.3f} {r.ratio:>6.2f} {r.modelled_scv_only / r.simulated:>8.2f}  {ok}",
            flush=True,
        )
    inside = sum(0.95 <= x <= 1.10 for x in ratios)
    under = sum(x < 0.95 for x in ratios)
    print(
        f"\n{inside}/{len(ratios)} within [0.95, 1.10], {under} under 0.95; ratio min "
        f"{min(ratios):.2f}, median {statistics.median(ratios):.2f}, max {max(ratios):.2f}"
    )


if __name__ == "__main__":
    main()

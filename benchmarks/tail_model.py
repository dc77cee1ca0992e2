"""The end-to-end tail model against the simulator's engine on tandem pipelines.

For every case of ``sim.tailcheck.default_grid()`` (Poisson, hyper-exponential CV 3 and
on-off MMPP CV 3 arrivals; utilisation 0.3/0.6/0.9; 3-5 stages of 1-4 replicas;
deterministic and exponential service) it simulates the pipeline with fixed replicas and
prints the simulated p99, the model's p99 (burst factor = index of dispersion over the
modelled latency) and the ratio, and the ratio with the inter-arrival SCV alone. Target
(issue 12): ratio in [0.95, 1.10].

    PYTHONPATH=src python benchmarks/tail_model.py [--requests 200000] [--seeds 1]
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace

from quartfaas.sim.tailcheck import TailResult, default_grid, run_case


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200_000)
    ap.add_argument("--seeds", type=int, default=1)
    args = ap.parse_args()
    print(f"{'case':<52} {'sim p99':>8} {'model':>8} {'ratio':>6} {'scv-only':>8}  ok")
    results: list[TailResult] = []
    for case in default_grid():
        sims, models, bases = [], [], []
        for seed in range(args.seeds):
            r = run_case(replace(case, requests=args.requests, seed=seed))
            sims.append(r.simulated)
            models.append(r.modelled)
            bases.append(r.modelled_scv_only)
        r = TailResult(case, statistics.mean(sims), statistics.mean(models), statistics.mean(bases))
        results.append(r)
        ok = "yes" if 0.95 <= r.ratio <= 1.10 else "NO"
        print(
            f"{case.label:<52} {r.simulated:>8.3f} {r.modelled:>8.3f} {r.ratio:>6.2f} "
            f"{r.modelled_scv_only / r.simulated:>8.2f}  {ok}",
            flush=True,
        )
    ratios = [r.ratio for r in results]
    inside = sum(0.95 <= x <= 1.10 for x in ratios)
    print(
        f"\n{inside}/{len(ratios)} within [0.95, 1.10]; ratio min {min(ratios):.2f}, "
        f"median {statistics.median(ratios):.2f}, max {max(ratios):.2f}"
    )


if __name__ == "__main__":
    main()

"""How long ``control/planner.plan_replicas`` takes for pipelines of 4-64 stages.

Each pipeline has stages with service means 5-80 ms (mixed deterministic, Gamma and
exponential service, costs 1-4 per replica) at 200 req/s and an SLO of 1.5x the modelled
p99 at the stability minimum plus a margin, so every plan has work to do. Prints the
median and worst of ``--repeat`` runs per size, the replicas and the outcome; the target
is a 64-stage plan in < 5 ms (issue 12).

    PYTHONPATH=src python benchmarks/planner_time.py
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from quartfaas.control.corrector.planner import plan_replicas
from quartfaas.control.corrector.tailmodel import StageLoad


def pipeline(k: int, seed: int, rate: float = 200.0) -> list[StageLoad]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(k):
        mean = float(rng.uniform(0.005, 0.08))
        scv = float(rng.choice([0.0, 0.3, 1.0]))
        out.append(
            StageLoad(
                f"s{i}",
                rate,
                mean,
                service_scv=scv,
                arrival_scv=float(rng.uniform(1.0, 4.0)),
                cost=float(rng.choice([1.0, 2.0, 4.0])),
                max_replicas=512,
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=20)
    args = ap.parse_args()
    print(f"{'stages':>6} {'median ms':>10} {'max ms':>8} {'replicas':>9} {'outcome':>10}")
    for k in (4, 16, 32, 64):
        stages = pipeline(k, seed=k)
        slo = 0.4 + sum(s.service_mean_s for s in stages) * 1.5
        plan_replicas(stages, slo)  # warm caches (Gamma tables, numpy)
        times = []
        plan = None
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            plan = plan_replicas(stages, slo)
            times.append((time.perf_counter() - t0) * 1e3)
        assert plan is not None
        print(
            f"{k:>6} {statistics.median(times):>10.2f} {max(times):>8.2f} "
            f"{sum(plan.replicas):>9} {plan.outcome.value:>10}"
        )


if __name__ == "__main__":
    main()

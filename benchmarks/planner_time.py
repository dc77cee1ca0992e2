"""How long ``control/planner.plan_replicas`` takes for pipelines of 4-64 stages.

Each pipeline has stages with service means 5-80 ms (mixed deterministic, Gamma and
exponential service, costs 1-4 per replica) at 200 req/s and an SLO of 1.5x the sum of
the service means plus 0.4 s, so every plan has work to do. Every repeat perturbs the
service means by up to 1 % (a live controller's measured inputs change every tick, so
no cache keyed on them helps it); ``--fixed`` repeats the identical input instead.
Prints the median and worst wall time (``time.perf_counter``) and the median CPU time of
this process (``time.process_time``, less sensitive to other load on a shared host) of
``--repeat`` runs per size, the replicas and the outcome, with the load average before
and after. Target (issue 12): a 64-stage plan in < 5 ms.

    PYTHONPATH=src python benchmarks/planner_time.py [--repeat 50] [--fixed]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import replace

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


def _load() -> str:
    return "/".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=50)
    ap.add_argument("--fixed", action="store_true", help="no perturbation between repeats")
    args = ap.parse_args()
    print(f"load average (1/5/15 min) before: {_load()}; {os.cpu_count()} CPUs")
    print(
        f"{'stages':>6} {'median ms':>10} {'max ms':>8} {'cpu ms':>7} {'replicas':>9} "
        f"{'outcome':>10}"
    )
    rng = np.random.default_rng(1)
    for k in (4, 16, 32, 64):
        stages = pipeline(k, seed=k)
        slo = 0.4 + sum(s.service_mean_s for s in stages) * 1.5
        plan_replicas(stages, slo)  # warm numpy
        walls, cpus = [], []
        plan = None
        for _ in range(args.repeat):
            run = stages
            if not args.fixed:
                run = [
                    replace(s, service_mean_s=s.service_mean_s * (1 + 0.01 * rng.random()))
                    for s in stages
                ]
            t0, c0 = time.perf_counter(), time.process_time()
            plan = plan_replicas(run, slo)
            walls.append((time.perf_counter() - t0) * 1e3)
            cpus.append((time.process_time() - c0) * 1e3)
        assert plan is not None
        print(
            f"{k:>6} {statistics.median(walls):>10.2f} {max(walls):>8.2f} "
            f"{statistics.median(cpus):>7.2f} {sum(plan.replicas):>9} {plan.outcome.value:>10}"
        )
    print(f"load average after: {_load()}")


if __name__ == "__main__":
    main()

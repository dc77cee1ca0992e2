"""Scale actions at constant Poisson load, after settling (issue 12: no flapping).

The pipeline of ``tests/sim/test_quart_sim.py``'s flapping test: 3 stages of exponential
service (100, 150 and 80 ms, one slot per replica), SLO p99 1.5 s, on the simulator's
``small`` cluster, Quart with the QNA predictor and the default controller settings
except ``upscale_confirm_s`` and ``service_memory_samples`` (the service memory: 0 is
off, the window's service time alone). For each seed (one Poisson realisation) it counts
the scale actions of the whole pipeline in the 30 minutes after a 10-minute settling
period, and the most actions of one stage in any 10-minute window (the issue's bar is 1).

    python benchmarks/flapping.py [--rates 5,20] [--confirm 0,10] [--memory 0,300] [--seeds 6]

The simulator is deterministic: the same arguments print the same table.
"""

from __future__ import annotations

import argparse

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.control.registry import make_policy
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import SimPipeline, SimStage
from quartfaas.sim.run import simulate
from quartfaas.workload.synthetic import poisson

SETTLE_S, END_S = 600.0, 2400.0


def count(rate: float, confirm_s: float, seed: int, memory: float = 300.0) -> tuple[int, int]:
    """(actions of the pipeline after settling, most of one stage in a 10-min window)."""
    cfg = ControllerConfig().model_copy(
        update={"upscale_confirm_s": confirm_s, "service_memory_samples": memory}
    )
    stages = tuple(
        SimStage(f"s{k}", k, service_s=s, service_scv=1.0, max_concurrency=1, max_replicas=16)
        for k, s in enumerate((0.1, 0.15, 0.08))
    )
    pipe = SimPipeline("p3", "synthetic", "X-3", stages, slo_p99_s=1.5)
    r = simulate(
        pipe,
        cluster_preset("small"),
        make_policy("quart", cfg, predictor="qna"),
        poisson(rate, END_S, seed=seed),
        seed=0,
        controller=cfg,
    )
    moves = [e for e in r.scale_events if e.target != e.current and e.time >= SETTLE_S]
    worst = 0
    for s in stages:
        times = [e.time for e in moves if e.stage == s.name]
        for start in np.arange(SETTLE_S, END_S - 599.0, 60.0):
            worst = max(worst, sum(1 for t in times if start <= t < start + 600.0))
    return len(moves), worst


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rates", default="5,20", help="comma list of requests/s")
    ap.add_argument("--confirm", default="0,10", help="comma list of upscale_confirm_s")
    ap.add_argument("--memory", default="0,300", help="comma list of service_memory_samples")
    ap.add_argument("--seeds", type=int, default=6, help="seeds 1..N")
    args = ap.parse_args(argv)
    print(f"3-stage pipeline, Poisson, actions in {END_S - SETTLE_S:g} s after {SETTLE_S:g} s "
          f"settling; seeds 1-{args.seeds}")  # fmt: skip
    print(f"{'rate/s':>7} {'memory':>7} {'confirm s':>10}  actions per seed{'':<14} "
          "worst stage/10 min per seed")  # fmt: skip
    for rate in (float(x) for x in args.rates.split(",")):
        for memory in (float(x) for x in args.memory.split(",")):
            for confirm in (float(x) for x in args.confirm.split(",")):
                runs = [count(rate, confirm, seed, memory) for seed in range(1, args.seeds + 1)]
                acts = ", ".join(str(a) for a, _ in runs)
                worst = ", ".join(str(w) for _, w in runs)
                print(f"{rate:7g} {memory:7g} {confirm:10g}  {acts:<30} {worst}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

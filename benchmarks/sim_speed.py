"""How fast the simulator runs: stage visits per second through a 21-stage pipeline.

Two measurements on the same workload (Poisson arrivals, bert-21b ME-21 on the paper
cluster, 3 replicas per stage, 1 s ticks):

- ``engine``: ``Engine.advance`` alone, tick after tick (the per-visit cost);
- ``closed-loop``: ``sim.run.simulate`` with a hold policy, i.e. engine + SimCollector
  snapshot + ControlLoop + SimBackend at every tick (the cost of a real experiment).

A small warm-up run first loads/compiles the numba kernels, so compile time is excluded.
Usage: ``python benchmarks/sim_speed.py [--requests 1000000] [--rate 300]``.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.control.policy import Decision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.engine import Engine
from quartfaas.sim.kernel import COMPILED
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.run import sample_work, simulate

REPLICAS = 3


class Hold:
    name = "hold"

    def initial_state(self, snapshot: PipelineSnapshot) -> None:
        return None

    def decide(self, snapshot: PipelineSnapshot, state: None) -> tuple[Decision, None]:
        return hold_all(snapshot, self.name, "benchmark"), state


def engine_only(arrivals: np.ndarray, pipeline_name: str, seed: int) -> tuple[float, int]:
    pipe = pipeline_preset(pipeline_name)
    work = sample_work(pipe, arrivals.size, seed)
    e = Engine(arrivals, work, [s.queue_bound for s in pipe.stages])
    for s in pipe.stages:
        for _ in range(REPLICAS):
            e.add_replica(s.index, s.max_concurrency, 0.0, 1.0)
    t0 = time.perf_counter()
    tick = 0
    while not e.idle:
        tick += 1
        e.advance(float(tick))
    return time.perf_counter() - t0, e.visits_started


def closed_loop(arrivals: np.ndarray, pipeline_name: str, seed: int) -> tuple[float, int]:
    pipe = pipeline_preset(pipeline_name, min_replicas=REPLICAS)
    t0 = time.perf_counter()
    r = simulate(
        pipe,
        cluster_preset("paper"),
        Hold(),
        arrivals,
        seed=seed,
        controller=ControllerConfig(interval_s=1.0, window_s=10.0),
    )
    wall = time.perf_counter() - t0
    visits = int(np.count_nonzero(~np.isnan(r.stage_start)))
    return wall, visits


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=300.0, help="arrivals per second")
    ap.add_argument("--pipeline", default="bert-21b-me-21")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    warm = np.cumsum(rng.exponential(1.0 / args.rate, 2000))
    engine_only(warm, args.pipeline, args.seed)
    closed_loop(warm, args.pipeline, args.seed)
    arrivals = np.cumsum(rng.exponential(1.0 / args.rate, args.requests))
    rows = []
    for mode, fn in (("engine", engine_only), ("closed-loop", closed_loop)):
        wall, visits = fn(arrivals, args.pipeline, args.seed)
        rows.append((mode, visits, wall, visits / wall))
    compiled = "yes" if COMPILED else "no (pure Python)"
    print(
        f"pipeline {args.pipeline}, {args.requests:,} requests at {args.rate:g}/s "
        f"({arrivals[-1]:.0f} simulated s, 1 s ticks), numba-compiled: {compiled}"
    )
    print(f"{'mode':>12}  {'stage visits':>13}  {'wall s':>8}  {'visits/s':>12}")
    for mode, visits, wall, speed in rows:
        print(f"{mode:>12}  {visits:>13,}  {wall:>8.2f}  {speed:>12,.0f}")
    print(f"closed-loop / engine time: {rows[1][2] / rows[0][2]:.2f}x")


if __name__ == "__main__":
    main()

"""How fast the simulator runs: stage visits per second through a 21-stage pipeline.

One run measures, on the same workload (Poisson arrivals, bert-21b ME-21 on the paper
cluster, 3 replicas per stage at the start, 1 s ticks):

- ``engine``: ``Engine.advance`` alone, tick after tick (the per-visit cost);
- ``loop+hold``: ``sim.run.simulate`` with a do-nothing policy, i.e. engine + SimCollector
  snapshot + ControlLoop + SimBackend at every tick;
- ``loop+quart``: the same with the full Quart policy (corrector, smoother with the
  shipped GAT, CPU compensator), the cost of a real experiment;
- ``simpy``: a plain SimPy tandem model of the same pipeline (one ``simpy.Resource`` of
  3 x max_concurrency slots per stage, a process per request, the same work per visit),
  on the first ``--simpy-requests`` requests (it is slow; visits/s is per-visit cost).

Speeds are per CPU second of this process (``time.process_time``), i.e. on one core, so
that other load on a shared machine does not count; wall seconds are shown beside them.
Then the ratios (``--json`` writes the figures). ``--profile N`` instead profiles ``loop+quart`` on
N requests with cProfile and prints where the time goes, by module and by function.
A small warm-up run first loads/compiles the numba kernels, so compile time is excluded.

Usage: ``python benchmarks/sim_speed.py [--requests 1000000] [--rate 300]
[--simpy-requests 100000] [--profile 100000]``.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from collections import defaultdict
from collections.abc import Generator
from pathlib import Path
from typing import Any

import numpy as np

from quartfaas.control import registry
from quartfaas.control.config import ControllerConfig
from quartfaas.control.policy import Decision, Policy, hold_all
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.jit import COMPILED
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.engine import Engine
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.run import sample_work, simulate

REPLICAS = 3
CFG = ControllerConfig(interval_s=1.0, window_s=10.0, predictor="gat")  # the shipped GAT


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


def closed_loop(
    arrivals: np.ndarray, pipeline_name: str, seed: int, policy: Policy
) -> tuple[float, int]:
    pipe = pipeline_preset(pipeline_name, min_replicas=REPLICAS)
    t0 = time.perf_counter()
    r = simulate(pipe, cluster_preset("paper"), policy, arrivals, seed=seed, controller=CFG)
    wall = time.perf_counter() - t0
    return wall, int(np.count_nonzero(~np.isnan(r.stage_start)))


def quart() -> Policy:
    return registry.make_policy("quart", CFG)


def simpy_tandem(arrivals: np.ndarray, pipeline_name: str, seed: int) -> tuple[float, int]:
    import simpy

    pipe = pipeline_preset(pipeline_name)
    work = sample_work(pipe, arrivals.size, seed)
    env = simpy.Environment()
    res = [simpy.Resource(env, REPLICAS * s.max_concurrency) for s in pipe.stages]
    visits = [0]

    def request(i: int) -> Generator[Any, Any, None]:
        for k, r in enumerate(res):
            with r.request() as slot:
                yield slot
                visits[0] += 1
                yield env.timeout(work[k, i])

    def source() -> Generator[Any, Any, None]:
        last = 0.0
        for i, t in enumerate(arrivals):
            yield env.timeout(t - last)
            last = t
            env.process(request(i))

    env.process(source())
    t0 = time.perf_counter()
    env.run()
    return time.perf_counter() - t0, visits[0]


def profile(arrivals: np.ndarray, pipeline_name: str, seed: int, top: int = 25) -> None:
    prof = cProfile.Profile()
    prof.enable()
    wall, visits = closed_loop(arrivals, pipeline_name, seed, quart())
    prof.disable()
    st = pstats.Stats(prof)
    total = max(1e-9, sum(v[2] for v in st.stats.values()))  # type: ignore[attr-defined]
    by_module: dict[str, float] = defaultdict(float)
    for (file, _line, _fn), (_cc, _nc, tt, _ct, _callers) in st.stats.items():  # type: ignore[attr-defined]
        mod = file.split("/src/")[-1] if "/src/" in file else file.split("/")[-1]
        if "site-packages" in file:
            mod = "site-packages/" + file.split("site-packages/")[-1].split("/")[0]
        by_module[mod] += tt
    print(f"profile: loop+quart, {arrivals.size:,} requests, {visits:,} visits, {wall:.1f} s "
          f"wall under cProfile; self time by module (top {top}):")  # fmt: skip
    for mod, tt in sorted(by_module.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {tt:8.2f} s  {100 * tt / total:5.1f}%  {mod}")
    print("cumulative time by function:")
    st.sort_stats("cumulative").print_stats(top)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--simpy-requests", type=int, default=100_000)
    ap.add_argument("--rate", type=float, default=300.0, help="arrivals per second")
    ap.add_argument("--pipeline", default="bert-21b-me-21")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="profile loop+quart")
    ap.add_argument("--json", type=Path, help="write the figures here")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    warm = np.cumsum(rng.exponential(1.0 / args.rate, 2000))
    engine_only(warm, args.pipeline, args.seed)
    closed_loop(warm, args.pipeline, args.seed, quart())
    if args.profile:
        arrivals = np.cumsum(rng.exponential(1.0 / args.rate, args.profile))
        profile(arrivals, args.pipeline, args.seed)
        return
    arrivals = np.cumsum(rng.exponential(1.0 / args.rate, args.requests))
    modes = {
        "engine": lambda a: engine_only(a, args.pipeline, args.seed),
        "loop+hold": lambda a: closed_loop(a, args.pipeline, args.seed, Hold()),
        "loop+quart": lambda a: closed_loop(a, args.pipeline, args.seed, quart()),
        "simpy": lambda a: simpy_tandem(a, args.pipeline, args.seed),
    }
    rows: dict[str, tuple[int, int, float, float, float]] = {}
    for mode, fn in modes.items():
        a = arrivals[: args.simpy_requests] if mode == "simpy" else arrivals
        cpu0 = time.process_time()
        wall, visits = fn(a)
        cpu = time.process_time() - cpu0
        rows[mode] = (a.size, visits, wall, cpu, visits / cpu)
    compiled = "yes" if COMPILED else "no (pure Python)"
    print(
        f"pipeline {args.pipeline}, {args.requests:,} requests at {args.rate:g}/s "
        f"({arrivals[-1]:.0f} simulated s, 1 s ticks), numba-compiled: {compiled}"
    )
    print(f"{'mode':>11}  {'requests':>10}  {'stage visits':>13}  {'wall s':>8}  {'CPU s':>8}  "
          f"{'visits/CPU s':>12}")  # fmt: skip
    for mode, (n, visits, wall, cpu, speed) in rows.items():
        print(f"{mode:>11}  {n:>10,}  {visits:>13,}  {wall:>8.2f}  {cpu:>8.2f}  {speed:>12,.0f}")
    v = {m: r[4] for m, r in rows.items()}
    print(
        f"loop+hold / engine speed {v['loop+hold'] / v['engine']:.2f}; "
        f"loop+quart / engine {v['loop+quart'] / v['engine']:.3f}; "
        f"loop+quart / simpy {v['loop+quart'] / v['simpy']:.2f}x; "
        f"engine / simpy {v['engine'] / v['simpy']:.1f}x"
    )
    ticks = int(np.ceil(arrivals[-1]))  # 1 s ticks over the arrivals (the drain adds a few)
    per_visit = rows["engine"][3] / rows["engine"][1]
    per_tick = {m: max(0.0, (rows[m][3] - per_visit * rows[m][1]) / ticks)
                for m in ("loop+hold", "loop+quart")}  # fmt: skip
    print(
        f"SpeedModel (sim/experiments/workloads.py MEASURED_SPEED): per_visit_s "
        f"{per_visit:.3g}, per_tick_s hold {per_tick['loop+hold']:.3g}, "
        f"quart {per_tick['loop+quart']:.3g} (CPU s; ~{ticks} ticks)"
    )
    if args.json:
        args.json.write_text(json.dumps({"visits_per_s": v, "rows": rows}, indent=2))


if __name__ == "__main__":
    main()

"""Burst benchmark: scale one stage 1 -> N at once; how long until all N are ready.

Two pools side by side in one run, alternating per repeat so both see the same load:

- **single**: today's pool, one warmed child per template (``cache.prefork: 1``);
- **forecast**: the depth ``control/placement/prefork.py`` decides for a forecast of N
  replicas at a target of 1 (``N - 1`` warmed children), applied through the backend's
  ``set_pool`` as the control loop does.

Per repeat: the pool is filled (every child warm), the scale call is
``reconcile(backend, stage, N)`` (what ``POST /system/scale-function`` does), and "all
ready" is the latest ``ready_at`` of the N replicas minus the time of the call, on the
backend's clock. Memory: the PSS (``/proc/PID/smaps_rollup``) of every process of the
stage just before the call (template, pool children and the one replica: the stage's
host memory with its pool; shared weight pages split among them), against the stage's
weights. Each new replica's first request is timed against a warm request, one at a
time. Also the first request on a fresh fork that did not warm up
(``cache.fork_warmup: false``) against a warm request, in one runtime.

The 1-minute load average is printed beside the figures: the machine is shared.
Run by ``benchmarks/scaleup.py`` (its burst rows).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from quartfaas.bench.scaleup import (
    GIB,
    _example_body,
    _invoke,
    _ready,
    largest_stage,
    pct,
    single_stage_spec,
)
from quartfaas.control.backend import ReplicaState, reconcile, set_pool
from quartfaas.control.placement.prefork import PoolConfig, PoolInput, decide_stage
from quartfaas.dataplane.param_cache import ParamCacheLauncher
from quartfaas.dataplane.param_cache.host import pss_bytes
from quartfaas.runtime import EmbeddedRuntime
from quartfaas.spec import PipelineSpec

MODES = ("single", "forecast")


@dataclass
class BurstResult:
    stage: str
    weights_bytes: int
    all_ready_s: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    tiers: dict[tuple[int, str], list[str]] = field(default_factory=dict)
    pool_pss: dict[tuple[int, str], list[int]] = field(default_factory=dict)
    load: list[float] = field(default_factory=list)
    reasons: dict[int, str] = field(default_factory=dict)
    warm_s: list[float] = field(default_factory=list)
    nowarm_ready_s: list[float] = field(default_factory=list)
    nowarm_first_s: list[float] = field(default_factory=list)
    first_ratio: dict[tuple[int, str], list[float]] = field(default_factory=dict)


def forecast_depth(n: int, max_replicas: int, floor: int) -> tuple[int, str]:
    """The pool decision for a forecast of ``n`` replicas at a target of 1."""
    inp = PoolInput("stage", target=1, current=1, max_replicas=max_replicas, forecast=n)
    d, _ = decide_stage(inp, None, 0.0, PoolConfig(floor=floor, max_depth=max(floor, 64)))
    return d.depth, d.reason


async def _until(cond: Callable[[], bool], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not within {timeout_s:.0f} s")
        await asyncio.sleep(0.005)


async def _burst_once(
    rt: EmbeddedRuntime, stage: str, n: int, depth: int, probe: Callable[[str], Any]
) -> tuple[float, list[str], int, list[float]]:
    """All-ready time, the new replicas' tiers, the stage's PSS before the call, and each
    new replica's first request over a warm one (``probe(address)`` times one request)."""
    backend = rt.backend
    launcher = backend.launcher
    assert isinstance(launcher, ParamCacheLauncher)
    set_pool(backend, stage, depth)

    def pool_full() -> bool:
        st = backend.pool_status(stage)
        return st is not None and st.depth == depth and st.idle == depth and st.warm == depth

    await _until(pool_full, 300, f"a warm pool of {depth}")
    await asyncio.sleep(0.3)  # the refill's warm-ups are over: the call starts on a quiet pool
    template = launcher.template_pids()[stage]
    children = _children(template)
    base = [r for r in backend.list_replicas(stage) if r.state is ReplicaState.READY]
    # Every process of the stage before the call: template, pool children, the replica.
    pss = sum(pss_bytes(p) or 0 for p in {template, *children})
    t_call = backend.clock()
    reconcile(backend, stage, n)

    def all_ready() -> bool:
        reps = backend.list_replicas(stage)
        ok = [r for r in reps if r.state is ReplicaState.READY]
        return len(ok) >= n and all(r.replica_id in rt.gateway.pools[stage].endpoints for r in ok)

    await _until(all_ready, 300, f"{n} ready replicas")
    reps = [r for r in backend.list_replicas(stage) if r.state is ReplicaState.READY]
    took = max((r.ready_at or 0.0) for r in reps) - t_call
    new = [r for r in reps if r.requested_at >= t_call]
    tiers = [r.tier.value for r in new if r.tier is not None]
    ratios = []
    for r in new:  # one at a time, each beside a warm request on the first replica
        assert r.address is not None and base[0].address is not None
        first = await probe(r.address)
        warm = await probe(base[0].address)
        ratios.append(first / warm)
    reconcile(backend, stage, 1)
    await _until(lambda: len(backend.list_replicas(stage)) == 1, 120, "scale back to 1")
    return took, tiers, pss, ratios


def _children(pid: int) -> list[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


async def run_burst(
    spec: PipelineSpec,
    *,
    sizes: tuple[int, ...] = (4, 8),
    repeats: int = 5,
    seq_len: int = 16,
    stage_index: int | None = None,
    log: Callable[[str], None] = print,
) -> BurstResult:
    from quartfaas.models import make_weights, stage_param_bytes

    index = largest_stage(spec) if stage_index is None else stage_index
    make_weights(spec)
    top = max(sizes)
    one = single_stage_spec(spec, index, max_replicas=top, prefork=1)
    stage = one.stages[index].name
    res = BurstResult(stage, stage_param_bytes(spec, index))
    log(f"burst: stage {stage}, {res.weights_bytes / GIB:.2f} GiB of weights, 1 -> {sizes}")
    body = await asyncio.to_thread(_example_body, one, seq_len, index)
    async with EmbeddedRuntime(one) as rt, aiohttp.ClientSession() as session:

        async def probe(address: str) -> float:
            return await _invoke(session, address + "/invoke", body)

        for n in sizes:
            depth, reason = forecast_depth(n, top, one.cache.prefork)
            res.reasons[n] = reason
            for i in range(repeats):
                order = MODES if i % 2 == 0 else MODES[::-1]
                for mode in order:
                    d = one.cache.prefork if mode == "single" else depth
                    res.load.append(os.getloadavg()[0])
                    took, tiers, pss, ratios = await _burst_once(rt, stage, n, d, probe)
                    res.first_ratio.setdefault((n, mode), []).extend(ratios)
                    res.all_ready_s.setdefault((n, mode), []).append(took)
                    res.tiers.setdefault((n, mode), []).extend(tiers)
                    res.pool_pss.setdefault((n, mode), []).append(pss)
                    log(f"  1->{n} {mode:<8} pool {d}: all ready {took * 1000:.0f} ms "
                        f"({', '.join(sorted(set(tiers)))}); load {res.load[-1]:.2f}")  # fmt: skip
        set_pool(rt.backend, stage, one.cache.prefork)
    await _no_warmup(spec, index, res, repeats=repeats, seq_len=seq_len, log=log)
    return res


async def _no_warmup(
    spec: PipelineSpec, index: int, res: BurstResult, *, repeats: int, seq_len: int,
    log: Callable[[str], None],
) -> None:  # fmt: skip
    """A fresh fork that says ready before any forward: its first request vs a warm one."""
    one = single_stage_spec(spec, index, prefork=0, fork_warmup=False)
    stage = one.stages[index].name
    body = await asyncio.to_thread(_example_body, one, seq_len, index)
    async with EmbeddedRuntime(one) as rt, aiohttp.ClientSession() as session:
        base = rt.backend.list_replicas(stage)[0]
        assert base.address is not None
        for _ in range(max(5, repeats)):
            res.warm_s.append(await _invoke(session, base.address + "/invoke", body))
        for i in range(repeats):
            log(f"  fork without warm-up {i + 1}/{repeats}")
            info = rt.backend.start_replica(stage)
            ready = await _ready(rt, info.replica_id)
            assert ready.start_seconds is not None and ready.address is not None
            res.nowarm_ready_s.append(ready.start_seconds)
            res.nowarm_first_s.append(await _invoke(session, ready.address + "/invoke", body))
            res.warm_s.append(await _invoke(session, base.address + "/invoke", body))
            rt.backend.stop_replica(ready.replica_id)
            await asyncio.sleep(0.3)


def report_burst(res: BurstResult) -> tuple[str, bool]:
    """The burst table and whether the targets were met (ratios within this run)."""
    w = res.weights_bytes
    lines = [
        f"burst: stage {res.stage}, weights {w / GIB:.2f} GiB; load average (1 min) during "
        f"the run: min {min(res.load, default=0):.2f}, p50 {pct(res.load, 0.5):.2f}, "
        f"max {max(res.load, default=0):.2f} on {len(os.sched_getaffinity(0))} cores",
        "",
        f"{'scale':<7}{'pool':<10}{'n':>3}{'all ready p50':>15}{'p90':>10}"
        f"{'PSS/weights':>13}{'1st/warm p50':>14}  tiers",
    ]
    checks: list[tuple[str, float, bool]] = []
    goals = {4: 0.100, 8: 0.250}
    sizes = sorted({n for n, _ in res.all_ready_s})
    for n in sizes:
        p50 = {}
        for mode in MODES:
            xs = res.all_ready_s.get((n, mode), [])
            if not xs:
                continue
            p50[mode] = pct(xs, 0.5)
            pss = statistics.median(res.pool_pss[(n, mode)]) / w
            tiers = res.tiers[(n, mode)]
            mix = ", ".join(f"{t} {tiers.count(t)}" for t in sorted(set(tiers)))
            ratio = statistics.median(res.first_ratio[(n, mode)])
            lines.append(
                f"1->{n:<4}{mode:<10}{len(xs):>3}{p50[mode] * 1000:>13.0f}ms"
                f"{pct(xs, 0.9) * 1000:>8.0f}ms{pss:>13.2f}{ratio:>14.2f}  {mix}"
            )
        if "forecast" in p50:
            goal = goals.get(n)
            if goal is not None:
                checks.append((f"1->{n} all ready p50 <= {goal * 1000:.0f} ms (forecast pool)",
                               p50["forecast"] * 1000, p50["forecast"] <= goal))  # fmt: skip
            pss = statistics.median(res.pool_pss[(n, "forecast")]) / w
            checks.append((f"1->{n} stage PSS with the pool / weights <= 1.3", pss, pss <= 1.3))
            ratio = statistics.median(res.first_ratio[(n, "forecast")])
            checks.append((f"1->{n} first request on a pool replica / warm <= 1.2", ratio,
                           ratio <= 1.2))  # fmt: skip
            if "single" in p50:
                lines.append(
                    f"        single / forecast all-ready p50: "
                    f"{p50['single'] / p50['forecast']:.1f}x"
                )
        lines.append(f"        forecast pool: {res.reasons.get(n, '')}")
    if res.nowarm_first_s:
        warm = statistics.median(res.warm_s)
        first = statistics.median(res.nowarm_first_s)
        lines += [
            "",
            f"fork without warm-up: ready p50 {pct(res.nowarm_ready_s, 0.5) * 1000:.0f} ms; "
            f"first request p50 {first * 1000:.0f} ms vs warm {warm * 1000:.0f} ms "
            f"({first / warm:.2f}x)",
        ]
        verdict = "safe to skip" if first / warm <= 1.2 else "keep it (cache.fork_warmup)"
        lines.append(f"  -> the warm-up on a fresh fork's path: {verdict}; the pool takes it "
                     "off the path by warming children before they are needed")  # fmt: skip
    lines.append("")
    for name, value, ok in checks:
        lines.append(f"{'met ' if ok else 'MISS'} {name}: {value:.2f}")
    return "\n".join(lines), all(ok for _, _, ok in checks)

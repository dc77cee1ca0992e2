"""The live half of the controlled-run fidelity check (``sim/fidelity_control.py``).

- ``emulated_spec``: the bundled ``examples/emulated-bert21b.yaml`` (stages sleep a profiled
  service time, so capacity grows with replicas as with GPUs, even on two shared vCPUs),
  optionally cut to its first ``stages`` stages for a shorter test.
- ``calibrate``: the *calibration run*. Controller off, ``min_replicas`` per stage, Poisson
  arrivals; the per-stage profile and per-request overhead come from the gateway's timings
  (``sim/fidelity.measure_profile``) of the requests answered before the start-up probe:
  three quarters into the load every stage is scaled up by ``probe_extra`` replicas at
  once, through the same backend the controller uses (a fork from the stage template or a
  pre-forked child); each new replica's start call to in-rotation time is a measured start
  delay; they are stopped once all serve. (Forking on two shared vCPUs slows the requests
  around it: a 2-stage calibration that profiled all its requests, the probe's included,
  measured 5-8 ms hops against 2.5 ms in the checked run minutes later; the host's load
  from other users differed too.)
- ``run_controlled_live``: the *checked run*. Controller on (the spec's policy), the
  workload's arrivals, the runtime kept up ``tail_s`` after the last send so the
  controller's scale-down is seen. A ``TickRecorder`` sink added to the live
  ``ControlLoop`` notes after every tick the replicas starting or ready per stage and
  whether replicas were started or stopped.

Both runs send from a separate process (``_load_child``), as ``quartfaas run`` does, so
the generator does not share the gateway's interpreter. The time axis is the generator's:
``t0`` is its schedule origin on the monotonic clock both processes share.
"""

from __future__ import annotations

import asyncio
import math
import multiprocessing as mp
import queue
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from quartfaas.control.backend import Backend, ReplicaState, reconcile
from quartfaas.control.loop import Applied
from quartfaas.control.policy import Decision
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.errors import SimulationError
from quartfaas.runtime import EmbeddedRuntime
from quartfaas.sim.fidelity import StageProfile, measure_profile
from quartfaas.sim.fidelity_control import Calibration, ControlledRun, simulate_controlled
from quartfaas.sim.fidelity_report import ControlledReport, compare_controlled
from quartfaas.spec import PipelineSpec, load_spec
from quartfaas.workload.loadgen import _START_DELAY_S, run_open_loop
from quartfaas.workload.records import RequestRecord
from quartfaas.workload.synthetic import poisson
from quartfaas.workload.workload import Workload

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "emulated-bert21b.yaml"
LIVE = (ReplicaState.READY, ReplicaState.STARTING)
PROBE_AT = 0.75  # share of the calibration load after which the start-up probe runs


def emulated_spec(stages: int | None = None, *, name: str | None = None) -> PipelineSpec:
    """The emulated-accelerator example (all stages, or the first ``stages``), port 0."""
    spec = load_spec(EXAMPLE)
    update: dict[str, Any] = {"gateway": spec.gateway.model_copy(update={"port": 0})}
    if stages is not None:
        if not 1 <= stages <= len(spec.stages):
            raise SimulationError(f"stages must be in 1..{len(spec.stages)}, got {stages}")
        update["stages"] = spec.stages[:stages]
    if name is not None:
        update["name"] = name
    return spec.model_copy(update=update)


def _load_child(url: str, arrivals: list[float], timeout_s: float, out: Any) -> None:
    """Runs in a child process: send open-loop, report (schedule origin, records)."""
    before = time.monotonic()
    records = asyncio.run(run_open_loop(url, arrivals, fixed_input="hello", timeout_s=timeout_s))
    # run_open_loop's origin is its loop's time (monotonic) + _START_DELAY_S, taken right
    # after it opens its session: ``before`` is at most a few ms earlier.
    out.put((before + _START_DELAY_S, records))


class _Load:
    """The load generator in a spawned process."""

    def __init__(self, url: str, arrivals_s: np.ndarray, timeout_s: float) -> None:
        ctx = mp.get_context("spawn")
        self._queue = ctx.Queue()
        self._proc = ctx.Process(
            target=_load_child,
            args=(url, [float(x) for x in arrivals_s], timeout_s, self._queue),
        )
        self._proc.start()

    async def result(self) -> tuple[float, list[RequestRecord]]:
        loop = asyncio.get_running_loop()
        while True:
            try:
                t0, records = await loop.run_in_executor(None, self._queue.get, True, 1.0)
                break
            except queue.Empty:
                if not self._proc.is_alive():  # died without a result (e.g. an import error)
                    raise SimulationError(
                        f"the load generator process exited ({self._proc.exitcode}) "
                        "without a result"
                    ) from None
        await loop.run_in_executor(None, self._proc.join)
        return t0, records

    def close(self) -> None:
        """Stop the generator if it still runs (the run failed before it finished)."""
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5.0)


class TickRecorder:
    """``DecisionSink``: replicas starting or ready per stage after each tick, and the
    (tick, stage) pairs where replicas were started or stopped."""

    def __init__(self, backend: Backend, stages: Sequence[str]) -> None:
        self.backend = backend
        self.stages = list(stages)
        self.times: list[float] = []
        self.counts: list[list[int]] = []
        self.ups = 0
        self.downs = 0

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        self.times.append(snapshot.now)
        self.counts.append(
            [sum(r.state in LIVE for r in self.backend.list_replicas(s)) for s in self.stages]
        )
        self.ups += sum(1 for n in applied.started.values() if n > 0)
        self.downs += sum(1 for n in applied.stopped.values() if n > 0)


async def _probe_starts(
    rt: EmbeddedRuntime, extra: int, timeout_s: float
) -> tuple[list[float], list[str]]:
    """Scale every stage up by ``extra`` at once; each new replica's start delay and tier."""
    backend = rt.backend
    before = {r.replica_id for r in backend.list_replicas()}
    for st in rt.spec.stages:
        reconcile(backend, st.name, st.min_replicas + extra)
    new = {r.replica_id for r in backend.list_replicas()} - before
    deadline = time.monotonic() + timeout_s
    while True:
        reps = [r for r in backend.list_replicas() if r.replica_id in new]
        if len(reps) == len(new) and all(r.state is ReplicaState.READY for r in reps):
            break
        if time.monotonic() > deadline or len(reps) < len(new):
            raise SimulationError(
                f"start-up probe: {sum(r.state is ReplicaState.READY for r in reps)} of "
                f"{len(new)} new replicas serve after {timeout_s:g} s (or some failed)"
            )
        await asyncio.sleep(0.02)
    delays = [r.start_seconds for r in reps if r.start_seconds is not None]
    tiers = [r.tier.value if r.tier is not None else "unknown" for r in reps]
    for st in rt.spec.stages:
        reconcile(backend, st.name, st.min_replicas)
    return delays, tiers


async def calibrate(
    spec: PipelineSpec,
    arrivals_s: np.ndarray,
    *,
    rate: float,
    seed: int,
    replicas: int = 1,
    probe_extra: int = 2,
    timeout_s: float = 30.0,
) -> Calibration:
    """The calibration run (controller off): profile, overhead and start delays."""
    async with EmbeddedRuntime(spec, controller=False) as rt:
        load = _Load(f"{rt.url}/function/{spec.name}", arrivals_s, timeout_s)
        try:
            await asyncio.sleep(PROBE_AT * float(arrivals_s[-1]) if arrivals_s.size else 0.0)
            probe_at = rt.clock.now()
            timeout = spec.gateway.replica_start_timeout_s
            delays, tiers = await _probe_starts(rt, probe_extra, timeout)
            t0, records = await load.result()
        finally:
            load.close()
    if not delays:
        raise SimulationError("the start-up probe measured no replica start")
    # The profile is that of serving, not of forking: requests answered before the probe.
    before = [
        r for r in records
        if r.sent_s is not None and r.sent_s + (r.latency_s or math.inf) < probe_at - t0
    ]  # fmt: skip
    live = measure_profile(before, [s.name for s in spec.stages])
    return Calibration(
        profile=live.profile,
        entry_overhead_s=live.entry_overhead_s,
        start_delays_s=tuple(delays),
        start_tiers=tuple(tiers),
        requests=len(before),
        replicas=replicas,
        rate=rate,
        seed=seed,
        lateness_p99_s=live.lateness_p99_s,
    )


async def run_controlled_live(
    spec: PipelineSpec, arrivals_s: np.ndarray, *, tail_s: float = 30.0, timeout_s: float = 30.0
) -> ControlledRun:
    """The checked run: the spec's controller on, ``arrivals_s`` sent, ``tail_s`` more."""
    if not spec.controller.enabled:
        raise SimulationError(
            f"spec {spec.name!r} has the controller off; a controlled run needs it on"
        )
    names = [s.name for s in spec.stages]
    end_s = (float(arrivals_s[-1]) if arrivals_s.size else 0.0) + tail_s
    rt = EmbeddedRuntime(spec, controller=True)
    origin = rt.clock.now()  # the gateway's windows start here (a young window's span)
    async with rt:
        assert rt.loop is not None
        ticks = TickRecorder(rt.backend, names)
        rt.loop.sinks.append(ticks)
        initial = np.array(
            [sum(r.state in LIVE for r in rt.backend.list_replicas(s)) for s in names]
        )
        load = _Load(f"{rt.url}/function/{spec.name}", arrivals_s, timeout_s)
        try:
            t0, records = await load.result()
        finally:
            load.close()
        # One tick past the end, so the count the last tick before end_s left is known.
        wait = t0 + end_s + spec.controller.interval_s + 0.1 - rt.clock.now()
        if wait > 0:
            await asyncio.sleep(wait)
    records.sort(key=lambda r: r.index)
    sent = np.array([np.nan if r.sent_s is None else r.sent_s for r in records])
    if np.isnan(sent).any():
        raise SimulationError(f"{int(np.isnan(sent).sum())} requests were never sent")
    profile: tuple[StageProfile, ...] = ()
    overhead = math.nan
    try:
        own = measure_profile(records, names)
        profile, overhead = own.profile, own.entry_overhead_s
    except SimulationError:  # too few answered requests to profile: a diagnostic only
        pass
    return ControlledRun(
        arrivals_s=sent,
        latency_s=np.array(
            [r.latency_s if r.ok and r.latency_s is not None else np.nan for r in records]
        ),
        tick_times_s=np.array(ticks.times) - t0,
        provisioned=np.array(ticks.counts, dtype=np.int64).reshape(len(ticks.times), len(names)),
        initial=initial,
        ups=ticks.ups,
        downs=ticks.downs,
        end_s=end_s,
        origin_s=origin - t0,
        profile=profile,
        entry_overhead_s=overhead,
    )


def check_controlled(
    spec: PipelineSpec,
    workload: str,
    *,
    seed: int = 1,
    calib_rate: float = 8.0,
    calib_replicas: int = 1,
    calib_duration_s: float = 60.0,
    tail_s: float = 30.0,
    sim_seeds: Sequence[int] = range(5),
    progress: Callable[[str], None] | None = None,
) -> ControlledReport:
    """Calibrate (Poisson, ``seed``, ``calib_replicas`` a stage at least), run ``workload``
    live (its seed ``seed + 1000``) with the controller on, replay it in the simulator, and
    compare.

    ``calib_rate``/``calib_replicas`` choose the calibration's operating point. A heavier
    one is not better on two shared vCPUs: at 20/s with 3 replicas a stage (24 workers,
    40 during the start-up probe) under a 1-min load average of ~12 from other users, the
    gateway's outlier probe ejected every replica of every stage once and the calibration
    measured 38-42 ms hops (SCV ~0.8) where the checked run minutes later saw 3-4 ms.
    """
    say = progress or (lambda _: None)
    calib_arr = poisson(calib_rate, calib_duration_s, seed=seed)
    at_least = [
        s.model_copy(update={"min_replicas": max(s.min_replicas, calib_replicas),
                             "max_replicas": max(s.max_replicas, calib_replicas)})
        for s in spec.stages
    ]  # fmt: skip
    calib_spec = spec.model_copy(update={"stages": tuple(at_least)})
    say(f"calibration run: Poisson {calib_rate:g}/s for {calib_duration_s:g} s, "
        f">= {calib_replicas} replica(s) a stage, controller off")  # fmt: skip
    calib = asyncio.run(
        calibrate(calib_spec, calib_arr, rate=calib_rate, seed=seed, replicas=calib_replicas)
    )
    arrivals = Workload.parse(workload, seed=seed + 1000).trace(None).arrivals_s
    say(f"checked run: {workload} ({arrivals.size} requests), controller on, tail {tail_s:g} s")
    live = asyncio.run(run_controlled_live(spec, arrivals, tail_s=tail_s))
    say(f"simulating {len(sim_seeds)} seed(s)")
    sims = simulate_controlled(spec, calib, live, seeds=sim_seeds)
    own: list[ControlledRun] = []
    if live.profile:  # diagnostic: the model fed the checked run's own profile
        mine = replace(calib, profile=live.profile, entry_overhead_s=live.entry_overhead_s)
        own = simulate_controlled(spec, mine, live, seeds=sim_seeds)
    return compare_controlled(spec, calib, live, sims, workload=workload, own=own)

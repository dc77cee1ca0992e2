"""Fidelity check: the same pipeline and arrivals on the live runtime and in the simulator.

1. **Live**: a synthetic spec (sleep stages with known service distributions, fixed
   replicas, controller off) runs on ``quartfaas/runtime.py`` ``EmbeddedRuntime``; the open-loop
   generator (``workload/loadgen.run_open_loop``) sends the arrivals.
2. **Measured profile**: from the gateway's ``timings_ms`` of every answered request, per
   stage: service (the worker's own time), queue (waiting for a replica slot) and hop
   (stage latency minus queue minus service: the HTTP round trip gateway -> worker).
3. **Simulated**: ``sim/pipelines.from_spec`` with each stage's work replaced by the
   measured ``service + hop`` (mean and SCV, gamma-distributed as ``sim/run.sample_work``
   draws it), the same replica counts, and the live run's *send* times as arrivals. The
   simulator replays them under several seeds and pools the latencies, so its own sampling
   noise does not decide the check.
4. **Compare** p50 and p99 end to end; ``FidelityReport.within(0.15)`` is the bar.
   A second replay drives the engine with each request's *measured* work (no sampling):
   it isolates the model's error from the sampling noise of one short live run.

**Without fitting to the checked run** (issue #11 item 7): ``compare(spec, check,
calibration=calib)`` takes the profile (per-stage work, per-request overhead) from a
*separate* calibration run (another seed of the arrivals) and checks it against ``check``,
whose own measurements only feed the replay row. ``benchmarks/fidelity.py`` does that;
``tests/integration/test_fidelity.py`` checks what survives a busy host (the replay row).

How the gateway's overhead is modelled (measured, never assumed):

- **per hop** (~1-2 ms a stage on a 2-core machine): the gateway holds the replica slot
  from ``acquire`` until the worker's answer is read
  (``dataplane/gateway/pipeline.py``, ``Pipeline.call_stage``), so the hop is
  *slot-holding* time: it is added to the stage's work, where it also raises the stage's
  utilisation as it does live. Modelling it as a pure delay after the slot would
  understate queueing.
- **per request** (client <-> gateway HTTP, JSON parsing, the tokeniser): the client's
  latency minus the sum of the stages' queue + service + hop; added to every simulated
  latency as a constant (its mean).

Known limit: the profile draws visits independently. A stall of a shared host slows many
consecutive visits at once; the replay of measured work keeps that, the profile cannot, so
under contention the profile's p99 falls below the live one while the replay still matches
(the report prints the generator's lateness, where contention shows first).

Neighbours: ``tests/integration/test_fidelity.py`` (short), ``benchmarks/fidelity.py``
(longer, several loads).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from quartfaas.control.baselines import make_policy
from quartfaas.control.config import ControllerConfig
from quartfaas.errors import SimulationError
from quartfaas.runtime import EmbeddedRuntime
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.engine import Engine
from quartfaas.sim.pipelines import SimPipeline, from_spec
from quartfaas.sim.run import simulate
from quartfaas.spec import PipelineSpec, parse_spec
from quartfaas.workload.loadgen import keepalive_for, run_open_loop
from quartfaas.workload.records import RequestRecord


@dataclass(frozen=True, slots=True)
class FidelityStage:
    """A sleep stage of the fidelity pipeline."""

    mean_ms: float
    scv: float
    replicas: int
    concurrency: int = 1


# Three stages, 1-2 replicas, 15-30 ms sleeps: ~50 % utilisation (55 % with the gateway's
# hops) at 33 requests/s. Low service SCVs on the busier stages keep the p99 of a 30 s
# run steady: at SCV 0.25 and 60 % one realisation's p99 strays > 15 % from the expected
# one in ~15 % of runs (measured in simulation), at these settings in ~1 %.
DEFAULT_STAGES = (
    FidelityStage(15.0, 0.1, 1),
    FidelityStage(30.0, 0.1, 2),
    FidelityStage(20.0, 0.5, 1, concurrency=2),
)
DEFAULT_RATE = 33.0


def fidelity_spec(
    stages: Sequence[FidelityStage] = DEFAULT_STAGES, *, name: str = "fidelity"
) -> PipelineSpec:
    """A synthetic spec of sleep stages with fixed replicas and the controller off.

    The parameter cache is off: replicas are plain processes, which is all a fixed-replica
    run needs (and keeps start-up out of the measurement).
    """
    return parse_spec(
        {
            "name": name,
            "model": {"kind": "synthetic"},
            "gateway": {"port": 0, "replica_start_timeout_s": 60},
            "controller": {"enabled": False},
            "cache": {"enabled": False},
            "stages": [
                {
                    "name": f"{name}-s{i}",
                    "synthetic": {"work": "sleep", "mean_ms": st.mean_ms, "scv": st.scv},
                    "min_replicas": st.replicas,
                    "max_replicas": st.replicas,
                    "max_concurrency": st.concurrency,
                }
                for i, st in enumerate(stages)
            ],
        }
    )


def utilisation(spec: PipelineSpec, rate: float) -> dict[str, float]:
    """Offered load per stage at ``rate`` requests/s from the spec's mean service times."""
    out = {}
    for st in spec.stages:
        assert st.synthetic is not None
        out[st.name] = rate * st.synthetic.mean_ms / 1000.0 / (st.min_replicas * st.max_concurrency)
    return out


@dataclass(frozen=True, slots=True)
class StageProfile:
    """One stage as the live run measured it (seconds)."""

    stage: str
    visits: int
    service_mean_s: float
    service_scv: float
    hop_mean_s: float
    queue_mean_s: float
    work_mean_s: float  # service + hop: what a visit holds a slot for
    work_scv: float


@dataclass(frozen=True, eq=False)
class LiveRun:
    """What the live run measured."""

    arrivals_s: np.ndarray  # send times of every sent request, from the first send
    latency_s: np.ndarray  # client-side latency of answered (2xx) requests
    failed: int
    profile: tuple[StageProfile, ...]
    entry_overhead_s: float  # per-request overhead outside the stages (mean)
    ok_arrivals_s: np.ndarray  # send times of the answered requests, sorted
    work_s: np.ndarray  # (stages, answered): service + hop of each visit, same order
    lateness_p99_s: float  # how late the generator sent (a busy host shows here first)


def _mean_scv(x: np.ndarray) -> tuple[float, float]:
    m = float(x.mean())
    return m, float(x.var() / (m * m)) if m > 0 else 0.0


def measure_profile(records: Sequence[RequestRecord], stages: Sequence[str]) -> LiveRun:
    """Per-stage profile and per-request overhead from the load generator's records."""
    ok = [r for r in records if r.ok and len(r.stages) == len(stages)]
    if len(ok) < 20:
        raise SimulationError(
            f"only {len(ok)} of {len(records)} requests were answered with timings; "
            "a fidelity check needs at least 20"
        )
    profile = []
    for k, name in enumerate(stages):
        sv = np.array([r.stages[k].service_ms for r in ok]) / 1000.0
        hop = np.array([r.stages[k].hop_ms for r in ok]) / 1000.0
        q = np.array([r.stages[k].queue_ms for r in ok]) / 1000.0
        s_mean, s_scv = _mean_scv(sv)
        w_mean, w_scv = _mean_scv(sv + hop)
        profile.append(
            StageProfile(
                name, len(ok), s_mean, s_scv, float(hop.mean()), float(q.mean()), w_mean, w_scv
            )
        )
    lat = np.array([r.latency_s for r in ok], dtype=np.float64)
    inside = np.array([sum(s.queue_ms + s.service_ms + s.hop_ms for s in r.stages) for r in ok])
    sent = np.sort(np.array([r.sent_s for r in records if r.sent_s is not None]))
    ok_sent = np.array([r.sent_s for r in ok], dtype=np.float64)
    order = np.argsort(ok_sent, kind="stable")
    work = np.array([[s.service_ms + s.hop_ms for s in r.stages] for r in ok]).T / 1000.0
    return LiveRun(
        arrivals_s=sent - sent[0],
        latency_s=lat,
        failed=len(records) - len(ok),
        profile=tuple(profile),
        entry_overhead_s=float(np.mean(lat - inside / 1000.0)),
        ok_arrivals_s=ok_sent[order] - sent[0],
        work_s=np.ascontiguousarray(work[:, order]),
        lateness_p99_s=float(np.percentile([r.lateness_s or 0.0 for r in records], 99)),
    )


async def run_live(
    spec: PipelineSpec, arrivals_s: np.ndarray, *, timeout_s: float = 30.0, **runtime: Any
) -> LiveRun:
    """Serve ``spec`` on this machine, send ``arrivals_s`` open-loop, measure the profile."""
    async with EmbeddedRuntime(spec, controller=False, **runtime) as rt:
        records = await run_open_loop(
            f"{rt.url}/function/{spec.name}", arrivals_s, fixed_input=[[1, 2, 3, 4]],
            timeout_s=timeout_s, keepalive_s=keepalive_for(spec.gateway.header_timeout_s),
        )  # fmt: skip
    return measure_profile(records, [s.name for s in spec.stages])


def measured_pipeline(spec: PipelineSpec, live: LiveRun) -> SimPipeline:
    """``from_spec(spec)`` with each stage's work the measured service + hop."""
    base = from_spec(spec)
    by_name = {p.stage: p for p in live.profile}
    stages = tuple(
        replace(
            st,
            service_s=by_name[st.name].work_mean_s,
            service_scv=by_name[st.name].work_scv,
            min_replicas=st.min_replicas,
            max_replicas=st.min_replicas,  # fixed: the live run had the controller off
        )
        for st in base.stages
    )
    return replace(base, stages=stages, note="work = measured service + hop per stage")


def replay(
    pipeline: SimPipeline, arrivals_s: np.ndarray, *, seeds: Sequence[int] = range(5),
    offset_s: float = 0.0,
) -> np.ndarray:  # fmt: skip
    """Completed latencies of ``arrivals_s`` through ``pipeline`` for each seed, pooled."""
    cfg = ControllerConfig.model_validate({"interval_s": 1.0, "window_s": 10.0})
    out = []
    for seed in seeds:
        r = simulate(
            pipeline, cluster_preset("small"), make_policy("static"), arrivals_s, seed=seed,
            controller=cfg,
        )  # fmt: skip
        out.append(r.latency_s[~np.isnan(r.latency_s)])
    return np.concatenate(out) + offset_s


def replay_measured(pipeline: SimPipeline, live: LiveRun) -> np.ndarray:
    """Latencies when the engine replays each answered request's *measured* work.

    No sampling at all: the live run's own service + hop per visit, its send times and the
    fixed replicas. What is left between this and the live latencies is the model itself
    (FCFS over a stage's slots, slot-holding hops, the constant per-request overhead).
    """
    n = live.ok_arrivals_s.size
    engine = Engine(live.ok_arrivals_s, live.work_s, [s.queue_bound for s in pipeline.stages])
    for st in pipeline.stages:
        for _ in range(st.min_replicas):
            engine.add_replica(st.index, st.max_concurrency, 0.0, 1.0)
    t = 0.0
    while not engine.idle:
        t += 1.0
        engine.advance(t)
    done = ~np.isnan(engine.finish[-1, :n])
    return engine.finish[-1, :n][done] - live.ok_arrivals_s[done] + live.entry_overhead_s


@dataclass(frozen=True, slots=True)
class FidelityReport:
    """Live against simulated percentiles (seconds); ``sim_*`` from the measured profile,
    ``replay_*`` from the measured per-visit work."""

    requests: int
    failed: int
    live_p50_s: float
    live_p99_s: float
    sim_p50_s: float
    sim_p99_s: float
    replay_p50_s: float
    replay_p99_s: float
    entry_overhead_s: float
    lateness_p99_s: float
    profile: tuple[StageProfile, ...]
    calibrated: bool = False  # the profile came from a separate calibration run

    @staticmethod
    def _err(sim: float, live: float) -> float:
        return abs(sim - live) / live

    @property
    def err_p50(self) -> float:
        return self._err(self.sim_p50_s, self.live_p50_s)

    @property
    def err_p99(self) -> float:
        return self._err(self.sim_p99_s, self.live_p99_s)

    @property
    def replay_err_p50(self) -> float:
        return self._err(self.replay_p50_s, self.live_p50_s)

    @property
    def replay_err_p99(self) -> float:
        return self._err(self.replay_p99_s, self.live_p99_s)

    def within(self, tolerance: float) -> bool:
        """Profile-driven p50 and p99 within ``tolerance`` and no failed request."""
        return self.err_p50 <= tolerance and self.err_p99 <= tolerance and self.failed == 0

    def text(self) -> str:
        lines = [
            f"requests {self.requests} (failed {self.failed}), per-request overhead "
            f"{self.entry_overhead_s * 1000:.2f} ms, generator lateness p99 "
            f"{self.lateness_p99_s * 1000:.2f} ms",
            "stage            visits  service_ms  svc_scv  hop_ms  queue_ms  work_ms  work_scv",
        ]
        for p in self.profile:
            lines.append(
                f"{p.stage:<16} {p.visits:6d}  {p.service_mean_s * 1000:10.2f}  "
                f"{p.service_scv:7.3f}  {p.hop_mean_s * 1000:6.2f}  {p.queue_mean_s * 1000:8.2f}"
                f"  {p.work_mean_s * 1000:7.2f}  {p.work_scv:8.3f}"
            )
        ms = 1000.0
        lines += [
            "              p50_ms   p99_ms  err_p50  err_p99",
            f"live        {self.live_p50_s * ms:8.1f} {self.live_p99_s * ms:8.1f}",
            f"sim {'calib.' if self.calibrated else 'profile'} {self.sim_p50_s * ms:8.1f} "
            f"{self.sim_p99_s * ms:8.1f}  "
            f"{self.err_p50:7.1%}  {self.err_p99:7.1%}",
            f"sim replay  {self.replay_p50_s * ms:8.1f} {self.replay_p99_s * ms:8.1f}  "
            f"{self.replay_err_p50:7.1%}  {self.replay_err_p99:7.1%}",
        ]
        return "\n".join(lines) + "\n"


def _p50_p99(x: np.ndarray) -> tuple[float, float]:
    if x.size == 0:
        return math.nan, math.nan
    p50, p99 = np.percentile(x, [50, 99])
    return float(p50), float(p99)


def compare(
    spec: PipelineSpec,
    live: LiveRun,
    *,
    seeds: Sequence[int] = range(5),
    calibration: LiveRun | None = None,
) -> FidelityReport:
    """Replay the live run's arrivals in the simulator (profile-driven and measured work).

    ``calibration``: take the profile from this other run, not from ``live`` (the check is
    then not fitted to the run it checks).
    """
    calib = calibration if calibration is not None else live
    pipe = measured_pipeline(spec, calib)
    sim = replay(pipe, live.arrivals_s, seeds=seeds, offset_s=calib.entry_overhead_s)
    lp50, lp99 = _p50_p99(live.latency_s)
    sp50, sp99 = _p50_p99(sim)
    rp50, rp99 = _p50_p99(replay_measured(pipe, live))
    return FidelityReport(
        requests=int(live.arrivals_s.size),
        failed=live.failed,
        live_p50_s=lp50,
        live_p99_s=lp99,
        sim_p50_s=sp50,
        sim_p99_s=sp99,
        replay_p50_s=rp50,
        replay_p99_s=rp99,
        entry_overhead_s=live.entry_overhead_s,
        lateness_p99_s=live.lateness_p99_s,
        profile=calib.profile,
        calibrated=calibration is not None,
    )

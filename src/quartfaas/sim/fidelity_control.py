"""Controlled-run fidelity: the controller on, one bursty workload live and simulated.

The second half of issue #11 item 7 (the first, fixed replicas and latency percentiles, is
``sim/fidelity.py``). The same ``ControlLoop`` and policy (built by
``control/registry.make_policy`` from the spec's ``controller`` section) drive

- **live**: ``EmbeddedRuntime`` on this machine, the load generator in its own process
  (``sim/fidelity_live.run_controlled_live``), and
- **simulated**: ``sim/run.simulate`` (``SimBackend``, ``SimCollector``, a ``FakeClock``)
  replaying the live run's *send times*,

and ``compare_controlled`` reports SLO attainment (within 5 points) and replica-seconds
(within 15 %) live against simulated.

**Calibrated, not fitted** (every input is printed by ``ControlledReport.text``): the
simulator takes from a *separate calibration run* (``fidelity_live.calibrate``: controller
off, Poisson arrivals, another seed) only

- each stage's work per visit = measured worker service + gateway hop (mean and SCV; the
  hop holds the replica slot, see ``sim/fidelity.py``);
- the per-request overhead outside the stages (client <-> gateway), added to every
  simulated latency;
- the replica start delay (start call to in rotation), measured by scaling every stage up
  during the calibration load; ``MeasuredStartDelays`` charges it to every start. (The
  simulator's own table would charge these weightless stages a new process, 1.9 s; a live
  start is a fork from the stage template or a pre-forked child.)

From the spec, on both sides by construction: the policy and its whole config (tick
``interval_s``, window, cooldowns, delays), replica bounds, max concurrency, the SLO; the
host's cores (the CPU compensator's cap, which the live runtime fills in) are passed to the
simulated policy too. From the checked run's *set-up* (not its results): the send times,
when its gateway started (its measurement windows' origin) and the phase of its ticks; the
simulator's time 0 is put there (``sim_shift``).

Where the two sides differed by construction, found by running them (each fixed here):

- the simulator's start delay for weightless stages (1.9 s, a new process) against ~0.1 s
  live: ``MeasuredStartDelays``;
- the service time the controller sees: the live collector reports the worker's own time,
  the simulated one the whole slot-holding visit (service + hop): ``live_view``;
- a young measurement window: live the gateway started ~10-20 s before the first send, so
  its first windows hold idle seconds; a simulator starting at the first send read the
  opening burst as a 2x higher rate and scaled up where the live controller did not;
- CPU as a reservation: ``live_host``.

The measures (replica-seconds, SLO attainment) and the report are in
``sim/fidelity_report.py``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from quartfaas.control.backend import StartTier
from quartfaas.control.registry import make_policy
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.hostcores import host_cores
from quartfaas.sim.cluster import GPU_TYPES, ClusterSpec, GpuType, ServerSpec, StartDelays
from quartfaas.sim.fidelity import StageProfile
from quartfaas.sim.pipelines import SimPipeline, from_spec
from quartfaas.sim.run import simulate
from quartfaas.spec import PipelineSpec


@dataclass(frozen=True, slots=True)
class Calibration:
    """What the calibration run measured (seconds); the simulator's only measured inputs."""

    profile: tuple[StageProfile, ...]
    entry_overhead_s: float
    start_delays_s: tuple[float, ...]  # every probed replica start
    start_tiers: tuple[str, ...]  # their start tiers, same order
    requests: int
    rate: float
    seed: int
    lateness_p99_s: float
    replicas: int = 1  # at least this many a stage during the calibration

    @property
    def start_delay_s(self) -> float:
        """The mean start delay: what ``MeasuredStartDelays`` charges every start."""
        return float(np.mean(self.start_delays_s))


@dataclass(frozen=True, slots=True)
class MeasuredStartDelays(StartDelays):
    """Every start takes ``measured_s`` (the calibration run's mean), whatever the tier."""

    measured_s: float = 0.0

    def seconds(
        self, tier: StartTier, size_gib: float, gpu: GpuType | None, warmup_s: float
    ) -> float:
        return self.measured_s


@dataclass(frozen=True, eq=False)
class ControlledRun:
    """One side of the check. Times are seconds on the arrivals' axis (first send = 0)."""

    arrivals_s: np.ndarray  # send time of every request
    latency_s: np.ndarray  # per request, NaN unless answered
    tick_times_s: np.ndarray  # controller ticks
    provisioned: np.ndarray  # (ticks, stages): starting + ready after each tick's decision
    initial: np.ndarray  # (stages,) before the first tick
    ups: int  # (tick, stage) pairs where replicas were started
    downs: int  # ... stopped
    end_s: float  # replica-seconds are counted over [0, end_s]
    origin_s: float = 0.0  # when the gateway's measurement windows began (<= 0)
    profile: tuple[StageProfile, ...] = ()  # live: the run's own (diagnostic, not a sim input)
    entry_overhead_s: float = math.nan  # live: the run's own (diagnostic)


def calibrated_pipeline(spec: PipelineSpec, calib: Calibration) -> SimPipeline:
    """``from_spec(spec)`` (bounds, concurrency, SLO) with each stage's work the calibrated
    service + hop."""
    base = from_spec(spec)
    by_name = {p.stage: p for p in calib.profile}
    stages = tuple(
        replace(st, service_s=by_name[st.name].work_mean_s, service_scv=by_name[st.name].work_scv)
        for st in base.stages
    )
    return replace(base, stages=stages, note="work = calibrated service + hop per stage")


def live_view(calib: Calibration) -> Callable[[PipelineSnapshot], PipelineSnapshot]:
    """The simulated snapshot as the live collector would report it: service without the hop.

    Live, ``service_mean_s`` is the worker's own time (``StageSnapshot``'s contract); the
    gateway's hop is not in it although it holds the slot. The simulator's visit is service
    + hop (the calibrated work), and its collector measures the whole visit. So the mean
    calibrated hop is taken off the measured mean (the variance kept); without this the
    simulated controller plans on a longer service than the live one (+15 % with a 14 ms
    hop on 90 ms) and scales where the live one does not.
    """
    hop = {p.stage: p.hop_mean_s for p in calib.profile}

    def view(snap: PipelineSnapshot) -> PipelineSnapshot:
        stages = []
        for st in snap.stages:
            m = st.service_mean_s
            if m is None or hop.get(st.name, 0.0) <= 0.0 or m <= hop[st.name]:
                stages.append(st)
                continue
            m2 = m - hop[st.name]
            scv = None if st.service_scv is None else st.service_scv * (m / m2) ** 2
            stages.append(replace(st, service_mean_s=m2, service_scv=scv))
        return replace(snap, stages=tuple(stages))

    return view


def live_host(start_delay_s: float) -> ClusterSpec:
    """One server standing for this host, with the measured start delay.

    Live, a stage's ``cpu`` is a cgroup quota, a cap and not a reservation: no start and
    no CPU resize is ever refused for want of cores. The simulated server therefore has
    cores enough for any quota (the policy's cap is still the host's cores, passed to it as
    ``host_cores``). On the ``small`` preset (16 cores a server) the CPU compensator's
    resizes were refused by the hundred in an 8-stage run ("server node0 has 0.5 free
    CPUs; replica ... asked for 1.25 more"), and such a server would refuse starts too.
    """
    server = ServerSpec("live-host", GPU_TYPES["V100"], 8, 64.0, 100_000)
    return ClusterSpec("live-host", (server,), delays=MeasuredStartDelays(measured_s=start_delay_s))


def simulate_controlled(
    spec: PipelineSpec,
    calib: Calibration,
    live: ControlledRun,
    *,
    seeds: Sequence[int] = range(5),
    cores: float | None = None,
) -> list[ControlledRun]:
    """Replay ``live``'s send times with the spec's controller on the calibrated model."""
    cfg = spec.controller.model_copy(
        update={"host_cores": spec.controller.host_cores or cores or host_cores()}
    )
    interval = cfg.interval_s
    shift = sim_shift(live, interval)
    pipe = calibrated_pipeline(spec, calib)
    cluster = live_host(calib.start_delay_s)
    out = []
    for seed in seeds:
        r = simulate(
            pipe, cluster, make_policy(cfg.policy, cfg), live.arrivals_s + shift, seed=seed,
            controller=cfg, run_until_s=live.end_s + shift + interval, observe=live_view(calib),
        )  # fmt: skip
        ups = sum(1 for e in r.scale_events if e.started > 0)
        downs = sum(1 for e in r.scale_events if e.stopped > 0)
        out.append(
            ControlledRun(
                arrivals_s=live.arrivals_s,
                latency_s=r.latency_s + calib.entry_overhead_s,
                tick_times_s=r.tick_times[1:] - shift,  # row 0 is the state before any tick
                provisioned=(r.ready + r.starting)[1:],
                initial=(r.ready + r.starting)[0],
                ups=ups,
                downs=downs,
                end_s=live.end_s,
                origin_s=-shift,
            )
        )
    return out


def sim_shift(live: ControlledRun, interval_s: float) -> float:
    """Simulated time of the first send: the live gateway's lead, moved by under half a tick
    so that the simulator's ticks (multiples of ``interval_s``) fall where the live ones did.

    The lead matters: a collector's window is "since the gateway started" while young, so
    a burst right after start reads as a higher rate than after seconds of idling.
    """
    lead = max(0.0, -live.origin_s)
    delta = (interval_s - tick_phase(live.tick_times_s, interval_s) - lead) % interval_s
    if delta > interval_s / 2 and lead + delta - interval_s >= 0.0:
        delta -= interval_s
    return lead + delta


def tick_phase(tick_times_s: np.ndarray, interval_s: float) -> float:
    """Where in ``[0, interval_s)`` the first tick at or after time 0 fell."""
    t = np.asarray(tick_times_s, dtype=np.float64)
    after = t[t >= 0.0]
    return float(after[0] % interval_s) if after.size else 0.0

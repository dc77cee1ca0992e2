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
simulated policy too. From the checked run's *set-up* (not its results): the send times and
the phase of the live controller's ticks against them (the simulator ticks at multiples of
``interval_s``; the arrivals are shifted so its ticks fall where the live ones did).

Replica-seconds on both sides: the integral over ``[0, end_s]`` (from the first send to
``tail_s`` after the last) of the replicas starting or ready right after each tick's
decision (replicas change only when a tick applies one), starting from ``min_replicas``.
SLO attainment: share of *all* sent requests answered within the SLO (failed ones miss).
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


def provisioned_seconds(
    tick_times_s: np.ndarray, provisioned: np.ndarray, initial: np.ndarray, end_s: float
) -> float:
    """Integral over ``[0, end_s]`` of the replicas per stage, summed over stages.

    The count is ``initial`` until the first tick, then what each tick left until the next.
    """
    t = np.asarray(tick_times_s, dtype=np.float64)
    first = np.asarray(initial, dtype=np.float64)
    counts = np.asarray(provisioned, dtype=np.float64).reshape(t.size, first.size)
    order = np.argsort(t, kind="stable")
    t, counts = t[order], counts[order]
    edges = np.concatenate(([0.0], np.clip(t, 0.0, end_s), [end_s]))
    levels = np.vstack([first[None, :], counts])
    return float((np.diff(edges)[:, None] * levels).sum())


def slo_attainment(latency_s: np.ndarray, slo_s: float) -> float:
    """Share of all requests answered within ``slo_s`` (NaN: not answered, a miss)."""
    lat = np.asarray(latency_s, dtype=np.float64)
    if lat.size == 0:
        return math.nan
    return float(np.count_nonzero(lat <= slo_s)) / lat.size


@dataclass(frozen=True, slots=True)
class SideSummary:
    requests: int
    answered: int
    slo_attainment: float  # 0-1
    replica_seconds: float
    ups: int
    downs: int
    p50_s: float
    p99_s: float
    peak_replicas: int  # most replicas (all stages) after any tick


def summarise(run: ControlledRun, slo_s: float) -> SideSummary:
    ok = run.latency_s[~np.isnan(run.latency_s)]
    p50, p99 = (float(x) for x in np.percentile(ok, [50, 99])) if ok.size else (math.nan,) * 2
    peak = int(run.provisioned.sum(axis=1).max()) if run.provisioned.size else 0
    return SideSummary(
        requests=int(run.latency_s.size),
        answered=int(ok.size),
        slo_attainment=slo_attainment(run.latency_s, slo_s),
        replica_seconds=provisioned_seconds(
            run.tick_times_s, run.provisioned, run.initial, run.end_s
        ),
        ups=run.ups,
        downs=run.downs,
        p50_s=p50,
        p99_s=p99,
        peak_replicas=max(peak, int(run.initial.sum())),
    )


@dataclass(frozen=True, slots=True)
class ControlledReport:
    """Live against simulated (one summary per simulator seed); the tolerances are the
    caller's (``benchmarks/fidelity.py``: 5 points, 15 %)."""

    title: str
    slo_s: float
    end_s: float
    live: SideSummary
    sims: tuple[SideSummary, ...]
    inputs: tuple[tuple[str, str], ...]  # (input, value and where it came from)
    own: tuple[SideSummary, ...] = ()  # diagnostic: the checked run's own profile as input

    @property
    def sim_slo_attainment(self) -> float:
        return float(np.mean([s.slo_attainment for s in self.sims]))

    @property
    def sim_replica_seconds(self) -> float:
        return float(np.mean([s.replica_seconds for s in self.sims]))

    @property
    def slo_gap_points(self) -> float:
        return abs(self.sim_slo_attainment - self.live.slo_attainment) * 100.0

    @property
    def replica_seconds_err(self) -> float:
        return abs(self.sim_replica_seconds - self.live.replica_seconds) / self.live.replica_seconds

    @property
    def controller_acted(self) -> bool:
        """The controller scaled up on both sides (else the check checks nothing)."""
        return self.live.ups > 0 and all(s.ups > 0 for s in self.sims)

    def within(self, slo_points: float, replica_seconds_rel: float) -> bool:
        return (
            self.controller_acted
            and self.slo_gap_points <= slo_points
            and self.replica_seconds_err <= replica_seconds_rel
        )

    def rows(self) -> list[tuple[str, ...]]:
        """The comparison table: a header, live, each sim seed, the sim mean."""

        def row(name: str, s: SideSummary) -> tuple[str, ...]:
            return (name, f"{s.requests}", f"{s.answered}", f"{s.slo_attainment * 100:.1f}",
                    f"{s.replica_seconds:.1f}", f"{s.ups}", f"{s.downs}", f"{s.peak_replicas}",
                    f"{s.p50_s * 1e3:.0f}", f"{s.p99_s * 1e3:.0f}")  # fmt: skip

        header = ("side", "requests", "answered", "SLO att. %", "replica-s", "ups", "downs",
                  "peak reps", "p50_ms", "p99_ms")  # fmt: skip
        out: list[tuple[str, ...]] = [header]
        out.append(row("live", self.live))
        out += [row(f"sim seed {i}", s) for i, s in enumerate(self.sims)]
        out.append(("sim mean", "", "", f"{self.sim_slo_attainment * 100:.1f}",
                    f"{self.sim_replica_seconds:.1f}", "", "", "", "", ""))  # fmt: skip
        if self.own:
            mean = SideSummary(
                requests=self.own[0].requests,
                answered=round(float(np.mean([s.answered for s in self.own]))),
                slo_attainment=float(np.mean([s.slo_attainment for s in self.own])),
                replica_seconds=float(np.mean([s.replica_seconds for s in self.own])),
                ups=round(float(np.mean([s.ups for s in self.own]))),
                downs=round(float(np.mean([s.downs for s in self.own]))),
                p50_s=float(np.mean([s.p50_s for s in self.own])),
                p99_s=float(np.mean([s.p99_s for s in self.own])),
                peak_replicas=max(s.peak_replicas for s in self.own),
            )
            out.append(row("sim own-prof.*", mean))
        return out

    def text(self, slo_points: float = 5.0, replica_seconds_rel: float = 0.15) -> str:
        rows = self.rows()
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        lines = [self.title]
        lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
        ok = self.within(slo_points, replica_seconds_rel)
        lines.append(
            f"gap: SLO attainment {self.slo_gap_points:.1f} points (bar {slo_points:g}), "
            f"replica-seconds {self.replica_seconds_err:.1%} (bar {replica_seconds_rel:.0%}), "
            f"controller acted on both sides: {'yes' if self.controller_acted else 'NO'} -> "
            f"{'PASS' if ok else 'FAIL'}"
        )
        if self.own:
            lines.append(
                "* diagnostic, not the check: the simulator fed the checked run's own profile "
                "(mean over the seeds); its gap to the live row is the model's alone, the "
                "rest of the sim rows' gap is calibration drift (host load between the runs)"
            )
        lines.append("simulator inputs:")
        lines += [f"  {k}: {v}" for k, v in self.inputs]
        return "\n".join(lines) + "\n"


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
    return ClusterSpec(
        "live-host", (server,), delays=MeasuredStartDelays(measured_s=start_delay_s)
    )


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


def compare_controlled(
    spec: PipelineSpec,
    calib: Calibration,
    live: ControlledRun,
    sims: Sequence[ControlledRun],
    *,
    workload: str,
    cores: float | None = None,
    own: Sequence[ControlledRun] = (),
) -> ControlledReport:
    """The report: both sides summarised, and every simulator input with its source."""
    slo_s = spec.slo.p99_ms / 1000.0
    cfg = spec.controller
    ms = 1000.0
    def works(profile: Sequence[StageProfile]) -> str:
        return ", ".join(
            f"{p.stage} {p.work_mean_s * ms:.1f} ms (svc {p.service_mean_s * ms:.1f} + hop "
            f"{p.hop_mean_s * ms:.2f}, scv {p.work_scv:.3f})"
            for p in profile
        )

    work = works(calib.profile)
    d = np.asarray(calib.start_delays_s) * ms
    tiers = {t: calib.start_tiers.count(t) for t in sorted(set(calib.start_tiers))}
    calibrated = f"calibration run (Poisson {calib.rate:g}/s, seed {calib.seed}, " \
        f">= {calib.replicas} replica(s) a stage, " \
        f"{calib.requests} requests, controller off, generator lateness p99 " \
        f"{calib.lateness_p99_s * ms:.1f} ms)"  # fmt: skip
    inputs: tuple[tuple[str, str], ...] = (
        ("stage work per visit [calibrated]", work),
        ("per-request overhead [calibrated]", f"{calib.entry_overhead_s * ms:.2f} ms"),
        ("replica start delay [calibrated]",
         f"mean {d.mean():.0f} ms charged to every start (n {d.size}, min {d.min():.0f}, "
         f"median {np.median(d):.0f}, max {d.max():.0f} ms; tiers {tiers})"),
        ("calibrated inputs from", calibrated),
        ("policy and config [spec, both sides]",
         f"{cfg.policy}, tick {cfg.interval_s:g} s, window {cfg.window_s:g} s, up cooldown "
         f"{cfg.up_cooldown_s:g} s, down cooldown {cfg.down_cooldown_s:g} s, downscale delay "
         f"{cfg.downscale_delay_s:g} s, smoother {cfg.smoother}, compensator {cfg.compensator}"),
        ("host cores [this host, both sides]", f"{cfg.host_cores or cores or host_cores():g}"),
        ("stages [spec]",
         f"{len(spec.stages)} x replicas {spec.stages[0].min_replicas}-"
         f"{spec.stages[0].max_replicas}, max_concurrency {spec.stages[0].max_concurrency}"),
        ("arrivals [checked run's set-up]",
         f"its {live.arrivals_s.size} send times ({workload}); its gateway started "
         f"{-live.origin_s:.2f} s before the first send, its ticks "
         f"{tick_phase(live.tick_times_s, cfg.interval_s) * ms:.0f} ms after whole seconds "
         f"of the send axis; simulated time starts {sim_shift(live, cfg.interval_s):.2f} s "
         f"before the first send"),
    )  # fmt: skip
    if live.profile:  # what the checked run itself measured: evidence, never an input
        inputs += (("[diagnostic, not an input] checked run's own work per visit",
                    f"{works(live.profile)}; per-request overhead "
                    f"{live.entry_overhead_s * ms:.2f} ms"),)  # fmt: skip
    title = (
        f"controlled run: {spec.name}, {workload}, SLO p99 {spec.slo.p99_ms:g} ms, "
        f"replica-seconds over 0-{live.end_s:.0f} s, {len(sims)} simulator seed(s)"
    )
    return ControlledReport(
        title=title,
        slo_s=slo_s,
        end_s=live.end_s,
        live=summarise(live, slo_s),
        sims=tuple(summarise(s, slo_s) for s in sims),
        inputs=inputs,
        own=tuple(summarise(s, slo_s) for s in own),
    )

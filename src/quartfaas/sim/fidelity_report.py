"""The controlled-run fidelity check's measures and verdict (``sim/fidelity_control.py``).

- ``provisioned_seconds``: replica-seconds, the integral over ``[0, end_s]`` of the replicas
  starting or ready right after each tick's decision (replicas change only when a tick
  applies one), from ``min_replicas`` before the first tick; the same on both sides;
- ``slo_attainment``: share of *all* sent requests answered within the SLO (a failed or
  unanswered one misses it);
- ``ControlledReport``: live against each simulator seed, the gaps (SLO attainment in
  points, replica-seconds relative), whether the controller acted on both sides, and every
  simulator input with where it came from (``compare_controlled`` builds it). The
  tolerances are the caller's: ``benchmarks/fidelity.py`` uses 5 points and 15 %.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quartfaas.hostcores import host_cores
from quartfaas.sim.fidelity import StageProfile
from quartfaas.sim.fidelity_control import Calibration, ControlledRun, sim_shift, tick_phase
from quartfaas.spec import PipelineSpec


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

"""The tail model's inputs as the corrector reads them from a snapshot.

Unknown or non-finite measurements are ``None``; unknown squared coefficients of variation
count as 1 (M/M/c); the service rate is never assumed (``None`` without a measured mean).

``ArrivalForecast`` is what the Pipeline Smoother hands the corrector: per stage, the
arrival SCV and rate expected over the horizon in which the burst now upstream reaches the
stage (``smoother.PipelineSmoother.forecast``). It lives here, below the smoother, so the
corrector can read it without importing the smoother (``control/`` layering).
``stage_load`` turns a stage (and its forecast) into the ``StageLoad`` the planner plans on.
``capacity_floor`` keeps feedback from planning on more capacity than measured.
``read_tail`` reads a stored latency quantile and says which quantile it is;
``read_inputs`` sorts a snapshot's stages into planned ones (with their loads) and ones
held at a count (no known rate, or arrivals but no measured service time).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from quartfaas.control.corrector.tailmodel import MAX_SCV, StageLoad
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, StageSnapshot

NO_DATA = "no-data"


class ArrivalForecast(NamedTuple):
    """One stage's arrivals over the planning horizon (``None``: no forecast)."""

    stage: str
    scv: float | None
    rate_per_s: float | None
    why: str


def finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def stage_scvs(s: StageSnapshot) -> tuple[float, float]:
    """Measured ``(ca², cs²)``, 1 where unknown."""
    cv = finite(s.arrival_cv)
    scv_s = finite(s.service_scv)
    return (1.0 if cv is None or cv < 0 else cv * cv), (
        1.0 if scv_s is None or scv_s < 0 else scv_s
    )


def service_rate(s: StageSnapshot) -> float | None:
    mean = finite(s.service_mean_s)
    return 1.0 / mean if mean is not None and mean > 0 else None


def read_tail(stats: LatencyStats, q: float) -> tuple[float | None, float]:
    """The stored quantile ``LatencyStats.quantile(q)`` returns, and which one it is
    (p50/p95/p99), so a model is compared at the quantile actually measured."""
    stored = 0.5 if q <= 0.5 else 0.95 if q <= 0.95 else 0.99
    value = finite(stats.quantile(q))
    return (value if value is not None and value > 0 else None), stored


def stage_load(
    s: StageSnapshot, lam: float, mean_s: float, forecast: ArrivalForecast | None
) -> tuple[StageLoad, str]:
    """The planner's input for stage ``s`` and the text that says what went in.

    The arrival rate is the larger of the measured one and the forecast; the burst factor
    (the arrival variability the wait tail is stretched by) is the larger of the measured
    inter-arrival SCV and the forecast SCV. One replica costs 1 (the snapshot does not
    say how many accelerators a replica holds; all of a pipeline's replicas count alike).
    """
    ca2, cs2 = stage_scvs(s)
    rate, burst, extra = lam, None, ""
    if forecast is not None:
        if forecast.rate_per_s is not None and lam < forecast.rate_per_s < math.inf:
            rate = forecast.rate_per_s
        if forecast.scv is not None and ca2 < forecast.scv < math.inf:
            burst = forecast.scv
        if rate > lam or burst is not None:
            extra = f" [forecast: {forecast.why}]"
    load = StageLoad(
        s.name,
        rate,
        mean_s,
        min(cs2, MAX_SCV),
        ca2,
        burst,
        servers_per_replica=max(1, s.max_concurrency),
        min_replicas=s.min_replicas,
        max_replicas=max(s.min_replicas, s.max_replicas),
    )
    text = f"λ={rate:.3g}/s, E[S]={mean_s:.3g}s, ca²={ca2:.2g}"
    if burst is not None:
        text += f" (burst {burst:.2g})"
    return load, f"{text}, cs²={cs2:.2g}{extra}"


def capacity_floor(corrected: StageLoad, measured: StageLoad, max_util: float) -> StageLoad:
    """``corrected`` with ``min_replicas`` raised so the *measured* service time keeps the
    stage's utilisation at most ``max_util`` (within its bounds).

    The learned factor (``feedback.py``) scales the service mean to make the modelled tail
    match the measured one. A factor below 1 says the model over-states the *wait*; it is
    no evidence that a replica serves faster than measured. Planning on the shrunk mean
    sized stages for up to ``1 + max_rel`` times their real capacity, so a burst found
    them saturated: on the simulator's paper cluster, MMPP CV 4 at 200 req/s, seed 1,
    SLO attainment was 94.5% with it and 99.98% with this floor (``benchmarks/
    policy_compare.py``). A factor above 1 is kept as is (more replicas, never fewer).
    """
    return floor_at(corrected, measured.offered_load, max_util)


def floor_at(corrected: StageLoad, measured_load: float, max_util: float) -> StageLoad:
    """``capacity_floor`` for a measured offered load ``λ·E[S]`` (busy servers) given as a
    number (same servers per replica as ``corrected``)."""
    spr = corrected.servers_per_replica
    need = math.ceil(measured_load / (spr * max_util) - 1e-9) if max_util > 0 else 0
    floor = min(max(need, corrected.min_replicas), corrected.max_replicas)
    if floor <= corrected.min_replicas:
        return corrected
    return corrected.with_min_replicas(floor)


class PlanInputs:
    """One tick's per-stage inputs: planned stages (with loads) and fixed ones."""

    def __init__(self) -> None:
        self.planned: list[int] = []  # snapshot indices of planned stages
        self.loads: list[StageLoad] = []  # with the forecast
        self.rates: list[float] = []  # the measured arrival rates of ``loads``
        self.spans: list[float] = []  # the time each measured rate covers (``observed_s``)
        self.texts: list[str] = []
        self.fixed: dict[int, tuple[int, str]] = {}  # index -> (count, why)
        self.fixed_tail_s = 0.0  # the fixed stages' measured tails, off the SLO
        self._measured: list[StageLoad] | None = None

    @property
    def measured(self) -> list[StageLoad]:
        """The loads without the forecast (what the window saw): ``stage_load(s, lam,
        mean, None)``'s, the same object where the forecast changed nothing. Made on first
        use: only feedback ticks and the upper threshold read them."""
        if self._measured is None:
            self._measured = [
                load
                if load.arrival_rate == lam and load.burst_factor is None
                else load.with_arrivals(lam, None)
                for load, lam in zip(self.loads, self.rates, strict=True)
            ]
        return self._measured

    @measured.setter
    def measured(self, loads: list[StageLoad]) -> None:
        self._measured = loads


def observed_s(s: StageSnapshot, rate: float, window_s: float) -> float:
    """The time a stage's measured ``rate`` covers: ``window_s``, or less while the window
    is younger than that (a gateway or a simulation that started less than a window ago
    measures its rates over the time seen so far), read as ``arrivals / rate`` where the
    collector counts the arrivals. The noise bands shrink with the arrivals the planned
    rate stands for, ``rate × observed_s``: at 1 s of a 10 s window, a tenth of
    ``rate × window_s``. Within 1e-6 of the window (the count over the rate differs from
    it by rounding) it is the window itself."""
    if s.arrivals <= 0 or not rate > 0:
        return window_s
    span = s.arrivals / rate
    return window_s if span >= window_s * (1.0 - 1e-6) else span


def read_inputs(
    snapshot: PipelineSnapshot, forecast: Sequence[ArrivalForecast] | None, q: float
) -> PlanInputs:
    """Sort the stages into planned and fixed ones (module docstring)."""
    fc = {f.stage: f for f in forecast or ()}
    out = PlanInputs()
    for i, s in enumerate(snapshot.stages):
        lam = finite(s.arrival_rate)
        mean = finite(s.service_mean_s)
        idle = lam == 0 and s.queue_len == 0 and s.in_flight == 0
        if lam is None or lam < 0:
            out.fixed[i] = (s.replicas, f"{NO_DATA}: arrival rate unknown; holding")
        elif mean is None or mean <= 0:
            if idle:
                out.fixed[i] = (s.min_replicas, "idle (no arrivals in the window)")
            else:
                keep = max(s.replicas, 1)
                out.fixed[i] = (keep, "μ unknown (no completions measured): not planned")
        else:
            load, text = stage_load(s, lam, mean, fc.get(s.name))
            out.planned.append(i)
            out.loads.append(load)
            out.rates.append(lam)
            out.spans.append(observed_s(s, lam, snapshot.window_s))
            out.texts.append(text)
            continue
        tail, _ = read_tail(s.latency, q)
        if tail is not None and not idle:
            out.fixed_tail_s += tail
    return out


__all__ = [
    "NO_DATA",
    "ArrivalForecast",
    "PlanInputs",
    "finite",
    "floor_at",
    "observed_s",
    "read_inputs",
    "read_tail",
    "service_rate",
    "stage_load",
    "stage_scvs",
]

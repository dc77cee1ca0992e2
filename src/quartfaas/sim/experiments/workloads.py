"""The workload of an experiment and its size, known before any run starts.

``make_workload`` reads a trace name or a ``kind:key=value`` string; ``Estimate`` refuses,
with the numbers, a comparison of more than ``max_visits`` stage visits (records cost ~28
bytes a visit), and says how long it would take by the measured ``MEASURED_SPEED``.
``peak_rate`` feeds the static baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from quartfaas.errors import SimulationError, SpecError
from quartfaas.sim.speed import SpeedModel
from quartfaas.workload import Workload
from quartfaas.workload.traces import NAMED_TRACES

# How long a run takes, measured (not assumed): ``python benchmarks/sim_speed.py`` on the
# shared 2-vCPU development machine, 2026-12-02, bert-21b-me-21 at 300 req/s, 1M requests:
# engine 3.18 CPU s for 21.0M visits (0.151 us a visit); the closed loop with the full
# Quart policy (shipped GAT) 10.54 CPU s over ~3,334 ticks, i.e. 2.2 ms a tick beyond the
# engine (1.99M visits per CPU s at that load). ``sim/speed.calibrate`` refits both terms
# for another policy or machine.
MEASURED_SPEED = SpeedModel(per_visit_s=1.51e-7, per_tick_s=2.2e-3, policy="quart")


STATIC_PEAK_WINDOW_S = 1.0


def make_workload(text: str, *, rate: float | None = None, seed: int = 0) -> Workload:
    """A workload from a trace name (``azure-code``) or a ``kind:key=value`` string.

    ``rate`` sets the mean rate: a trace reaches it at its own time scale by envelope
    thinning over the replayed window (``workload/trace_rate.py``; ``method=superpose`` or
    ``method=squeeze`` in the string choose another way), a synthetic kind gets ``rate=``
    (giving it in the string too is an error). A trace is resampled with ``seed`` even
    without a rate, so every seed is an independent realisation.
    """
    text = text.strip()
    if ":" not in text and text in NAMED_TRACES:
        text = f"trace:{text}"
    if text.startswith("trace:") and "method=" not in text and "compress=" not in text:
        # The trace's own time scale, one realisation per seed (workload/trace_rate.py),
        # also without rate= (resampled at its own mean rate): the seed always matters.
        text += ",method=thinning"
    if rate is not None:
        kind, _, rest = text.partition(":")
        text = f"{kind}:{rest + ',' if rest else ''}rate={float(rate)!r}"
    try:
        return Workload.parse(text, seed=seed)
    except SpecError as exc:
        if text.partition(":")[0] in ("poisson", "gamma", "erlang", "hyperexp", "mmpp", "trace"):
            raise
        raise SpecError(
            f"unknown workload {text!r}: use a trace name ({', '.join(sorted(NAMED_TRACES))}) "
            f"or a generator such as mmpp:rate=20,cv=4, poisson:rate=20, gamma:rate=20,cv=2 "
            f"({exc})"
        ) from None


def arrivals_for(workload: Workload, duration_s: float | None) -> np.ndarray:
    """Arrival times; a trace without ``duration_s`` is replayed once."""
    return np.asarray(workload.arrivals(duration_s), dtype=np.float64)


def expected_requests(workload: Workload, duration_s: float | None) -> int:
    """Requests the workload will produce, known before generating (traces are read)."""
    if workload.kind == "trace" and workload.get("method") in ("thinning", "superpose"):
        once = workload.trace(None)  # the trace's span at the target rate
        if duration_s is None or once.duration_s <= 0:
            return len(once)
        return math.ceil(len(once) * duration_s / once.duration_s)
    if workload.kind == "trace":
        once = workload.trace(None)  # one replay; covering a long duration repeats it
        if duration_s is None or once.mean_rate is None:
            return len(once)
        return math.ceil(len(once) * duration_s / (once.duration_s + 1.0 / once.mean_rate))
    if duration_s is None:
        raise SpecError(f"workload {workload} needs a duration (--duration)")
    mean = workload.mmpp_process().mean_rate if workload.kind == "mmpp" else workload.get("rate")
    assert isinstance(mean, float)
    return math.ceil(mean * duration_s)


def peak_rate(arrivals: np.ndarray, window_s: float = STATIC_PEAK_WINDOW_S) -> float:
    """Highest arrival count in any ``[t, t + window_s)`` starting at an arrival, per second."""
    if arrivals.size == 0:
        return 0.0
    ends = np.searchsorted(arrivals, arrivals + window_s, side="left")
    return float(np.max(ends - np.arange(arrivals.size))) / window_s


@dataclass(frozen=True, slots=True)
class Estimate:
    requests: int
    stages: int
    runs: int
    ticks: int

    @property
    def visits(self) -> int:
        return self.requests * self.stages * self.runs

    @property
    def seconds(self) -> float:
        """CPU seconds the runs will take by ``MEASURED_SPEED`` (visit and tick costs)."""
        return MEASURED_SPEED.seconds(self.visits, self.ticks * self.runs)

    def check(self, max_visits: int, what: str = "") -> None:
        if self.visits <= max_visits:
            return
        raise SimulationError(
            f"{what or 'this run'} would simulate {self.requests:,} requests x {self.stages} "
            f"stages x {self.runs} runs = {self.visits:,} stage visits (~{self.seconds:.0f} s), "
            f"over the limit of {max_visits:,}; shorten --duration, lower the rate (--rate, "
            "--loads), run fewer policies, or raise --max-visits"
        )

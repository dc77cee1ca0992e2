"""A stage's service time remembered over many completions, not one window (pure).

Neighbours: ``corrector.py`` puts these values in place of each stage's measured service
mean and SCV before it reads its inputs (``inputs.py``), so the plan, the feedback and
the backlog rule all see them; ``ControllerConfig.service_memory_samples`` and
``service_memory_max_s`` set it. The arrival rate and arrival SCV are *not* remembered:
a burst shows in them, and the corrector must see it in one tick.

Why: a stage's service time belongs to its model and its CPU and moves slowly, but one
window measures it from few completions at low rates. Ten seconds of 5 req/s hold ~50,
so the mean of an exponential service time moves by +-28% (two standard errors) from
window to window, and its SCV by more. On ``benchmarks/flapping.py`` (3 stages, constant
Poisson load) those moves alone made the planner ask for one replica more or less
every few minutes: 9 to 22 scale actions in 30 minutes per seed at 5 req/s.

How: the mean and the SCV are weighted means over the windows (the SCV itself rather
than the second moment, so a deterministic stage, SCV 0 in every window, stays
deterministic for the tail model's grouping however its mean drifts). The memory counts
the completions behind it, up to ``samples``: each tick adds the ``departure_rate * dt``
fresh ones and moves it toward the window by their share, ``alpha = fresh / count``, and
by at least ``dt / max_age_s``, so a real change of the service time (a slower CPU, a new
batch size) shows within about ``max_age_s``. While the window holds at least as many
completions as the memory (at start-up, and from ``samples`` completions a window on),
the window is used as it is: a memory started from a window of two completions must not
outweigh the next windows of fifty (it held a stage at a start-up estimate and let its
p99 double under bursts). A stage without a measured mean keeps its memory unchanged; a
memory older than ``max_age_s`` is dropped and starts again from the window.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from quartfaas.control.corrector.inputs import finite
from quartfaas.control.snapshot import StageSnapshot
from quartfaas.frozen import fast_init


@fast_init
@dataclass(frozen=True, slots=True)
class ServiceMemory:
    """The remembered moments of one stage's service time at ``at_s``."""

    mean_s: float
    scv: float | None  # None while the SCV is unknown
    count: float  # completions behind the memory (at most ``samples``)
    at_s: float


def remember(
    s: StageSnapshot,
    memory: ServiceMemory | None,
    now: float,
    window_s: float,
    *,
    samples: float,
    max_age_s: float,
) -> tuple[StageSnapshot, ServiceMemory | None]:
    """``s`` with its service mean and SCV taken from the memory updated by this window,
    and the updated memory (``samples <= 0``: ``s`` unchanged, no memory)."""
    mean = finite(s.service_mean_s)
    if samples <= 0:
        return s, None
    if mean is None or mean <= 0:
        return s, memory  # nothing measured: keep what was remembered, use nothing
    scv = finite(s.service_scv)
    if scv is not None and scv < 0:
        scv = None
    rate = finite(s.departure_rate)
    if rate is None or rate < 0:
        rate = finite(s.arrival_rate) or 0.0
    rate = max(0.0, rate)
    # completions in the window: its latency samples where counted (a window not yet
    # full at start-up holds fewer than rate x window)
    in_window = float(s.latency.count) if s.latency.count > 0 else rate * window_s
    dt = math.inf if memory is None else now - memory.at_s
    if memory is None or not 0 <= dt <= max_age_s:
        new = ServiceMemory(mean, scv, min(in_window, samples), now)
    else:
        fresh = rate * min(dt, window_s)
        count = min(samples, memory.count + fresh)
        if in_window >= count:  # the window knows at least as much as the memory
            new = ServiceMemory(mean, scv, in_window, now)
        else:
            alpha = min(1.0, max(fresh / count, dt / max_age_s))
            old_scv = memory.scv
            scv_mem = (
                scv  # the SCV (re)appears or vanishes: the window's, or none
                if scv is None or old_scv is None
                else old_scv + alpha * (scv - old_scv)
            )
            mean_mem = memory.mean_s + alpha * (mean - memory.mean_s)
            new = ServiceMemory(mean_mem, scv_mem, count, now)
    scv_out = new.scv if new.scv is not None else s.service_scv
    if new.mean_s == s.service_mean_s and scv_out == s.service_scv:
        return s, new  # the window as it is: no copy (a tick makes one per stage)
    return s.with_service(new.mean_s, scv_out), new


__all__ = ["ServiceMemory", "remember"]

"""What the CPU Compensator remembers: one compensation episode per stage.

``StageCpuState`` is one stage's episode (its ``Phase``, the allocation before and now, the
step size, the latency it is judged against); ``CompensatorState`` holds them all, frozen.
A finished episode is also a measurement of the CPU a replica needed
(``episode_sample``), which ``cpu_demand.fit_demand_model`` fits.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from quartfaas.control.compensator.cpu_demand import DemandSample
from quartfaas.frozen import fast_init


class Phase(StrEnum):
    IDLE = "idle"
    RAISING = "raising"  # a raise is applied; waiting settle_s before judging it
    HOLDING = "holding"  # raising has ended; the allocation stays until load falls


@fast_init
@dataclass(frozen=True, slots=True)
class StageCpuState:
    """One stage's compensation episode. ``IDLE`` means the compensator owns nothing."""

    phase: Phase = Phase.IDLE
    base_cpu: float = 0.0  # CPU per replica before the episode (what a give-back returns to)
    cpu: float = 0.0  # last accepted allocation
    proposed_cpu: float | None = None  # the raise being judged (RAISING only)
    increment: float = 0.0
    steps: int = 0
    since: float = 0.0  # when the allocation last changed
    latency_before_s: float | None = None
    comparable: bool = True  # latency_before was measured at the same replica count
    replicas_before: int = 0  # replicas when the episode began (λc = this / now)
    replicas_at_step: int = 0  # replicas when the raise being judged was applied
    concentration: float = 1.0
    demand_cpu: float = 0.0
    low_since: float | None = None
    outcome: str = ""  # why raising ended: met-budget, no-gain, max-steps, at-cap, ...

    @property
    def allocation(self) -> float | None:
        if self.phase is Phase.IDLE:
            return None
        return self.proposed_cpu if self.proposed_cpu is not None else self.cpu


@fast_init
@dataclass(frozen=True, slots=True)
class CompensatorState:
    stages: tuple[tuple[str, StageCpuState], ...] = ()

    def get(self, stage: str) -> StageCpuState:
        for name, st in self.stages:
            if name == stage:
                return st
        return StageCpuState()


def episode_sample(state: StageCpuState) -> DemandSample | None:
    """A finished episode as a ``(λc, cores needed)`` measurement for ``fit_demand_model``.

    Only episodes that ended because the budget was met or a raise stopped paying measure
    what the replica needed; one that hit the cap or ``max_steps`` gives a lower bound.
    """
    if state.phase is not Phase.HOLDING or state.outcome not in ("met-budget", "no-gain"):
        return None
    return DemandSample(state.concentration, state.cpu, state.base_cpu)


__all__ = ["CompensatorState", "Phase", "StageCpuState", "episode_sample"]

"""What the Replica Corrector remembers between ticks and what it hands on.

``CorrectorState`` (one ``StageState`` per stage: hysteresis and guard memory; and the
learned model factors of ``feedback.py``) is the corrector's frozen state.
``CorrectorTargets`` (one ``StageTarget`` per stage: the guarded target, the raw count
and how it was reached) is the hook the Pipeline Smoother and the CPU Compensator
post-process; ``CorrectorTargets.decision`` turns it into the ``Decision`` the
control loop applies (the corrector alone and ``QuartPolicy`` both end with it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from quartfaas.control.corrector.feedback import FeedbackState
from quartfaas.control.corrector.guards import GuardMemory
from quartfaas.control.corrector.hysteresis import HysteresisState
from quartfaas.control.corrector.servicememory import ServiceMemory
from quartfaas.control.policy import Decision, StageDecision
from quartfaas.frozen import fast_init


@fast_init
@dataclass(frozen=True, slots=True)
class StageState:
    """What the corrector remembers about one stage."""

    name: str
    hysteresis: HysteresisState = field(default_factory=HysteresisState)
    guard: GuardMemory = field(default_factory=GuardMemory)
    changed_s: float | None = None  # when the count last changed (feedback waits a window)
    service: ServiceMemory | None = None  # the remembered service time (servicememory.py)


@fast_init
@dataclass(frozen=True, slots=True)
class CorrectorState:
    """The corrector's state: one ``StageState`` per stage, in snapshot stage order, and
    the model-input feedback's learned factors."""

    stages: tuple[StageState, ...] = ()
    last_now: float | None = None  # ``now`` of the tick that produced it (None: fresh)
    feedback: FeedbackState = field(default_factory=FeedbackState)


class StageTarget(NamedTuple):
    """One stage's target and how it was reached (the hook for smoother/compensator).

    Immutable; a NamedTuple rather than a frozen dataclass because one is built per stage
    per tick and the tick budget notices the difference.
    """

    stage: str
    current: int
    target: int
    raw: int
    reason: str
    model: int | None = None  # the joint plan's count (None: the stage was not planned)
    backlog: int | None = None  # replicas needed to drain the queue within the budget
    factor: float = 1.0  # learned service-time factor of the model (feedback.py)
    budget_s: float | None = None  # derived: the stage's modelled sojourn quantile at the plan
    tail_s: float | None = None
    critical: bool = False
    score: float = 0.0


@fast_init
@dataclass(frozen=True, slots=True)
class CorrectorTargets:
    """All stages' targets at ``now``; ``hold`` when the snapshot had no usable data."""

    now: float
    stages: tuple[StageTarget, ...]
    hold: bool = False
    reason: str = ""

    def decision(self, policy: str, note: str = "") -> Decision:
        """The ``Decision`` of ``policy`` at ``now``: each target as a stage's replica count,
        with ``note`` (if any) appended to the overall reason."""
        stages = tuple(
            StageDecision(
                stage=t.stage,
                current=t.current,
                replicas=t.target,
                reason=t.reason,
                critical=t.critical,
                score=t.score,
            )
            for t in self.stages
        )
        reason = f"{self.reason}; {note}" if note else self.reason
        return Decision(self.now, policy, stages, self.hold, reason)


__all__ = ["CorrectorState", "CorrectorTargets", "StageState", "StageTarget"]

"""The policy seam: ``decide(snapshot, state) -> (decision, state)``.

Every scaling policy (Quart and the baselines) implements ``Policy``. A policy is pure: it
reads a ``PipelineSnapshot`` (with ``now`` inside), returns a ``Decision`` and its next
state (a frozen dataclass), and never performs I/O or reads a clock. The live control
loop (``control/loop.py``) and the simulator call the same policies; only the collector,
the clock and the backend differ.

A decision lists, per stage, the target replica count (and optionally a target CPU per
replica) with a human-readable ``reason``; the loop applies it through the ``Backend``
protocol and logs/export the reasons. "No data" is an ordinary decision: ``hold``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol, runtime_checkable

from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.frozen import fast_init


class Action(StrEnum):
    HOLD = "hold"
    UP = "scale-up"
    DOWN = "scale-down"


@fast_init
@dataclass(frozen=True, slots=True)
class StageDecision:
    """What to do with one stage, and why."""

    stage: str
    current: int
    replicas: int
    reason: str
    cpu_per_replica: float | None = None
    critical: bool = False
    score: float = 0.0

    def with_cpu(self, cpu_per_replica: float | None, reason: str) -> StageDecision:
        """This decision with a CPU target and reason: ``dataclasses.replace`` spelled out
        (several times faster; the CPU Compensator makes one per stage it sets a tick).
        ``test_with_cpu_is_replace`` fails if a field is added and not listed here."""
        return StageDecision(
            self.stage,
            self.current,
            self.replicas,
            reason,
            cpu_per_replica,
            self.critical,
            self.score,
        )

    @property
    def action(self) -> Action:
        if self.replicas > self.current:
            return Action.UP
        if self.replicas < self.current:
            return Action.DOWN
        return Action.HOLD


@fast_init
@dataclass(frozen=True, slots=True)
class Decision:
    """One tick's decision for a whole pipeline."""

    now: float
    policy: str
    stages: tuple[StageDecision, ...]
    hold: bool = False
    reason: str = ""

    def target(self, stage: str) -> int:
        for d in self.stages:
            if d.stage == stage:
                return d.replicas
        raise KeyError(stage)

    def as_dict(self) -> dict[str, Any]:
        return {
            "now": self.now,
            "policy": self.policy,
            "hold": self.hold,
            "reason": self.reason,
            "stages": [
                {
                    "stage": d.stage,
                    "current": d.current,
                    "replicas": d.replicas,
                    "action": d.action.value,
                    "cpu_per_replica": d.cpu_per_replica,
                    "critical": d.critical,
                    "score": d.score,
                    "reason": d.reason,
                }
                for d in self.stages
            ],
        }


def hold_all(snapshot: PipelineSnapshot, policy: str, reason: str) -> Decision:
    """Keep every stage where it is (the answer to missing or stale data)."""
    return Decision(
        now=snapshot.now,
        policy=policy,
        hold=True,
        reason=reason,
        stages=tuple(
            StageDecision(stage=s.name, current=s.replicas, replicas=s.replicas, reason=reason)
            for s in snapshot.stages
        ),
    )


@runtime_checkable
class Policy(Protocol):
    """A pure scaling policy. ``State`` is the policy's own frozen dataclass."""

    name: str

    def initial_state(self, snapshot: PipelineSnapshot) -> Any:
        """State for a (re)started controller, built from what is observable now."""
        ...

    def decide(self, snapshot: PipelineSnapshot, state: Any) -> tuple[Decision, Any]:
        """The decision at ``snapshot.now`` and the next state."""
        ...

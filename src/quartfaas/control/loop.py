"""The control loop: the only impure part of ``control/``.

Each tick: a snapshot (collected by the driver) -> ``policy.decide`` -> apply through the
``Backend`` -> record the decision and what was applied. The same ``ControlLoop`` runs
live (``run_live`` awaits a collector every ``interval_s`` on the monotonic clock) and in
the simulator (the engine calls ``step`` at simulated tick times). Only the clock, the
collector and the backend differ.

A backend failure on one stage is recorded and does not stop the other stages' actions.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from quartfaas.clock import Clock
from quartfaas.control.backend import Backend, ReplicaState, reconcile
from quartfaas.control.policy import Decision, Policy
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.errors import QuartfaasError

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class Applied:
    """What the loop did for one decision: per-stage starts/stops/CPU and errors."""

    started: dict[str, int] = field(default_factory=dict)
    stopped: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, str] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)


class DecisionSink(Protocol):
    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        """Persist/export one tick (JSONL log, Prometheus gauges, simulator trace)."""
        ...


class ControlLoop:
    """Decide and apply, one snapshot at a time. Holds the policy's state between ticks."""

    def __init__(
        self,
        policy: Policy,
        backend: Backend,
        sinks: list[DecisionSink] | None = None,
    ) -> None:
        self.policy = policy
        self.backend = backend
        self.sinks = sinks or []
        self.state: Any = None
        self.last_decision: Decision | None = None
        self._last_error: dict[str, str] = {}

    def step(self, snapshot: PipelineSnapshot) -> Decision:
        if self.state is None:
            # A (re)started controller rebuilds its state from what it observes now,
            # so a restart does not cause a burst of scale actions.
            self.state = self.policy.initial_state(snapshot)
        decision, self.state = self.policy.decide(snapshot, self.state)
        applied = Applied() if decision.hold else self.apply(decision)
        self.last_decision = decision
        for sink in self.sinks:
            try:
                sink.record(snapshot, decision, applied)
            except Exception:  # a broken log must not stop the controller
                log.exception("decision sink %r failed", sink)
        return decision

    def apply(self, decision: Decision) -> Applied:
        applied = Applied()
        for d in decision.stages:
            try:
                plan = reconcile(self.backend, d.stage, d.replicas)
                if plan.start:
                    applied.started[d.stage] = plan.start
                if plan.stop:
                    applied.stopped[d.stage] = len(plan.stop)
                if d.cpu_per_replica is not None:
                    levers = {
                        self.backend.set_cpu(r.replica_id, d.cpu_per_replica).value
                        for r in self.backend.list_replicas(d.stage)
                        if r.state in (ReplicaState.READY, ReplicaState.STARTING)
                        and r.cpu != d.cpu_per_replica
                    }
                    if levers:
                        applied.cpu[d.stage] = ",".join(sorted(levers))
            except (QuartfaasError, OSError) as exc:
                applied.errors[d.stage] = str(exc)
            # Warn when a stage's error starts or changes, not on every tick it repeats
            # (the decision log and the metrics count each one).
            err = applied.errors.get(d.stage, "")
            if err != self._last_error.get(d.stage, ""):
                if err:
                    log.warning("applying decision for stage %s failed: %s", d.stage, err)
                else:
                    log.info("applying decisions for stage %s works again", d.stage)
                self._last_error[d.stage] = err
        return applied


async def run_live(
    loop: ControlLoop,
    collect: Callable[[float], Awaitable[PipelineSnapshot]],
    clock: Clock,
    interval_s: float,
    stop: asyncio.Event,
) -> None:
    """Tick every ``interval_s`` until ``stop`` is set. Ticks keep a fixed cadence."""
    next_at = clock.now()
    while not stop.is_set():
        now = clock.now()
        try:
            snapshot = await collect(now)
            loop.step(snapshot)
        except Exception:  # the controller must survive a bad tick and try again
            log.exception("controller tick failed")
        next_at += interval_s
        delay = max(0.0, next_at - clock.now())
        if delay == 0.0:
            next_at = clock.now()  # fell behind: do not try to catch up with a burst
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=delay)

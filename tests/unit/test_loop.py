"""The control loop: decide -> apply through a Backend -> sinks; faults stay per stage."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from quartfaas.control.backend import CpuLever, ReplicaInfo, ReplicaState
from quartfaas.control.loop import Applied, ControlLoop
from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot, make_snapshot
from quartfaas.errors import BackendError


@dataclass
class FakeBackend:
    """In-memory replicas; ``broken`` stages raise on every call."""

    replicas: dict[str, list[ReplicaInfo]] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    calls: list[tuple[str, str]] = field(default_factory=list)
    n: int = 0

    def start_replica(self, stage: str) -> ReplicaInfo:
        if stage in self.broken:
            raise BackendError(f"{stage} cannot start")
        self.n += 1
        info = ReplicaInfo(f"{stage}-{self.n}", stage, ReplicaState.STARTING)
        self.replicas.setdefault(stage, []).append(info)
        self.calls.append(("start", stage))
        return info

    def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        for reps in self.replicas.values():
            for r in reps:
                if r.replica_id == replica_id:
                    reps.remove(r)
                    self.calls.append(("stop", r.stage))
                    return

    def list_replicas(self, stage: str | None = None) -> list[ReplicaInfo]:
        if stage in self.broken:
            raise BackendError(f"{stage} is unreachable")
        if stage is None:
            return [r for reps in self.replicas.values() for r in reps]
        return list(self.replicas.get(stage, []))

    def set_cpu(self, replica_id: str, cpus: float) -> CpuLever:
        self.calls.append(("cpu", replica_id))
        return CpuLever.THREADS


class FixedPolicy:
    """Targets given per stage; counts its calls."""

    name = "fixed"

    def __init__(self, targets: dict[str, int], cpu: float | None = None) -> None:
        self.targets = targets
        self.cpu = cpu
        self.initial = 0

    def initial_state(self, snapshot: PipelineSnapshot) -> int:
        self.initial += 1
        return 0

    def decide(self, snapshot: PipelineSnapshot, state: int) -> tuple[Decision, int]:
        if not snapshot.has_data:
            return hold_all(snapshot, self.name, "no-data"), state + 1
        stages = tuple(
            StageDecision(
                s.name,
                s.replicas,
                self.targets.get(s.name, s.replicas),
                "test",
                cpu_per_replica=self.cpu,
            )
            for s in snapshot.stages
        )
        return Decision(snapshot.now, self.name, stages), state + 1


class Recorder:
    def __init__(self) -> None:
        self.ticks: list[tuple[Decision, Applied]] = []

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        self.ticks.append((decision, applied))


def test_decisions_are_applied_and_recorded() -> None:
    backend = FakeBackend()
    sink = Recorder()
    loop = ControlLoop(FixedPolicy({"s0": 2, "s1": 1}), backend, [sink])
    loop.step(make_snapshot(2, now=1.0))
    assert len(backend.list_replicas("s0")) == 2 and len(backend.list_replicas("s1")) == 1
    decision, applied = sink.ticks[0]
    assert applied.started == {"s0": 2, "s1": 1} and not applied.errors
    assert decision.target("s0") == 2


def test_a_backend_error_on_one_stage_does_not_stop_the_others() -> None:
    backend = FakeBackend(broken={"s1"})
    sink = Recorder()
    loop = ControlLoop(FixedPolicy({"s0": 3, "s1": 3, "s2": 2}), backend, [sink])
    loop.step(make_snapshot(3, now=1.0))
    _, applied = sink.ticks[0]
    assert "s1" in applied.errors and "unreachable" in applied.errors["s1"]
    assert len(backend.list_replicas("s0")) == 3 and len(backend.list_replicas("s2")) == 2


def test_no_data_holds_and_nothing_is_applied() -> None:
    backend = FakeBackend()
    sink = Recorder()
    loop = ControlLoop(FixedPolicy({"s0": 4}), backend, [sink])
    snap = make_snapshot(1, now=5.0)
    from dataclasses import replace

    loop.step(replace(snap, data_age_s=None, note="unreachable: connection refused"))
    decision, applied = sink.ticks[0]
    assert decision.hold and decision.reason == "no-data"
    assert backend.calls == [] and applied == Applied()


def test_state_is_built_once_and_a_failing_sink_is_survived() -> None:
    class Broken:
        def record(self, *_: Any) -> None:
            raise RuntimeError("disk full")

    policy = FixedPolicy({"s0": 1})
    sink = Recorder()
    loop = ControlLoop(policy, FakeBackend(), [Broken(), sink])
    for t in range(3):
        loop.step(make_snapshot(1, now=float(t)))
    assert policy.initial == 1 and loop.state == 3 and len(sink.ticks) == 3


def test_cpu_targets_go_through_set_cpu() -> None:
    backend = FakeBackend()
    loop = ControlLoop(FixedPolicy({"s0": 2}, cpu=1.5), backend)
    loop.step(make_snapshot(1, now=1.0))
    assert [c for c in backend.calls if c[0] == "cpu"] == [("cpu", "s0-1"), ("cpu", "s0-2")]

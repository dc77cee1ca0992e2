"""The loop's pool hook: depth decided per tick, applied before the starts, logged."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from quartfaas.control.backend import (
    CpuLever,
    PoolScalable,
    PoolStatus,
    ReplicaInfo,
    ReplicaState,
)
from quartfaas.control.loop import Applied, ControlLoop
from quartfaas.control.policy import Decision, StageDecision
from quartfaas.control.sinks import JsonlDecisionLog
from quartfaas.control.snapshot import PipelineSnapshot, make_snapshot, make_stage

MIB = 1024**2


@dataclass
class FakeBackend:
    replicas: dict[str, list[ReplicaInfo]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)

    def start_replica(self, stage: str) -> ReplicaInfo:
        info = ReplicaInfo(f"{stage}-{len(self.calls)}", stage, ReplicaState.STARTING)
        self.replicas.setdefault(stage, []).append(info)
        self.calls.append(("start", stage))
        return info

    def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        for reps in self.replicas.values():
            reps[:] = [r for r in reps if r.replica_id != replica_id]

    def list_replicas(self, stage: str | None = None) -> list[ReplicaInfo]:
        if stage is None:
            return [r for reps in self.replicas.values() for r in reps]
        return list(self.replicas.get(stage, []))

    def set_cpu(self, replica_id: str, cpus: float) -> CpuLever:
        return CpuLever.THREADS


class FixedPolicy:
    """The snapshot's counts, with ``targets`` overriding some stages."""

    name = "fixed"

    def __init__(self, targets: dict[str, int]) -> None:
        self.targets = targets

    def initial_state(self, snapshot: PipelineSnapshot) -> int:
        return 0

    def decide(self, snapshot: PipelineSnapshot, state: int) -> tuple[Decision, int]:
        stages = tuple(
            StageDecision(s.name, s.replicas, self.targets.get(s.name, s.replicas), "test")
            for s in snapshot.stages
        )
        return Decision(snapshot.now, self.name, stages), state + 1


class Recorder:
    def __init__(self) -> None:
        self.ticks: list[tuple[Decision, Applied]] = []

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        self.ticks.append((decision, applied))


@dataclass
class PoolBackend(FakeBackend):
    depth: dict[str, int] = field(default_factory=dict)
    waiting: str = ""

    def set_pool(self, stage: str, depth: int) -> None:
        self.depth[stage] = depth
        self.calls.append(("pool", stage))

    def pool_status(self, stage: str) -> PoolStatus | None:
        return PoolStatus(stage, self.depth.get(stage, 1), child_private_bytes=20 * MIB,
                          cache_free_bytes=100 * MIB, waiting=self.waiting, floor=1,
                          max_depth=16)  # fmt: skip


def snap(now: float, up: float, down: float) -> object:
    return make_snapshot(
        now=now,
        stages=(
            make_stage("a", 0, arrival_rate=up, service_mean_s=0.01, ready_replicas=1,
                       max_replicas=8),
            make_stage("b", 1, arrival_rate=down, service_mean_s=0.2, ready_replicas=1,
                       max_replicas=16),
        ),
    )  # fmt: skip


def test_pool_grows_from_the_upstream_rate_before_the_stage_scales(tmp_path: Path) -> None:
    backend = PoolBackend()
    assert isinstance(backend, PoolScalable)
    rec = Recorder()
    log_path = tmp_path / "d.jsonl"
    with JsonlDecisionLog(log_path) as jl:
        loop = ControlLoop(FixedPolicy({"b": 2}), backend, [rec, jl])
        loop.step(snap(0.0, 5.0, 5.0))  # type: ignore[arg-type]
    # calm: nothing upstream beyond b's own rate: the floor
    _, applied = rec.ticks[-1]
    assert backend.depth["b"] == 1 and "pool 1" in applied.pool["b"]
    # the pool is set before the stage's starts
    assert backend.calls.index(("pool", "b")) < backend.calls.index(("start", "b"))
    line = json.loads(log_path.read_text().splitlines()[-1])
    assert line["applied"]["pool"]["b"].startswith("pool 1")


def test_burst_upstream_sizes_the_pool_within_memory() -> None:
    backend = PoolBackend(waiting="refill waits: host saturated")
    rec = Recorder()
    loop = ControlLoop(FixedPolicy({}), backend, [rec])
    loop.step(snap(0.0, 30.0, 5.0))  # type: ignore[arg-type]
    _, applied = rec.ticks[-1]
    # (30 - 5)/s x 0.2 s / 0.7 = 8 more replicas than the target 1; of 100 MiB free,
    # stage a's floor child takes 20: 80 MiB hold 4 children of 20 MiB
    assert backend.depth["a"] == 1 and backend.depth["b"] == 4
    assert "memory bound" in applied.pool["b"] and "host saturated" in applied.pool["b"]
    # the burst passes: the pool keeps its depth for the shrink delay, then shrinks
    loop.step(snap(1.0, 5.0, 5.0))  # type: ignore[arg-type]
    assert backend.depth["b"] == 4
    loop.step(snap(12.0, 5.0, 5.0))  # type: ignore[arg-type]
    assert backend.depth["b"] == 1


def test_backend_without_a_pool_is_left_alone() -> None:
    backend = FakeBackend()
    rec = Recorder()
    loop = ControlLoop(FixedPolicy({"b": 2}), backend, [rec])
    loop.step(snap(0.0, 30.0, 5.0))  # type: ignore[arg-type]
    assert rec.ticks[-1][1].pool == {}

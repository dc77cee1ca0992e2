"""Decision sinks: JSONL content, exported metric values, hold/resume logging."""

from __future__ import annotations

import json
import logging
import math
from dataclasses import replace
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from quartfaas.control.backend import CpuLever, ReplicaInfo, ReplicaState
from quartfaas.control.loop import Applied, ControlLoop
from quartfaas.control.policy import Decision, StageDecision, hold_all
from quartfaas.control.sinks import (
    DecisionMetrics,
    HoldLogger,
    JsonlDecisionLog,
    reason_kind,
    tick_record,
)
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, make_snapshot


def observed(now: float = 10.0) -> PipelineSnapshot:
    snap = make_snapshot(
        2,
        now=now,
        ready_replicas=2,
        arrival_rate=12.5,
        arrival_cv=1.25,
        service_mean_s=0.02,
        queue_len=4,
        in_flight=3,
        latency=LatencyStats(10, 0.03, 0.02, 0.05, 0.07),
    )
    return replace(snap, e2e=LatencyStats(10, 0.1, 0.09, 0.2, 0.3))


def no_data(now: float = 11.0) -> PipelineSnapshot:
    return replace(
        make_snapshot(2, now=now),
        data_age_s=None,
        note="unreachable: Prometheus at http://127.0.0.1:9: ConnectError",
    )


def scale(snap: PipelineSnapshot) -> Decision:
    return Decision(
        now=snap.now,
        policy="quart",
        stages=(
            StageDecision(
                "s0",
                2,
                4,
                "queueing model: 4 servers for p99 budget 0.2s",
                cpu_per_replica=1.5,
                critical=True,
                score=0.75,
            ),
            StageDecision("s1", 2, 2, "within budget"),
        ),
        reason="",
    )


def hold(snap: PipelineSnapshot) -> Decision:
    return hold_all(snap, "quart", "no-data: the collector could not read any measurement")


def test_jsonl_one_flushed_line_per_tick(tmp_path: Path) -> None:
    path = tmp_path / "logs" / "decisions.jsonl"
    walls = iter([1700000000.0, 1700000001.5])
    log = JsonlDecisionLog(path, wall_clock=lambda: next(walls))
    snap = observed()
    log.record(snap, scale(snap), Applied(started={"s0": 2}, cpu={"s0": "threads"}))
    # Flushed per line: readable before close.
    first = json.loads(path.read_text().splitlines()[0])
    assert first["time"] == 10.0 and first["wall"] == 1700000000.0
    assert (first["policy"], first["hold"], first["reason"]) == ("quart", False, "")
    assert (first["source"], first["data_age_s"], first["note"]) == ("test", 0.0, "")
    assert first["e2e_p99_s"] == 0.3 and first["slo_p99_s"] == 1.0
    s0 = first["stages"][0]
    assert s0 == {
        "stage": "s0",
        "current": 2,
        "target": 4,
        "action": "scale-up",
        "reason": "queueing model: 4 servers for p99 budget 0.2s",
        "critical": True,
        "score": 0.75,
        "cpu": 1.5,
        "observed": {
            "rate": 12.5,
            "cv": 1.25,
            "svc_mean_s": 0.02,
            "queue": 4,
            "in_flight": 3,
            "ready": 2,
            "starting": 0,
            "p99_s": 0.07,
        },
    }
    assert first["stages"][1]["action"] == "hold" and first["stages"][1]["cpu"] is None
    assert first["applied"] == {
        "started": {"s0": 2},
        "stopped": {},
        "cpu": {"s0": "threads"},
        "errors": {},
    }
    nd = no_data()
    log.record(nd, hold(nd), Applied())
    log.close()
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    second = json.loads(lines[1])
    assert second["hold"] is True and second["reason"].startswith("no-data")
    assert second["data_age_s"] is None and second["note"].startswith("unreachable")
    assert second["stages"][0]["observed"]["rate"] is None
    with pytest.raises(ValueError, match="closed"):
        log.record(nd, hold(nd), Applied())


def test_jsonl_appends_and_writes_no_nan(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    path.write_text('{"earlier": true}\n')
    snap = replace(observed(), e2e=LatencyStats(1, math.nan, math.inf, None, None))
    with JsonlDecisionLog(path, wall_clock=None) as log:
        log.record(snap, scale(snap), Applied())
    lines = path.read_text().splitlines()
    assert json.loads(lines[0]) == {"earlier": True}
    rec = json.loads(lines[1], parse_constant=lambda c: pytest.fail(f"non-JSON constant {c}"))
    assert "wall" not in rec and rec["e2e_p99_s"] is None


def test_decision_metrics_values() -> None:
    reg = CollectorRegistry()
    m = DecisionMetrics(reg)
    snap = observed()
    m.record(snap, scale(snap), Applied(errors={"s1": "boom"}))

    def v(name: str, **labels: str) -> float | None:
        return reg.get_sample_value(name, labels)

    assert v("quartfaas_controller_decision", stage="s0") == 4
    assert v("quartfaas_controller_current", stage="s0") == 2
    assert v("quartfaas_controller_decision", stage="s1") == 2
    assert v("quartfaas_controller_hold") == 0
    assert v("quartfaas_controller_data_age_seconds") == 0.0
    assert v("quartfaas_controller_ticks_total") == 1
    assert v("quartfaas_controller_actions_total", stage="s0", action="scale-up") == 1
    assert v("quartfaas_controller_actions_total", stage="s1", action="hold") is None
    assert v("quartfaas_controller_apply_errors_total", stage="s1") == 1

    nd = no_data()
    m.record(nd, hold(nd), Applied())
    m.record(nd, hold(nd), Applied())
    assert v("quartfaas_controller_hold") == 1
    assert v("quartfaas_controller_holds_total", reason="no-data") == 2
    assert v("quartfaas_controller_data_problems_total", kind="unreachable") == 2
    assert v("quartfaas_controller_data_age_seconds") == math.inf
    # No data: the snapshot's 0 replicas are not exported as a decision to scale to zero.
    assert v("quartfaas_controller_decision", stage="s0") == 4
    assert v("quartfaas_controller_current", stage="s0") == 2
    assert v("quartfaas_controller_ticks_total") == 3

    back = observed(12.0)
    m.record(back, scale(back), Applied())
    assert v("quartfaas_controller_hold") == 0
    assert v("quartfaas_controller_data_age_seconds") == 0.0


def test_stale_snapshot_reports_its_age() -> None:
    reg = CollectorRegistry()
    snap = replace(observed(), data_age_s=20.0, note="stale: newest gauge sample is 20.0s old")
    d = hold_all(snap, "hpa", "no-data: measurements are 20.0 s old (> stale_after_s 15)")
    DecisionMetrics(reg).record(snap, d, Applied())
    assert reg.get_sample_value("quartfaas_controller_data_age_seconds") == 20.0
    assert reg.get_sample_value("quartfaas_controller_data_problems_total", {"kind": "stale"}) == 1
    # A stale snapshot still has values: its replica counts are exported.
    assert reg.get_sample_value("quartfaas_controller_current", {"stage": "s0"}) == 2


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        ("no-data: metrics 16.2s old > stale_after_s 15s", "no-data"),
        ("hold: between KPA ticks (next in 1.0 s)", "between-kpa-ticks"),
        ("hold: no-data: stage-0 rate unknown", "no-data"),
        ("hold: no alert notification", "no-alert-notification"),
        ("unreachable: Prometheus at http://127.0.0.1:9090: ConnectError", "unreachable"),
        ("", "unspecified"),
        ("42 things", "unspecified"),
    ],
)
def test_reason_kind_is_bounded(reason: str, kind: str) -> None:
    assert reason_kind(reason) == kind


def test_hold_logger_logs_transitions_only(caplog: pytest.LogCaptureFixture) -> None:
    hl = HoldLogger(logging.getLogger("test.hold"))
    caplog.set_level(logging.INFO, logger="test.hold")
    good = observed()
    hl.record(good, scale(good), Applied())
    for t in (11.0, 12.0, 13.0):
        nd = no_data(t)
        hl.record(nd, hold(nd), Applied())
    timeout = replace(no_data(14.0), note="timeout: Prometheus did not answer within 2s")
    hl.record(timeout, hold(timeout), Applied())
    ordinary = hold_all(good, "hpa", "hold: between HPA evaluations (next in 3.0 s)")
    hl.record(observed(15.0), ordinary, Applied())
    hl.record(observed(16.0), ordinary, Applied())
    msgs = [(r.levelname, r.getMessage()) for r in caplog.records]
    assert len(msgs) == 3, msgs
    assert msgs[0][0] == "WARNING" and "t=11.000" in msgs[0][1] and "unreachable" in msgs[0][1]
    assert msgs[1][0] == "WARNING" and "timeout" in msgs[1][1]
    assert msgs[2][0] == "INFO" and "resumes at t=15.000" in msgs[2][1]


def test_tick_record_matches_decision_order() -> None:
    snap = observed()
    rec = tick_record(snap, scale(snap), Applied(stopped={"s1": 1}))
    assert [s["stage"] for s in rec["stages"]] == ["s0", "s1"]
    assert rec["applied"]["stopped"] == {"s1": 1}


class _Backend:
    def __init__(self) -> None:
        self.replicas: list[ReplicaInfo] = []

    def start_replica(self, stage: str) -> ReplicaInfo:
        info = ReplicaInfo(f"{stage}-{len(self.replicas)}", stage, ReplicaState.STARTING)
        self.replicas.append(info)
        return info

    def stop_replica(self, replica_id: str, *, drain: bool = True) -> None:
        self.replicas = [r for r in self.replicas if r.replica_id != replica_id]

    def list_replicas(self, stage: str | None = None) -> list[ReplicaInfo]:
        return [r for r in self.replicas if stage is None or r.stage == stage]

    def set_cpu(self, replica_id: str, cpus: float) -> CpuLever:
        return CpuLever.NONE


class _Policy:
    name = "test"

    def initial_state(self, snapshot: PipelineSnapshot) -> None:
        return None

    def decide(self, snapshot: PipelineSnapshot, state: None) -> tuple[Decision, None]:
        if not snapshot.has_data:
            return hold_all(snapshot, self.name, "no-data: nothing measured"), None
        stages = tuple(StageDecision(s.name, s.replicas, 3, "three") for s in snapshot.stages)
        return Decision(snapshot.now, self.name, stages), None


def test_sinks_in_a_control_loop(tmp_path: Path) -> None:
    reg = CollectorRegistry()
    path = tmp_path / "d.jsonl"
    with JsonlDecisionLog(path, wall_clock=None) as jl:
        loop = ControlLoop(_Policy(), _Backend(), sinks=[jl, DecisionMetrics(reg), HoldLogger()])
        loop.step(make_snapshot(2, now=1.0))
        loop.step(no_data(2.0))
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    assert recs[0]["applied"]["started"] == {"s0": 3, "s1": 3}
    assert recs[1]["hold"] is True and recs[1]["applied"]["started"] == {}
    assert reg.get_sample_value("quartfaas_controller_decision", {"stage": "s1"}) == 3
    assert reg.get_sample_value("quartfaas_controller_ticks_total") == 2

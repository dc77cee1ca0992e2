"""Decision sinks: where each control tick's decision and its reasons go.

``control/loop.py`` calls ``record(snapshot, decision, applied)`` on every sink after each
tick (a sink that raises is logged and skipped, never stops the loop). Three sinks:

- ``JsonlDecisionLog``: one JSON object per tick, flushed per line, answering "why did
  stage 3 get 5 replicas at 12:04?" (the wall time comes from an injectable clock: the
  log is for people, the decision itself never reads a clock);
- ``DecisionMetrics``: Prometheus series in a given registry (the gateway's, so one
  ``/metrics`` shows both): ``quartfaas_controller_decision{stage}`` (target replicas),
  ``quartfaas_controller_current{stage}``, ``quartfaas_controller_hold`` (1 while
  holding), ``quartfaas_controller_holds_total{reason}``,
  ``quartfaas_controller_data_age_seconds`` (+Inf when there is no data at all, so an
  alert ``> stale_after_s`` fires), ``quartfaas_controller_ticks_total``,
  ``quartfaas_controller_data_problems_total{kind}`` (why the data was missing: the
  collector's note, e.g. ``unreachable``, ``timeout``, ``stale``),
  ``quartfaas_controller_actions_total{stage,action}``,
  ``quartfaas_controller_apply_errors_total{stage}``;
- ``HoldLogger``: one WARNING when missing or stale data makes the controller hold (with
  the reason and the collector's note) and one INFO when it resumes, not one per tick.

``reason``/``kind`` labels are bounded (``reason_kind``): a few leading words of the
reason, never its numbers (``"no-data: metrics 16.2s old"`` -> ``no-data``).
On a no-data snapshot the per-stage gauges keep their last values: a collector without
data may report 0 replicas, and exporting that would read as a scale to zero.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, TextIO

from prometheus_client import CollectorRegistry, Counter, Gauge

from quartfaas.control.loop import Applied
from quartfaas.control.policy import Action, Decision
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot

log = logging.getLogger("quartfaas.controller")

_WORD_RE = re.compile(r"[a-z][a-z_-]*")


def reason_kind(reason: str) -> str:
    """A bounded label value for a free-text reason or note.

    The first ``:``-separated part other than a bare ``hold``, cut at the first word that
    is not plain letters (numbers, parentheses), at most four words joined by ``-``:
    ``"hold: between KPA ticks (next in 1.0 s)"`` -> ``between-kpa-ticks``,
    ``"no-data: metrics 16.2s old"`` -> ``no-data``.
    """
    parts = [p.strip().lower() for p in reason.split(":")]
    head = next((p for p in parts if p and p != "hold"), parts[0] if parts else "")
    words = []
    for w in head.split()[:4]:
        if not _WORD_RE.fullmatch(w):
            break
        words.append(w)
    return "-".join(words)[:40] or "unspecified"


def data_problem(snapshot: PipelineSnapshot, decision: Decision) -> bool:
    """True when the tick's measurements were missing, stale or degraded."""
    return not snapshot.has_data or bool(snapshot.note) or "no-data" in decision.reason


def _f(x: float | None, digits: int = 6) -> float | None:
    """JSON-safe rounded float (NaN/Inf are not JSON)."""
    if x is None or not math.isfinite(x):
        return None
    return round(x, digits)


def _stage_summary(s: StageSnapshot) -> dict[str, Any]:
    return {
        "rate": _f(s.arrival_rate, 4),
        "cv": _f(s.arrival_cv, 4),
        "svc_mean_s": _f(s.service_mean_s),
        "queue": s.queue_len,
        "in_flight": s.in_flight,
        "ready": s.ready_replicas,
        "starting": s.starting_replicas,
        "p99_s": _f(s.latency.p99_s),
    }


def tick_record(
    snapshot: PipelineSnapshot, decision: Decision, applied: Applied, wall: float | None = None
) -> dict[str, Any]:
    """The JSON object ``JsonlDecisionLog`` writes for one tick."""
    by_name = {s.name: s for s in snapshot.stages}
    stages = []
    for d in decision.stages:
        item: dict[str, Any] = {
            "stage": d.stage,
            "current": d.current,
            "target": d.replicas,
            "action": d.action.value,
            "reason": d.reason,
            "critical": d.critical,
            "score": _f(d.score),
            "cpu": _f(d.cpu_per_replica),
        }
        s = by_name.get(d.stage)
        if s is not None:
            item["observed"] = _stage_summary(s)
        stages.append(item)
    out: dict[str, Any] = {"time": _f(snapshot.now)}
    if wall is not None:
        out["wall"] = _f(wall, 3)
    out.update(
        policy=decision.policy,
        hold=decision.hold,
        reason=decision.reason,
        source=snapshot.source,
        data_age_s=_f(snapshot.data_age_s),
        note=snapshot.note,
        e2e_p99_s=_f(snapshot.e2e.p99_s),
        slo_p99_s=_f(snapshot.slo_p99_s),
        stages=stages,
        applied={
            "started": dict(applied.started),
            "stopped": dict(applied.stopped),
            "cpu": dict(applied.cpu),
            "errors": dict(applied.errors),
            **({"pool": dict(applied.pool)} if applied.pool else {}),
        },
    )
    return out


class JsonlDecisionLog:
    """Append one JSON line per tick to ``path`` (parents created), flushed each line."""

    def __init__(self, path: str | Path, *, wall_clock: Callable[[], float] | None = time.time):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._wall = wall_clock
        self._fh: TextIO | None = self.path.open("a", encoding="utf-8")

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        if self._fh is None:
            raise ValueError(f"decision log {self.path} is closed")
        wall = self._wall() if self._wall is not None else None
        line = json.dumps(tick_record(snapshot, decision, applied, wall), separators=(",", ":"))
        self._fh.write(line + "\n")
        self._fh.flush()  # a crash must not lose the last decisions: they explain it

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def __enter__(self) -> JsonlDecisionLog:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class DecisionMetrics:
    """The controller's Prometheus series in ``registry`` (see the module docstring)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        r = registry
        self.decision = Gauge(
            "quartfaas_controller_decision", "Target replicas decided", ["stage"], registry=r
        )
        self.current = Gauge(
            "quartfaas_controller_current", "Replicas when decided", ["stage"], registry=r
        )
        self.hold = Gauge("quartfaas_controller_hold", "1 while the controller holds", registry=r)
        self.holds = Counter(
            "quartfaas_controller_holds", "Ticks that held, by reason", ["reason"], registry=r
        )
        self.data_age = Gauge(
            "quartfaas_controller_data_age_seconds",
            "Age of the measurements of the last tick (+Inf: none)",
            registry=r,
        )
        self.data_problems = Counter(
            "quartfaas_controller_data_problems",
            "Ticks whose measurements were missing, stale or degraded, by kind",
            ["kind"],
            registry=r,
        )
        self.ticks = Counter("quartfaas_controller_ticks", "Control ticks", registry=r)
        self.actions = Counter(
            "quartfaas_controller_actions",
            "Stage decisions that changed the replica count",
            ["stage", "action"],
            registry=r,
        )
        self.apply_errors = Counter(
            "quartfaas_controller_apply_errors",
            "Failures applying a stage's decision",
            ["stage"],
            registry=r,
        )

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        self.ticks.inc()
        age = snapshot.data_age_s
        self.data_age.set(math.inf if age is None else age)
        self.hold.set(1.0 if decision.hold else 0.0)
        if decision.hold:
            self.holds.labels(reason=reason_kind(decision.reason)).inc()
        if data_problem(snapshot, decision):
            self.data_problems.labels(kind=reason_kind(snapshot.note or decision.reason)).inc()
        if snapshot.has_data:
            for d in decision.stages:
                self.decision.labels(stage=d.stage).set(d.replicas)
                self.current.labels(stage=d.stage).set(d.current)
        if not decision.hold:
            for d in decision.stages:
                if d.action is not Action.HOLD:
                    self.actions.labels(stage=d.stage, action=d.action.value).inc()
        for stage in applied.errors:
            self.apply_errors.labels(stage=stage).inc()


class HoldLogger:
    """Logs when missing/stale data makes the controller hold, and when data returns.

    One WARNING when such a hold starts (or its kind changes, e.g. unreachable ->
    timeout), one INFO when decisions resume; nothing per tick. Ordinary holds (a baseline
    between its evaluations) are logged at DEBUG only.
    """

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or log
        self.starved_kind = ""  # kind of the current data problem, "" while data is fine

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        if decision.hold and data_problem(snapshot, decision):
            kind = reason_kind(snapshot.note or decision.reason)
            if kind != self.starved_kind:
                note = f" [{snapshot.note}]" if snapshot.note else ""
                self.log.warning(
                    "controller holds current replicas at t=%.3f: %s%s",
                    snapshot.now,
                    decision.reason,
                    note,
                )
            self.starved_kind = kind
            return
        if self.starved_kind and snapshot.has_data:
            age = snapshot.data_age_s or 0.0
            self.log.info(
                "controller resumes at t=%.3f: measurements are back (age %.1fs, was %s)",
                snapshot.now,
                age,
                self.starved_kind,
            )
            self.starved_kind = ""
        if decision.hold:
            self.log.debug("hold at t=%.3f: %s", snapshot.now, decision.reason)

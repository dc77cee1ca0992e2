"""What a load run records and what it sums up to: one ``RequestRecord`` per scheduled
request (times in seconds from the run start), ``summarize`` (pure: latency percentiles of
successful requests, SLO attainment, error counts) and the per-request CSV."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt

Outcome = Literal["ok", "http_error", "timeout", "connection_error", "client_error", "dropped"]


@dataclass(frozen=True, slots=True)
class StageTiming:
    """One stage's share of a request, as the gateway reports it in ``timings_ms.stages``."""

    stage: str
    queue_ms: float
    service_ms: float
    hop_ms: float


@dataclass(frozen=True, slots=True)
class RequestRecord:
    """What happened to one scheduled request. Times are seconds from the run start."""

    index: int
    scheduled_s: float
    sent_s: float | None = None  # generator issued it; None: dropped by the client cap
    wire_s: float | None = None  # request headers written to the socket
    latency_s: float | None = None  # sent_s to the end of the response body
    status: int | None = None
    outcome: Outcome = "dropped"
    error: str = ""
    total_ms: float | None = None
    stages: tuple[StageTiming, ...] = ()

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"

    @property
    def lateness_s(self) -> float | None:
        """How late the generator issued the request (sent - scheduled)."""
        return None if self.sent_s is None else self.sent_s - self.scheduled_s


@dataclass(frozen=True, slots=True)
class LoadSummary:
    """Aggregates of one run. Latency figures cover successful (2xx) requests only."""

    scheduled: int
    sent: int
    dropped: int
    ok: int
    errors: Mapping[str, int]  # "500", "429", "timeout", "connection_error", ...
    slo_s: float | None
    ok_within_slo: int | None
    slo_attainment: float | None  # ok within the SLO / sent
    slo_attainment_offered: float | None  # ok within the SLO / scheduled (drops are misses)
    latency_mean_s: float | None
    latency_p50_s: float | None
    latency_p95_s: float | None
    latency_p99_s: float | None
    offered_rps: float | None  # from the schedule: (n - 1) / span
    achieved_rps: float | None  # 2xx answers / (first send .. last answer)
    lateness_p99_s: float | None
    lateness_max_s: float | None


def _q(a: npt.NDArray[np.float64], q: float) -> float | None:
    # Nearest-rank, like metrics.windows.ValueWindow's default.
    return float(np.quantile(a, q, method="inverted_cdf")) if a.size else None


def summarize(records: Sequence[RequestRecord], slo_s: float | None = None) -> LoadSummary:
    """Summary of ``records`` (pure; nothing is re-measured)."""
    sent = [r for r in records if r.sent_s is not None]
    ok = [r for r in sent if r.ok and r.latency_s is not None]
    lat = np.array([r.latency_s for r in ok], dtype=np.float64)
    late = np.array([r.lateness_s for r in sent], dtype=np.float64)
    errors = Counter(
        str(r.status) if r.outcome == "http_error" else r.outcome for r in sent if r.outcome != "ok"
    )
    within = None if slo_s is None else int(np.count_nonzero(lat <= slo_s))
    sched = np.array([r.scheduled_s for r in records], dtype=np.float64)
    span = float(sched.max() - sched.min()) if sched.size >= 2 else 0.0
    ends = [r.sent_s + r.latency_s for r in ok if r.sent_s is not None and r.latency_s is not None]
    first_send = min((r.sent_s for r in sent if r.sent_s is not None), default=None)
    run = max(ends) - first_send if ends and first_send is not None else 0.0
    return LoadSummary(
        scheduled=len(records),
        sent=len(sent),
        dropped=len(records) - len(sent),
        ok=len(ok),
        errors=dict(sorted(errors.items())),
        slo_s=slo_s,
        ok_within_slo=within,
        slo_attainment=None if within is None or not sent else within / len(sent),
        slo_attainment_offered=None if within is None or not records else within / len(records),
        latency_mean_s=float(lat.mean()) if lat.size else None,
        latency_p50_s=_q(lat, 0.50),
        latency_p95_s=_q(lat, 0.95),
        latency_p99_s=_q(lat, 0.99),
        offered_rps=(len(records) - 1) / span if span > 0 else None,
        achieved_rps=len(ok) / run if run > 0 else None,
        lateness_p99_s=_q(late, 0.99),
        lateness_max_s=float(late.max()) if late.size else None,
    )


CSV_COLUMNS = (
    "index", "scheduled_s", "sent_s", "wire_s", "lateness_s", "latency_s", "status", "outcome",
    "error", "total_ms", "stages_json",
)  # fmt: skip


def write_csv(records: Sequence[RequestRecord], path: str | Path) -> None:
    """One row per request; per-stage timings as a JSON list in ``stages_json``."""

    def cell(v: float | int | None) -> str:
        return "" if v is None else repr(v)

    with Path(path).open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(CSV_COLUMNS)
        for r in records:
            stages = [
                {"stage": s.stage, "queue_ms": s.queue_ms, "service_ms": s.service_ms,
                 "hop_ms": s.hop_ms}
                for s in r.stages
            ]  # fmt: skip
            w.writerow(
                [
                    r.index,
                    cell(r.scheduled_s),
                    cell(r.sent_s),
                    cell(r.wire_s),
                    cell(r.lateness_s),
                    cell(r.latency_s),
                    cell(r.status),
                    r.outcome,
                    r.error,
                    cell(r.total_ms),
                    json.dumps(stages) if stages else "",
                ]
            )

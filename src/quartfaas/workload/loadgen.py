"""Open-loop HTTP load generator for a quartfaas (OpenFaaS-style) gateway.

Given arrival times (``workload/synthetic.py`` or ``workload/traces.py``) it sends
``POST {gateway}/function/{name}`` with the JSON body ``{"inputs": ...}`` at each scheduled
instant, whether or not earlier requests have been answered: a slow gateway shows up as
latency and errors, never as a lower offered rate (the coordinated-omission trap of closed
loops). The CLI and the experiment scripts call ``run_load``; reports read the CSV.

How the loop stays open:

* one scheduler coroutine sleeps until the next arrival and fires every request that is due
  as its own task; it never awaits a response;
* the connection pool is unlimited (or as large as the concurrency cap), so aiohttp never
  queues a request behind busy connections; the time the request headers actually went out
  (``wire_s``, from an aiohttp trace hook) is recorded, so a hidden wait would be visible;
* the optional ``max_outstanding`` cap *drops* requests that find the cap full (outcome
  ``dropped``) instead of delaying them.

Each ``RequestRecord`` holds the schedule, send and wire times (seconds from the run start),
the latency (send to last byte of the answer), status, error text and the gateway's
``timings_ms`` breakdown when the answer carries one. ``summarize`` is pure and computes
latency percentiles of successful requests, SLO attainment and error counts.
"""

from __future__ import annotations

import asyncio
import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import aiohttp
import numpy as np
import numpy.typing as npt

Outcome = Literal["ok", "http_error", "timeout", "connection_error", "client_error", "dropped"]

_START_DELAY_S = 0.05  # head start so the first send does not race session setup
_ERROR_TEXT_MAX = 300


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


# --- payloads ------------------------------------------------------------------------------

_WORDS = (
    "the", "model", "reads", "a", "short", "line", "of", "plain", "text", "and", "passes",
    "its", "hidden", "state", "along", "a", "chain", "of", "stages", "each", "stage", "runs",
    "a", "slice", "of", "the", "layers", "then", "hands", "the", "result", "to", "the", "next",
    "one", "until", "the", "last", "stage", "returns", "an", "answer", "to", "the", "gateway",
)  # fmt: skip


def function_url(gateway: str, name: str) -> str:
    """``{gateway}/function/{name}``, the OpenFaaS invocation path."""
    return f"{gateway.rstrip('/')}/function/{name}"


def sentence(n_words: int, *, salt: int = 0, max_words: int = 128) -> str:
    """A deterministic sentence of ``min(n_words, max_words)`` words (at least one)."""
    n = max(1, min(int(n_words), max_words))
    w = len(_WORDS)
    return " ".join(_WORDS[(salt * 7 + j) % w] for j in range(n))


def token_ids(
    n_tokens: int, *, salt: int = 0, max_len: int = 128, vocab_size: int = 30522
) -> list[list[int]]:
    """``[[ids]]`` of ``min(n_tokens, max_len)`` deterministic ids in ``[1000, vocab_size)``.

    Ids below 1000 are left out because BERT-style vocabularies keep special and unused
    tokens there.
    """
    n = max(1, min(int(n_tokens), max_len))
    span = vocab_size - 1000
    return [[1000 + (salt * 31 + j * 17) % span for j in range(n)]]


def inputs_for(
    prompt_tokens: Sequence[int] | npt.NDArray[np.int64] | None,
    n_requests: int,
    *,
    mode: Literal["text", "tokens"] = "text",
    max_len: int = 128,
    default_len: int = 16,
    vocab_size: int = 30522,
) -> list[Any]:
    """Per-request ``inputs`` from a trace's prompt lengths (capped at ``max_len``).

    Without lengths every request gets ``default_len`` words/tokens. One word stands for one
    token: the common words used here are single tokens in BERT/GPT-2 vocabularies.
    """
    lengths = [default_len] * n_requests if prompt_tokens is None else list(prompt_tokens)
    if len(lengths) != n_requests:
        raise ValueError(f"{len(lengths)} prompt lengths for {n_requests} requests")
    if mode == "tokens":
        return [
            token_ids(n, salt=i, max_len=max_len, vocab_size=vocab_size)
            for i, n in enumerate(lengths)
        ]
    return [sentence(n, salt=i, max_words=max_len) for i, n in enumerate(lengths)]


# --- the run -------------------------------------------------------------------------------


def _parse_timings(body: Any) -> tuple[float | None, tuple[StageTiming, ...]]:
    timings = body.get("timings_ms") if isinstance(body, dict) else None
    if not isinstance(timings, dict):
        return None, ()
    total = timings.get("total")
    stages = []
    for s in timings.get("stages") or ():
        try:
            stages.append(
                StageTiming(
                    stage=str(s["stage"]),
                    queue_ms=float(s.get("queue_ms", 0.0)),
                    service_ms=float(s.get("service_ms", 0.0)),
                    hop_ms=float(s.get("hop_ms", 0.0)),
                )
            )
        except (KeyError, TypeError, ValueError, AttributeError):
            continue  # a malformed stage entry is reported as missing, not as a failure
    return (float(total) if isinstance(total, int | float) else None), tuple(stages)


def _error_text(raw: bytes) -> str:
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text)
    except ValueError:
        return text[:_ERROR_TEXT_MAX]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])[:_ERROR_TEXT_MAX]
    return text[:_ERROR_TEXT_MAX]


@dataclass
class _Run:
    """Mutable bookkeeping of one run (private to ``run_open_loop``)."""

    loop: asyncio.AbstractEventLoop
    t0: float
    records: list[RequestRecord | None]
    outstanding: int = 0
    done: int = 0
    tasks: set[asyncio.Task[None]] = field(default_factory=set)


async def _on_headers_sent(session: Any, ctx: Any, params: Any) -> None:
    req_ctx = ctx.trace_request_ctx
    if isinstance(req_ctx, dict):
        req_ctx["wire"] = asyncio.get_running_loop().time()


async def _send(
    run: _Run, session: aiohttp.ClientSession, url: str, *, index: int, scheduled_s: float,
    body: bytes,
) -> None:  # fmt: skip
    loop = run.loop
    sent = loop.time()
    ctx: dict[str, float] = {}
    fields: dict[str, Any] = {}
    try:
        async with session.post(url, data=body, trace_request_ctx=ctx) as resp:
            raw = await resp.read()
            fields.update(latency_s=loop.time() - sent, status=resp.status)
        if 200 <= resp.status < 300:
            fields["outcome"] = "ok"
            try:
                fields["total_ms"], fields["stages"] = _parse_timings(json.loads(raw))
            except ValueError:
                fields["error"] = "2xx answer is not JSON"
        else:
            fields.update(outcome="http_error", error=_error_text(raw))
    except TimeoutError as exc:  # aiohttp's timeouts subclass TimeoutError
        fields.update(outcome="timeout", error=f"no answer in time ({type(exc).__name__})")
    except Exception as exc:
        # A transport failure (refused, reset, bad URL) is data about the run; anything else
        # is recorded too, so one odd request cannot stop the schedule, but named apart.
        transport = isinstance(exc, aiohttp.ClientError | OSError)
        fields.update(
            outcome="connection_error" if transport else "client_error",
            error=f"{type(exc).__name__}: {exc}"[:_ERROR_TEXT_MAX],
        )
    finally:
        run.outstanding -= 1
        run.done += 1
    wire = ctx.get("wire")
    run.records[index] = RequestRecord(
        index=index,
        scheduled_s=scheduled_s,
        sent_s=sent - run.t0,
        wire_s=None if wire is None else wire - run.t0,
        **fields,
    )


async def run_open_loop(
    url: str,
    arrivals_s: npt.ArrayLike,
    inputs: Sequence[Any] | None = None,
    *,
    fixed_input: Any = "hello",
    timeout_s: float = 30.0,
    max_outstanding: int | None = None,
    progress: bool = False,
    headers: Mapping[str, str] | None = None,
) -> list[RequestRecord]:
    """Send one POST per arrival to ``url`` at ``t0 + arrivals_s[i]``; return the records.

    ``inputs[i]`` is request ``i``'s ``inputs`` value (``fixed_input`` for all when
    ``inputs`` is None). Bodies are encoded before the first send so the schedule does not
    pay for JSON. ``timeout_s`` bounds each request; ``max_outstanding`` drops requests that
    would exceed that many unanswered ones.
    """
    times = np.asarray(arrivals_s, dtype=np.float64)
    n = int(times.size)
    if n and (np.any(np.diff(times) < 0) or times[0] < 0):
        raise ValueError("arrivals_s must be non-negative and sorted")
    if inputs is not None and len(inputs) != n:
        raise ValueError(f"{len(inputs)} inputs for {n} arrivals")
    if max_outstanding is not None and max_outstanding < 1:
        raise ValueError(f"max_outstanding ({max_outstanding}) must be >= 1")
    if inputs is None:
        fixed = json.dumps({"inputs": fixed_input}).encode()
        bodies: list[bytes] = [fixed] * n
    else:
        bodies = [json.dumps({"inputs": x}).encode() for x in inputs]

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    # limit=0 is "no limit": a bounded pool would queue requests and close the loop.
    connector = aiohttp.TCPConnector(limit=max_outstanding or 0, limit_per_host=0)
    loop = asyncio.get_running_loop()
    bar = _ProgressBar(n) if progress else None
    async with aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=timeout_s),
        headers={"Content-Type": "application/json", **(headers or {})},
        trace_configs=[trace],
    ) as session:
        run = _Run(loop=loop, t0=loop.time() + _START_DELAY_S, records=[None] * n)
        for i in range(n):
            delay = run.t0 + times[i] - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
            if bar is not None:
                bar.update(run.done)
            if max_outstanding is not None and run.outstanding >= max_outstanding:
                run.records[i] = RequestRecord(
                    index=i,
                    scheduled_s=float(times[i]),
                    error=f"client cap of {max_outstanding} outstanding requests reached",
                )
                run.done += 1
                continue
            run.outstanding += 1
            task = asyncio.create_task(
                _send(run, session, url, index=i, scheduled_s=float(times[i]), body=bodies[i])
            )
            run.tasks.add(task)
            task.add_done_callback(run.tasks.discard)
        while run.tasks:
            if bar is not None:
                bar.update(run.done)
            await asyncio.wait(set(run.tasks), timeout=0.25 if bar is not None else None)
    if bar is not None:
        bar.update(run.done)
        bar.close()
    return [r for r in run.records if r is not None]


class _ProgressBar:
    """A rich progress bar, imported only when asked for."""

    def __init__(self, total: int) -> None:
        from rich.progress import Progress

        self._p = Progress()
        self._p.start()
        self._task = self._p.add_task("requests", total=total)

    def update(self, done: int) -> None:
        self._p.update(self._task, completed=done)

    def close(self) -> None:
        self._p.stop()


@dataclass(frozen=True, slots=True)
class LoadResult:
    records: tuple[RequestRecord, ...]
    summary: LoadSummary


def run_load(
    url: str,
    arrivals_s: npt.ArrayLike,
    inputs: Sequence[Any] | None = None,
    *,
    slo_s: float | None = None,
    csv_path: str | Path | None = None,
    fixed_input: Any = "hello",
    timeout_s: float = 30.0,
    max_outstanding: int | None = None,
    progress: bool = False,
    headers: Mapping[str, str] | None = None,
) -> LoadResult:
    """Blocking wrapper: ``run_open_loop``, then ``summarize``, then an optional CSV."""
    records = asyncio.run(
        run_open_loop(
            url,
            arrivals_s,
            inputs,
            fixed_input=fixed_input,
            timeout_s=timeout_s,
            max_outstanding=max_outstanding,
            progress=progress,
            headers=headers,
        )
    )
    if csv_path is not None:
        write_csv(records, csv_path)
    return LoadResult(tuple(records), summarize(records, slo_s))


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

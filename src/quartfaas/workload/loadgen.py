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

Idle connections are reused for ``keepalive_s`` at most (5 s by default), well under the
gateway's own idle close (``gateway.header_timeout_s``, 10 s by default). With aiohttp's
default of 15 s the pool handed out connections the gateway was closing: after a burst
the pool holds hundreds of connections, reused oldest first, so the calm phase that
follows picks up ones idle for ~10 s, exactly when the gateway closes them; on a starved
CPU the close and the reuse overlap and the request fails before any answer ("Can not
write request body"), a loss the gateway never saw (issue #13: 2 of 526 requests).

Each ``RequestRecord`` holds the schedule, send and wire times (seconds from the run start),
the latency (send to last byte of the answer), status, error text and the gateway's
``timings_ms`` breakdown when the answer carries one. ``summarize`` is pure and computes
latency percentiles of successful requests, SLO attainment and error counts.

Neighbours: ``workload/records.py`` (records, ``summarize``, CSV) and ``workload/payloads.py``
(request bodies, ``function_url``).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt

from quartfaas.workload.records import LoadSummary, RequestRecord, StageTiming, summarize, write_csv

_START_DELAY_S = 0.05  # head start so the first send does not race session setup
# Longest reuse of an idle connection: half the gateway's default idle close (10 s), so a
# stall of a few seconds on either side cannot make the two overlap.
KEEPALIVE_S = 5.0


def keepalive_for(header_timeout_s: float) -> float:
    """The idle reuse limit for a gateway that closes idle connections after
    ``header_timeout_s``: half of it, and never above ``KEEPALIVE_S``."""
    return min(KEEPALIVE_S, header_timeout_s / 2.0)


_ERROR_TEXT_MAX = 300


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
    keepalive_s: float = KEEPALIVE_S,
) -> list[RequestRecord]:
    """Send one POST per arrival to ``url`` at ``t0 + arrivals_s[i]``; return the records.

    ``inputs[i]`` is request ``i``'s ``inputs`` value (``fixed_input`` for all when
    ``inputs`` is None). Bodies are encoded before the first send so the schedule does not
    pay for JSON. ``timeout_s`` bounds each request; ``max_outstanding`` drops requests that
    would exceed that many unanswered ones. ``keepalive_s`` is the longest an idle
    connection is reused; keep it under the server's idle close (the gateway's
    ``gateway.header_timeout_s``), or requests race the server closing their connection.
    """
    times = np.asarray(arrivals_s, dtype=np.float64)
    n = int(times.size)
    if n and (np.any(np.diff(times) < 0) or times[0] < 0):
        raise ValueError("arrivals_s must be non-negative and sorted")
    if inputs is not None and len(inputs) != n:
        raise ValueError(f"{len(inputs)} inputs for {n} arrivals")
    if max_outstanding is not None and max_outstanding < 1:
        raise ValueError(f"max_outstanding ({max_outstanding}) must be >= 1")
    if not keepalive_s > 0:
        raise ValueError(f"keepalive_s ({keepalive_s}) must be > 0")
    if inputs is None:
        fixed = json.dumps({"inputs": fixed_input}).encode()
        bodies: list[bytes] = [fixed] * n
    else:
        bodies = [json.dumps({"inputs": x}).encode() for x in inputs]

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(_on_headers_sent)
    # limit=0 is "no limit": a bounded pool would queue requests and close the loop.
    connector = aiohttp.TCPConnector(
        limit=max_outstanding or 0, limit_per_host=0, keepalive_timeout=keepalive_s
    )
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
        from rich.console import Console
        from rich.progress import Progress

        self._p = Progress(console=Console(stderr=True))  # stdout is for the summary (#16)
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
    keepalive_s: float = KEEPALIVE_S,
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
            keepalive_s=keepalive_s,
        )
    )
    if csv_path is not None:
        write_csv(records, csv_path)
    return LoadResult(tuple(records), summarize(records, slo_s))

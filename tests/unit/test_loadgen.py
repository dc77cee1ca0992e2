"""Open-loop load generator against a tiny in-process aiohttp server on 127.0.0.1:0.

The server runs in its own thread and event loop (httpx's ``serve_in_thread`` pattern) and
answers after a short delay read from the request body, so these are the only tests here
that take wall time (about 2 s together). The summary maths is tested on plain records.
"""

from __future__ import annotations

import asyncio
import csv
import json
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from aiohttp import web

from quartfaas.workload.loadgen import run_load
from quartfaas.workload.payloads import function_url, inputs_for, sentence, token_ids
from quartfaas.workload.records import (
    CSV_COLUMNS,
    RequestRecord,
    StageTiming,
    summarize,
    write_csv,
)


@dataclass
class Server:
    url: str = ""
    received: list[float] = field(default_factory=list)  # time.monotonic() at receipt
    in_flight: int = 0
    max_in_flight: int = 0
    peers: list[int] = field(default_factory=list)  # client port of each request's connection


def _commands(inputs: object) -> dict[str, float]:
    # "delay=0.3;status=500" -> {"delay": 0.3, "status": 500.0}; anything else: defaults
    out: dict[str, float] = {}
    if isinstance(inputs, str) and "=" in inputs:
        for part in inputs.split(";"):
            k, _, v = part.partition("=")
            out[k] = float(v)
    return out


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    state = Server()
    ready = threading.Event()
    loop = asyncio.new_event_loop()

    async def handle(request: web.Request) -> web.Response:
        state.received.append(time.monotonic())
        peer = request.transport.get_extra_info("peername") if request.transport else None
        state.peers.append(peer[1] if peer else -1)
        state.in_flight += 1
        state.max_in_flight = max(state.max_in_flight, state.in_flight)
        try:
            cmd = _commands((await request.json())["inputs"])
            await asyncio.sleep(cmd.get("delay", 0.02))
            status = int(cmd.get("status", 200))
            if status != 200:
                return web.json_response({"error": f"told to fail with {status}"}, status=status)
            return web.json_response(
                {
                    "pipeline": request.match_info["name"],
                    "request_id": "r",
                    "output": {},
                    "timings_ms": {
                        "total": 12.5,
                        "stages": [
                            {"stage": "s0", "queue_ms": 1.0, "service_ms": 5.0, "hop_ms": 0.5},
                            {"stage": "s1", "queue_ms": 0.0, "service_ms": 6.0, "hop_ms": 0.0},
                        ],
                    },
                }
            )
        finally:
            state.in_flight -= 1

    app = web.Application()
    app.router.add_post("/function/{name}", handle)
    runner = web.AppRunner(app, shutdown_timeout=0.5)

    async def start() -> None:
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        state.url = f"http://127.0.0.1:{port}"
        ready.set()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(start())
        loop.run_forever()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    assert ready.wait(timeout=10.0), "test server did not start within 10 s"
    yield state

    async def stop() -> None:
        await runner.cleanup()
        # Handlers still sleeping (the deliberate timeouts) are cancelled, not leaked.
        rest = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in rest:
            t.cancel()
        await asyncio.gather(*rest, return_exceptions=True)

    asyncio.run_coroutine_threadsafe(stop(), loop).result(timeout=10.0)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10.0)
    loop.close()


def reset(s: Server) -> None:
    s.received.clear()
    s.peers.clear()
    s.max_in_flight = 0


# --- against the server ----------------------------------------------------------------------


def test_slow_server_does_not_delay_scheduled_sends(server: Server) -> None:
    reset(server)
    arrivals = np.arange(25) * 0.02  # 50 req/s for 0.5 s; each answer takes 0.3 s
    res = run_load(
        function_url(server.url, "bert"), arrivals, ["delay=0.3"] * 25, slo_s=1.0, timeout_s=5.0
    )
    recs = res.records
    assert [r.outcome for r in recs] == ["ok"] * 25
    # A closed loop would have one request in flight; open loop keeps ~15 outstanding.
    assert server.max_in_flight >= 10
    # A send that waited for an earlier answer would be at least one answer (0.3 s) late;
    # half of that leaves room for a busy host's scheduling (two busy loops delayed one
    # receipt by 59 ms against a 50 ms bound) and still catches the defect.
    tol = 0.15
    late = np.array([r.lateness_s for r in recs])
    wire = np.array([r.wire_s - r.scheduled_s for r in recs])  # type: ignore[operator]
    assert late.max() < tol and wire.max() < tol
    # Receipt at the server keeps the schedule's spacing: no delay accumulates.
    drift = np.array(server.received) - np.sort(arrivals)
    assert drift.max() - drift.min() < tol
    assert all(0.3 <= r.latency_s < 1.0 for r in recs)  # type: ignore[operator]
    assert recs[0].total_ms == 12.5
    assert recs[0].stages == (StageTiming("s0", 1.0, 5.0, 0.5), StageTiming("s1", 0.0, 6.0, 0.0))
    s = res.summary
    assert (s.sent, s.ok, s.dropped, s.slo_attainment) == (25, 25, 0, 1.0)
    assert s.offered_rps == pytest.approx(50.0)
    assert s.latency_p50_s is not None and s.latency_p50_s >= 0.3


def test_errors_timeouts_and_slo_attainment(server: Server, tmp_path: Path) -> None:
    inputs = ["delay=0.01"] * 5 + ["delay=0.3"] * 2 + ["status=500", "status=429", "delay=3"]
    arrivals = np.linspace(0.0, 0.1, len(inputs))
    res = run_load(
        function_url(server.url, "bert"),
        arrivals,
        inputs,
        slo_s=0.2,
        timeout_s=0.6,
        csv_path=tmp_path / "req.csv",
    )
    s = res.summary
    assert (s.scheduled, s.sent, s.ok, s.ok_within_slo) == (10, 10, 7, 5)
    assert s.slo_attainment == pytest.approx(0.5)  # 5 of all 10 sent, errors included
    assert dict(s.errors) == {"429": 1, "500": 1, "timeout": 1}
    by_index = {r.index: r for r in res.records}
    assert by_index[7].status == 500 and by_index[7].error == "told to fail with 500"
    assert by_index[9].outcome == "timeout" and by_index[9].latency_s is None
    assert s.latency_p99_s is not None and 0.3 <= s.latency_p99_s < 0.6
    rows = list(csv.DictReader((tmp_path / "req.csv").open()))
    assert tuple(rows[0]) == CSV_COLUMNS and len(rows) == 10
    assert json.loads(rows[0]["stages_json"])[1]["service_ms"] == 6.0
    assert rows[9]["outcome"] == "timeout" and rows[9]["latency_s"] == ""


def test_concurrency_cap_drops_instead_of_delaying(server: Server) -> None:
    arrivals = [0.0, 0.0, 0.0, 0.0, 0.5, 0.5]
    res = run_load(
        function_url(server.url, "bert"),
        arrivals,
        ["delay=0.2"] * 6,
        slo_s=1.0,
        max_outstanding=2,
    )
    outcomes = [r.outcome for r in res.records]
    assert outcomes == ["ok", "ok", "dropped", "dropped", "ok", "ok"]
    assert res.records[2].sent_s is None
    late = [r.lateness_s for r in res.records if r.lateness_s is not None]
    # the two sent at 0.5 s went out on time, not queued (a queued send waits for an
    # answer, 0.2 s; half of it is the bound, for a busy host)
    assert max(late) < 0.1
    s = res.summary
    assert (s.sent, s.dropped) == (4, 2)
    assert s.slo_attainment == 1.0
    assert s.slo_attainment_offered == pytest.approx(4 / 6)


def test_idle_connections_are_not_reused_past_keepalive(server: Server) -> None:
    """The loss behind issue #13's 2 failed requests in 526: the load generator reused
    connections idle for as long as the gateway keeps them (aiohttp's default 15 s
    against the gateway's 10 s), racing the gateway's close. Reuse stops at keepalive_s.

    The second request is sent ``4 x keepalive_s`` after the first was answered (it was
    when the second is due: the answer takes ``delay`` and the gap is far longer), so
    with an unlimited reuse it would ride the first one's connection."""
    keepalive_s = 0.1
    reset(server)
    res = run_load(function_url(server.url, "bert"), [0.0, 0.5], ["delay=0.01"] * 2,
                   keepalive_s=keepalive_s)  # fmt: skip
    assert [r.outcome for r in res.records] == ["ok", "ok"]
    first_done = res.records[0].sent_s + res.records[0].latency_s  # type: ignore[operator]
    assert res.records[1].sent_s - first_done > 4 * keepalive_s  # type: ignore[operator]
    assert server.peers[0] != server.peers[1], "an idle connection was reused past keepalive_s"
    # Within keepalive_s the connection is reused (a pool, not one connection a request):
    # here the limit is far above the gap, so a second connection would be a regression.
    reset(server)
    res = run_load(function_url(server.url, "bert"), [0.0, 0.5], ["delay=0.01"] * 2,
                   keepalive_s=60.0)  # fmt: skip
    first_done = res.records[0].sent_s + res.records[0].latency_s  # type: ignore[operator]
    if res.records[1].sent_s > first_done:  # type: ignore[operator]  # (a stall can reorder)
        assert server.peers[0] == server.peers[1]
    with pytest.raises(ValueError, match="keepalive_s"):
        run_load(function_url(server.url, "bert"), [0.0], keepalive_s=0.0)


def test_keepalive_for_stays_under_the_gateway_idle_close() -> None:
    from quartfaas.workload.loadgen import KEEPALIVE_S, keepalive_for

    assert keepalive_for(10.0) == KEEPALIVE_S == 5.0
    assert keepalive_for(2.0) == 1.0
    assert keepalive_for(3600.0) == KEEPALIVE_S


def test_connection_refused_is_recorded() -> None:
    with socket.socket() as sock:  # a port that nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    res = run_load(f"http://127.0.0.1:{port}/function/x", [0.0, 0.01], timeout_s=2.0)
    assert [r.outcome for r in res.records] == ["connection_error"] * 2
    assert res.summary.errors == {"connection_error": 2}
    assert res.summary.slo_attainment is None  # no SLO given


# --- pure parts ------------------------------------------------------------------------------


def rec(i: int, latency: float | None, status: int | None, outcome: str) -> RequestRecord:
    sent = None if outcome == "dropped" else float(i)
    return RequestRecord(i, float(i), sent, sent, latency, status, outcome)  # type: ignore[arg-type]


def test_summary_counts_and_percentiles() -> None:
    lat = [0.1 * k for k in range(1, 11)]  # 0.1 .. 1.0
    records = [rec(i, v, 200, "ok") for i, v in enumerate(lat)]
    records += [
        rec(10, 0.05, 503, "http_error"),
        rec(11, None, None, "timeout"),
        rec(12, None, None, "dropped"),
    ]
    s = summarize(records, slo_s=0.5)
    assert (s.scheduled, s.sent, s.dropped, s.ok, s.ok_within_slo) == (13, 12, 1, 10, 5)
    assert s.slo_attainment == pytest.approx(5 / 12)  # the fast 503 is not a success
    assert s.slo_attainment_offered == pytest.approx(5 / 13)
    assert s.errors == {"503": 1, "timeout": 1}
    assert s.latency_p50_s == pytest.approx(0.5)
    assert s.latency_p99_s == pytest.approx(1.0)
    assert s.latency_mean_s == pytest.approx(0.55)
    assert s.offered_rps == pytest.approx(1.0)  # 13 scheduled over 12 s
    assert s.achieved_rps == pytest.approx(10 / 10.0)  # first send 0 s, last answer 9 + 1.0
    empty = summarize([], slo_s=1.0)
    assert (empty.sent, empty.slo_attainment, empty.latency_p50_s) == (0, None, None)


def test_payloads_are_deterministic_and_capped() -> None:
    assert sentence(3) == "the model reads"
    assert len(sentence(10_000, max_words=64).split()) == 64
    assert len(sentence(0).split()) == 1
    assert sentence(5, salt=2) != sentence(5, salt=3)
    ids = token_ids(500, max_len=32)
    assert len(ids) == 1 and len(ids[0]) == 32
    assert all(1000 <= i < 30522 for i in ids[0])
    texts = inputs_for(np.array([3, 300]), 2, max_len=16)
    assert [len(t.split()) for t in texts] == [3, 16]
    assert inputs_for(np.array([3, 300]), 2, max_len=16) == texts
    assert [len(x[0]) for x in inputs_for(None, 2, mode="tokens", default_len=8)] == [8, 8]
    with pytest.raises(ValueError, match="prompt lengths"):
        inputs_for([1, 2, 3], 2)


def test_write_csv_of_dropped_and_ok_records(tmp_path: Path) -> None:
    records = [rec(0, 0.25, 200, "ok"), rec(1, None, None, "dropped")]
    write_csv(records, tmp_path / "r.csv")
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert rows[0]["latency_s"] == "0.25" and rows[0]["lateness_s"] == "0.0"
    assert rows[1]["outcome"] == "dropped" and rows[1]["sent_s"] == ""

"""Issue #13 on real processes: every error is JSON and counted, admission by bytes and by
deadline, large bodies parsed off the event loop, header deadlines, batch caps."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest

from helpers import synthetic_spec
from quartfaas.dataplane import framing
from quartfaas.runtime import EmbeddedRuntime
from quartfaas.spec import PipelineSpec

pytestmark = pytest.mark.timeout(180)


def run(spec: PipelineSpec, body: Callable[[EmbeddedRuntime, httpx.AsyncClient], Awaitable[Any]],
        **kw: Any) -> Any:  # fmt: skip
    async def main() -> Any:
        async with (
            EmbeddedRuntime(spec, **kw) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=60.0) as client,
        ):
            return await body(rt, client)

    return asyncio.run(main())


def count(rt: EmbeddedRuntime, function: str, code: int) -> float:
    label = rt.gateway.namespaces.label(function)  # upstream's name.namespace form (#16)
    value = rt.gateway.metrics.registry.get_sample_value(
        "gateway_function_invocation_total", {"function_name": label, "code": str(code)}
    )
    return value or 0.0


def raw_frame(header: dict[str, Any], data: bytes = b"") -> bytes:
    head = json.dumps(header).encode()
    return len(head).to_bytes(8, "little") + head + data


JSON = {"Content-Type": "application/json"}


def test_hostile_bodies_are_json_400s_and_counted(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="hb")

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        bodies = {
            "beyond int64": b'{"inputs": [[' + str(2**70).encode() + b"]]}",
            "5000 digits": b'{"inputs": [[' + b"9" * 5000 + b"]]}",
            "100k-deep nesting": b'{"inputs": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
            "bool ids": b'{"inputs": [[true, false]]}',
        }
        for what, raw in bodies.items():
            r = await c.post("/function/hb", content=raw, headers=JSON)
            assert r.status_code == 400, (what, r.status_code, r.text[:200])
            assert r.headers["Content-Type"].startswith("application/json"), what
            assert r.json()["code"] == 400
        assert count(rt, "hb", 400) == len(bodies)
        # A frame whose shape overflows 64 bits, to a stage function.
        huge = raw_frame({"x": {"dtype": "F32", "shape": [2**70], "data_offsets": [0, 0]}})
        r = await c.post("/function/hb-s1", content=huge,
                         headers={"Content-Type": framing.CONTENT_TYPE})  # fmt: skip
        assert r.status_code == 400 and "64-bit" in r.json()["error"]
        assert count(rt, "hb-s1", 400) == 1
        # aiohttp's own errors answer JSON too.
        r = await c.get("/no/such/route")
        assert r.status_code == 404 and r.json()["code"] == 404
        # (/function/{name} takes any method, as upstream; the scale API is POST only.)
        r = await c.get("/system/scale-function/hb")
        assert r.status_code == 405 and "POST" in r.headers["Allow"]
        assert r.json()["code"] == 405

    run(spec, body)


def test_a_defect_is_a_json_500_and_counted(
    kill_leftovers: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = synthetic_spec(1, name="ie")

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))

        def broken(payload: Any) -> bytes:  # a defect no input check anticipated
            raise ZeroDivisionError("division by zero")

        monkeypatch.setattr(rt.gateway.inputs, "encode", broken)
        r = await c.post("/function/ie", json={"inputs": [[1]]})
        assert r.status_code == 500 and r.headers["Content-Type"].startswith("application/json")
        assert "ZeroDivisionError" in r.json()["error"]
        assert count(rt, "ie", 500) == 1
        monkeypatch.undo()
        assert (await c.post("/function/ie", json={"inputs": [[1]]})).status_code == 200

    run(spec, body)


def test_non_ascii_basic_auth_is_401_not_500(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="na", gateway={"auth": {"enabled": True}})

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        for user, password in [("admïn", "s3cret"), ("admin", "sécret"), ("ü", "ß")]:
            token = base64.b64encode(f"{user}:{password}".encode()).decode()
            r = await c.get("/system/functions", headers={"Authorization": f"Basic {token}"})
            assert r.status_code == 401, (user, password, r.text)
        # A non-ASCII password that is right is accepted (compared as UTF-8 bytes).
        r = await c.get("/system/functions", auth=("admin", "pässwörd"))
        assert r.status_code == 200
        r = await c.get("/system/functions", headers={"Authorization": "Basic ä==".encode()})
        assert r.status_code == 401

    run(spec, body, environ={"QUARTFAAS_GATEWAY_PASSWORD": "pässwörd"})


def test_oversize_batches_are_refused_by_gateway_and_worker(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="bc", gateway={"max_batch": 4})

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        ok = framing.encode_numpy({"hidden": np.zeros((4, 2, 16), np.float32)})
        big = framing.encode_numpy({"hidden": np.zeros((5, 2, 16), np.float32)})
        frame = {"Content-Type": framing.CONTENT_TYPE}
        assert (await c.post("/function/bc-s1", content=ok, headers=frame)).status_code == 200
        r = await c.post("/function/bc-s1", content=big, headers=frame)
        assert r.status_code == 413 and "max_batch" in r.json()["error"]
        r = await c.post("/function/bc", json={"inputs": [[1]] * 5})
        assert r.status_code == 400 and "at most 4" in r.json()["error"]
        # The worker checks too, whoever calls it (another gateway, a direct client).
        (ep,) = rt.gateway.pools["bc-s1"].endpoints.values()
        async with httpx.AsyncClient(timeout=30.0) as direct:
            r = await direct.post(ep.url, content=big, headers=frame)
            assert r.status_code == 413 and "max_batch" in r.json()["error"]
            assert (await direct.post(ep.url, content=ok, headers=frame)).is_success

    run(spec, body)


def test_overload_gets_quick_429s_not_504s(kill_leftovers: list[str]) -> None:
    # One slot, 200 ms a request (a sleep: the machine's load barely moves it), a 4 s
    # stage timeout: about 20 requests fit; a burst of 80 must not wait 4 s to learn it
    # was too many.
    spec = synthetic_spec(1, name="ov", work="sleep", mean_ms=200.0,
                          stage_overrides={0: {"max_concurrency": 1, "max_replicas": 1,
                                               "timeout_s": 4.0}})  # fmt: skip

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        # The gateway measures how long a request holds the slot, with a queue (and the
        # gateway's work for it) as in the burst.
        warm = await asyncio.gather(*(c.post("/function/ov", json={"inputs": [[1]]})
                                      for _ in range(6)))  # fmt: skip
        assert all(r.status_code == 200 for r in warm)

        async def one() -> tuple[int, float, httpx.Response]:
            t0 = time.monotonic()
            r = await c.post("/function/ov", json={"inputs": [[1]]})
            return r.status_code, time.monotonic() - t0, r

        results = await asyncio.gather(*(one() for _ in range(80)))
        codes = [code for code, _, _ in results]
        assert codes.count(504) == 0, codes
        assert codes.count(429) >= 40 and codes.count(200) >= 10, codes
        refused = [(s, r) for code, s, r in results if code == 429]
        slowest_ok = max(s for code, s, _ in results if code == 200)
        assert all(s < slowest_ok for s, _ in refused)  # refused before the queue drained
        for _, r in refused:
            assert int(r.headers["Retry-After"]) >= 1
            assert "within its timeout" in r.json()["error"]
        assert count(rt, "ov", 429) == codes.count(429)

    run(spec, body)


def test_byte_budgets_refuse_with_429(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="bb", work="sleep", mean_ms=400.0,
                          gateway={"max_inflight_bytes": 2048})  # fmt: skip
    row = [1] * 100  # ~300 bytes a row: one 6-row request fits the budget, not two

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        payload = {"inputs": [row] * 6}
        rs = await asyncio.gather(*(c.post("/function/bb", json=payload) for _ in range(3)))
        codes = sorted(r.status_code for r in rs)
        assert codes.count(200) >= 1 and codes.count(429) >= 1, codes
        r429 = next(r for r in rs if r.status_code == 429)
        assert "max_inflight_bytes" in r429.json()["error"] and "Retry-After" in r429.headers
        # Once the first is done its bytes are free again.
        assert (await c.post("/function/bb", json=payload)).status_code == 200
        assert rt.gateway.pipeline.admission.total.used == 0

    run(spec, body)


def test_a_huge_body_is_parsed_off_the_event_loop(kill_leftovers: list[str]) -> None:
    # 16 MB of text: json + tokenising hold the GIL ~1 s; inline, every small request
    # sent meanwhile waited for it. Off the loop, they are all answered before it.
    spec = synthetic_spec(1, name="hp", gateway={"max_body_bytes": 20 * 2**20})
    big = json.dumps({"inputs": "lorem ipsum dolor " * (16 * 2**20 // 18)}).encode()

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        assert (await c.post("/function/hp", json={"inputs": "warm"})).status_code == 200
        big_task = asyncio.create_task(c.post("/function/hp", content=big, headers=JSON))
        deadline = time.monotonic() + 60
        while rt.gateway.inputs._pool is None:  # the body is read and its parse started
            assert time.monotonic() < deadline and not big_task.done()
            await asyncio.sleep(0.005)
        latencies = []
        for _ in range(10):
            t0 = time.monotonic()
            assert (await c.post("/function/hp", json={"inputs": "small"})).status_code == 200
            latencies.append(time.monotonic() - t0)
            if big_task.done():
                break
        assert not big_task.done(), f"small requests waited for the big one: {latencies}"
        r = await big_task
        assert r.status_code == 200 and r.json()["output"]["input_ids"]["shape"][0] == 1

    run(spec, body)


def test_slow_header_connections_are_closed(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="sh", gateway={"header_timeout_s": 1.0})
    n = 500

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        port = int(rt.url.rsplit(":", 1)[1])
        socks = []
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port))
            s.sendall(b"POST /function/sh HTTP/1.1\r\nHost: x\r\n")  # never finished
            s.setblocking(False)
            socks.append(s)
        # A normal client is served meanwhile.
        assert (await c.post("/function/sh", json={"inputs": [[1]]})).status_code == 200
        t0 = time.monotonic()
        open_ = list(socks)
        while open_ and time.monotonic() - t0 < 30:
            await asyncio.sleep(0.1)
            still = []
            for s in open_:
                try:
                    if s.recv(1) == b"":
                        s.close()
                        continue
                except BlockingIOError:
                    pass
                except ConnectionError:
                    s.close()
                    continue
                still.append(s)
            open_ = still
        for s in open_:
            s.close()
        assert not open_, f"{len(open_)} of {n} slow-header connections still open after 30 s"

    run(spec, body)


def test_a_body_that_never_arrives_is_a_json_408(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="sb", gateway={"body_timeout_s": 0.5})

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        port = int(rt.url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"POST /function/sb HTTP/1.1\r\nHost: x\r\nContent-Type: application/json"
                     b"\r\nContent-Length: 100\r\n\r\n{\"inp")  # fmt: skip
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
        assert head.startswith(b"HTTP/1.1 408") and b"application/json" in head
        writer.close()
        assert count(rt, "sb", 408) == 1

    run(spec, body)

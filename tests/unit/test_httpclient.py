"""The gateway -> worker HTTP client against a tiny real server on 127.0.0.1, port 0.

Each test scripts the server's side of the exchange (content-length and chunked replies,
a keep-alive connection the server closed while idle, a reply cut short, no reply at
all) and checks what ``EndpointClient.post`` returns or raises.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Awaitable, Callable

import pytest

from quartfaas.dataplane.httpclient import EndpointClient, WorkerConnectionError

Reply = Callable[[int, bytes, asyncio.StreamWriter], Awaitable[bool]]
"""(request number, request body, writer) -> keep the connection open?"""


class TinyServer:
    """Reads one HTTP/1.1 request at a time per connection; ``reply`` writes the answer."""

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.connections = 0
        self.requests: list[tuple[str, dict[str, str], bytes]] = []
        self.server: asyncio.Server | None = None
        self.port = 0

    async def __aenter__(self) -> TinyServer:
        self.server = await asyncio.start_server(self._conn, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *_: object) -> None:
        assert self.server is not None
        self.server.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.server.wait_closed(), 2.0)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/invoke"

    async def _conn(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                lines = head.decode("latin-1").split("\r\n")
                headers = {}
                for line in lines[1:]:
                    if line:
                        k, _, v = line.partition(":")
                        headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", "0")))
                self.requests.append((lines[0], headers, body))
                keep = await self.reply(len(self.requests), body, writer)
                await writer.drain()
                if not keep:
                    return
        finally:
            writer.close()


def ok_reply(body: bytes, extra: str = "") -> bytes:
    return (
        f"HTTP/1.1 200 OK\r\nContent-Length: {len(body)}\r\nX-Quartfaas-Service-Ms: 1.5\r\n"
        f"{extra}\r\n"
    ).encode() + body


async def echo(_: int, body: bytes, w: asyncio.StreamWriter) -> bool:
    w.write(ok_reply(b"echo:" + body))
    return True


def deadline(seconds: float = 30.0) -> float:
    return asyncio.get_running_loop().time() + seconds


def test_content_length_reply_and_keep_alive_reuse() -> None:
    async def main() -> None:
        async with TinyServer(echo) as srv:
            c = EndpointClient(srv.url)
            for i in range(3):
                status, headers, data = await c.post(
                    f"b{i}".encode(), {"Content-Type": "x/y"}, deadline()
                )
                assert (status, data) == (200, f"echo:b{i}".encode())
                assert headers["x-quartfaas-service-ms"] == "1.5"  # lower-cased names
            assert srv.connections == 1  # one pooled connection served all three
            line, sent_headers, _ = srv.requests[0]
            assert line == "POST /invoke HTTP/1.1"
            assert sent_headers["content-type"] == "x/y"
            assert sent_headers["host"] == f"127.0.0.1:{srv.port}"
            c.close()

    asyncio.run(main())


def test_chunked_reply_is_reassembled() -> None:
    parts = [b"hello ", b"chunked", b" world" * 1000]

    async def chunked(_: int, __: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        for i, p in enumerate(parts):
            ext = b";name=value" if i == 1 else b""  # chunk extensions are ignored
            w.write(f"{len(p):x}".encode() + ext + b"\r\n" + p + b"\r\n")
            await w.drain()
        w.write(b"0\r\n\r\n")
        return True

    async def main() -> None:
        async with TinyServer(chunked) as srv:
            c = EndpointClient(srv.url)
            for _ in range(2):  # the connection is reusable after a chunked reply
                status, _, data = await c.post(b"x", {}, deadline())
                assert status == 200 and data == b"".join(parts)
            assert srv.connections == 1
            c.close()

    asyncio.run(main())


def test_stale_pooled_connection_is_retried_once_on_a_fresh_one() -> None:
    async def close_after_reply(_: int, body: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(ok_reply(body))  # keep-alive reply, then the server closes it while idle
        return False

    async def main() -> None:
        async with TinyServer(close_after_reply) as srv:
            c = EndpointClient(srv.url)
            assert (await c.post(b"one", {}, deadline()))[2] == b"one"
            await asyncio.sleep(0.05)  # the server's FIN reaches the pooled connection
            assert (await c.post(b"two", {}, deadline()))[2] == b"two"
            assert srv.connections == 2
            assert [r[2] for r in srv.requests] == [b"one", b"two"]  # "two" ran once
            c.close()

    asyncio.run(main())


def test_pooled_connection_reset_while_idle_is_retried_not_a_crash() -> None:
    async def reset_after_reply(_: int, body: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(ok_reply(body))
        await w.drain()
        sock = w.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        w.transport.abort()  # close with RST, as a server that drops a connection does
        return False

    async def main() -> None:
        async with TinyServer(reset_after_reply) as srv:
            c = EndpointClient(srv.url)
            assert (await c.post(b"one", {}, deadline()))[2] == b"one"
            await asyncio.sleep(0.05)  # the RST reaches the pooled connection
            assert (await c.post(b"two", {}, deadline()))[2] == b"two"
            assert srv.connections == 2
            c.close()

    asyncio.run(main())


def test_reply_cut_short_on_a_pooled_connection_is_not_retried() -> None:
    async def cut(n: int, body: bytes, w: asyncio.StreamWriter) -> bool:
        if n == 1:
            w.write(ok_reply(body))
            return True
        w.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial")
        return False

    async def main() -> None:
        async with TinyServer(cut) as srv:
            c = EndpointClient(srv.url)
            await c.post(b"one", {}, deadline())
            with pytest.raises(WorkerConnectionError, match="IncompleteReadError"):
                await c.post(b"two", {}, deadline())
            assert len(srv.requests) == 2  # no second attempt: the replica had answered
            c.close()

    asyncio.run(main())


def test_fresh_connection_closed_without_a_reply_is_a_connection_error() -> None:
    async def hang_up(_: int, __: bytes, ___: asyncio.StreamWriter) -> bool:
        return False

    async def main() -> None:
        async with TinyServer(hang_up) as srv:
            c = EndpointClient(srv.url)
            with pytest.raises(WorkerConnectionError):
                await c.post(b"x", {}, deadline())
            assert len(srv.requests) == 1  # a fresh connection is never retried
            assert c._idle == []

    asyncio.run(main())


def test_refused_connection_is_a_connection_error() -> None:
    async def main() -> None:
        async with TinyServer(echo) as srv:
            url = srv.url
        c = EndpointClient(url)  # the server is closed: nothing listens on that port
        with pytest.raises(WorkerConnectionError, match="cannot connect"):
            await c.post(b"x", {}, deadline())

    asyncio.run(main())


def test_deadline_raises_timeout_and_the_connection_is_not_reused() -> None:
    async def slow(n: int, body: bytes, w: asyncio.StreamWriter) -> bool:
        if n == 1:
            await asyncio.sleep(5.0)  # past the client's deadline below
        w.write(ok_reply(body))
        return True

    async def main() -> None:
        async with TinyServer(slow) as srv:
            c = EndpointClient(srv.url)
            loop = asyncio.get_running_loop()
            with pytest.raises(TimeoutError):
                await c.post(b"late", {}, loop.time() + 0.2)
            assert c._idle == []  # a connection that timed out is closed, never reused
            assert (await c.post(b"next", {}, deadline()))[2] == b"next"
            assert srv.connections == 2
            c.close()

    asyncio.run(main())


def test_connection_close_header_is_honoured() -> None:
    async def close_hdr(_: int, body: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(ok_reply(body, "Connection: close\r\n"))
        return False

    async def main() -> None:
        async with TinyServer(close_hdr) as srv:
            c = EndpointClient(srv.url)
            await c.post(b"a", {}, deadline())
            assert c._idle == []
            await c.post(b"b", {}, deadline())
            assert srv.connections == 2

    asyncio.run(main())


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (b"SPDY/9 200 OK\r\nContent-Length: 0\r\n\r\n", "malformed status line"),
        (b"HTTP/1.1 200 OK\r\n\r\n", "without Content-Length or chunked"),
        (b"HTTP/1.1 abc OK\r\nContent-Length: 0\r\n\r\n", "ValueError"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "ValueError"),
    ],
    ids=["status line", "no length", "status code", "chunk size"],
)
def test_malformed_replies_are_connection_errors(raw: bytes, match: str) -> None:
    async def bad(_: int, __: bytes, w: asyncio.StreamWriter) -> bool:
        w.write(raw)
        return False

    async def main() -> None:
        async with TinyServer(bad) as srv:
            c = EndpointClient(srv.url)
            with pytest.raises(WorkerConnectionError, match=match):
                await c.post(b"x", {}, deadline())
            assert c._idle == []

    asyncio.run(main())


def test_only_http_urls_are_accepted_and_close_empties_the_pool() -> None:
    with pytest.raises(ValueError, match="expected an http:// URL"):
        EndpointClient("https://127.0.0.1:1/invoke")

    async def main() -> None:
        async with TinyServer(echo) as srv:
            c = EndpointClient(srv.url)
            await c.post(b"a", {}, deadline())
            assert len(c._idle) == 1
            c.close()
            assert c._idle == []
            await c.post(b"b", {}, deadline())  # still usable; closed after use
            assert c._idle == []

    asyncio.run(main())

"""A minimal HTTP/1.1 client for the gateway -> worker hop (keep-alive, one request at a time).

The gateway talks to its own workers only: ``POST /invoke`` with a tensor frame, and an
answer with ``Content-Length`` (aiohttp's server always sends it for a body). A general
client (aiohttp's ``ClientSession``) spent about twice as long per call on this path
(URL handling, cookie jar, tracing, a task per timeout), which is the per-hop overhead
every stage pays, so the hop uses this instead: persistent connections per replica,
pooled, one outstanding request per connection, a deadline via ``asyncio.timeout``.

Errors: a connection that fails (refused, reset, closed early) raises
``WorkerConnectionError``, which the dispatcher treats as a crashed replica (retry once
elsewhere); a deadline raises ``TimeoutError``. A connection that saw either is closed,
never reused. A pooled connection that turns out closed or reset before any reply byte
(the replica closed it while idle) is not a crash: the request is sent again on a fresh
connection.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping
from urllib.parse import urlsplit


class WorkerConnectionError(ConnectionError):
    """The replica could not be reached or dropped the connection."""


def _stale(exc: BaseException) -> bool:
    """Did a pooled connection fail before any byte of a reply arrived?"""
    if isinstance(exc, asyncio.IncompleteReadError):
        return not exc.partial
    return isinstance(exc, ConnectionResetError | BrokenPipeError)


class _Conn:
    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class EndpointClient:
    """Pooled keep-alive connections to one replica's ``POST {path}``."""

    def __init__(self, url: str, *, max_idle: int = 64) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"expected an http:// URL, got {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.path = parts.path or "/"
        self._idle: list[_Conn] = []
        self._max_idle = max_idle
        self._closed = False

    async def _connect(self) -> _Conn:
        try:
            reader, writer = await asyncio.open_connection(self.host, self.port)
        except OSError as exc:
            raise WorkerConnectionError(
                f"cannot connect to {self.host}:{self.port}: {exc}"
            ) from None
        return _Conn(reader, writer)

    async def post(
        self, body: bytes, headers: Mapping[str, str], deadline: float
    ) -> tuple[int, dict[str, str], bytes]:
        """Send one request; (status, lower-cased headers, body). ``deadline``: loop time."""
        conn = self._idle.pop() if self._idle else None
        fresh = conn is None
        if conn is None:
            async with asyncio.timeout_at(deadline):
                conn = await self._connect()
        head = [f"POST {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"]
        for k, v in headers.items():
            head.append(f"{k}: {v}\r\n")
        head.append(f"Content-Length: {len(body)}\r\n\r\n")
        try:
            async with asyncio.timeout_at(deadline):
                conn.writer.write("".join(head).encode("latin-1"))
                conn.writer.write(body)
                status, resp_headers, data = await self._read_response(conn)
        except TimeoutError:
            conn.close()
            raise
        except asyncio.CancelledError:
            conn.close()
            raise
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            conn.close()
            if not fresh and _stale(exc):
                # A pooled connection the server had already closed (idle timeout: EOF, or
                # a reset if it closed with unread data): retry on a fresh connection
                # instead of reporting a healthy replica as crashed.
                return await self.post(body, headers, deadline)
            raise WorkerConnectionError(
                f"{self.host}:{self.port}: {type(exc).__name__}: {exc}"
            ) from None
        if resp_headers.get("connection", "").lower() == "close" or self._closed:
            conn.close()
        elif len(self._idle) < self._max_idle:
            self._idle.append(conn)
        else:
            conn.close()
        return status, resp_headers, data

    @staticmethod
    async def _read_response(conn: _Conn) -> tuple[int, dict[str, str], bytes]:
        raw = await conn.reader.readuntil(b"\r\n\r\n")
        lines = raw.decode("latin-1").split("\r\n")
        parts = lines[0].split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
            raise ValueError(f"malformed status line {lines[0]!r}")
        status = int(parts[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            if line:
                k, _, v = line.partition(":")
                headers[k.strip().lower()] = v.strip()
        if "content-length" in headers:
            data = await conn.reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int((await conn.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await conn.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            data = b"".join(chunks)
        else:
            raise ValueError("response without Content-Length or chunked encoding")
        return status, headers, data

    def close(self) -> None:
        self._closed = True
        for c in self._idle:
            c.close()
        self._idle.clear()

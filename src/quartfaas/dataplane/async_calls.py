"""``POST /async-function/{name}``: accept at once (202), run later, post the result back.

Upstream's gateway puts the request on a queue and answers 202 with the ``X-Call-Id``
(openfaas/faas ``gateway/handlers/queue_proxy.go`` lines 39-66, wrapped in the call-id
middleware in ``gateway/main.go`` line 169); a ``X-Callback-Url`` that does not parse
is a 400 (``queue_proxy.go`` lines 70-83). The queue worker later calls the function
and, when a callback URL was given, POSTs the function's body there with the headers
``X-Call-Id``, ``X-Function-Status``, ``X-Function-Name`` and ``X-Duration-Seconds``
(openfaas/nats-queue-worker ``main.go``, ``postResult``).

quartfaas has no external queue: ``AsyncCalls`` keeps at most ``max_pending`` accepted
calls in this process and refuses more with 429 (a bounded queue, as the stage queues
are). Calls accepted but not finished are lost if the gateway dies, as they would be
with an in-memory queue upstream; ``drain`` lets a clean stop finish them.
The invoke and post functions are passed in, so this runs against fakes in unit tests.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from quartfaas.errors import BadRequest, QueueFull

log = logging.getLogger("quartfaas.async")

CALLBACK_URL = "X-Callback-Url"


@dataclass(frozen=True, slots=True)
class CallResult:
    status: int
    body: bytes
    content_type: str
    duration_s: float


#: (function, body, headers) -> the call's result
Invoke = Callable[[str, bytes, Mapping[str, str]], Awaitable[CallResult]]
Post = Callable[[str, bytes, Mapping[str, str]], Awaitable[int]]


def parse_callback_url(value: str | None) -> str | None:
    """The callback URL of a request, or None; an unusable one is a 400 at accept time."""
    if not value:
        return None
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise BadRequest(f"{CALLBACK_URL} {value!r} is not an http(s) URL with a host")
    return value


def callback_headers(call_id: str, function: str, result: CallResult) -> dict[str, str]:
    """The headers upstream's queue worker sets on the callback POST."""
    return {
        "Content-Type": result.content_type,
        "X-Call-Id": call_id,
        "X-Function-Status": str(result.status),
        "X-Function-Name": function,
        "X-Duration-Seconds": f"{result.duration_s:.6f}",
    }


class AsyncCalls:
    """Accepted asynchronous calls, run as tasks on the gateway's event loop."""

    def __init__(self, invoke: Invoke, post: Post, *, max_pending: int) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending ({max_pending}) must be >= 1")
        self._invoke = invoke
        self._post = post
        self.max_pending = max_pending
        self._tasks: set[asyncio.Task[None]] = set()
        self.delivered = 0
        self.failed_deliveries = 0

    @property
    def pending(self) -> int:
        return len(self._tasks)

    def submit(
        self,
        call_id: str,
        function: str,
        body: bytes,
        headers: Mapping[str, str],
        callback_url: str | None,
    ) -> None:
        """Accept one call (the caller answers 202) or raise ``QueueFull`` (429)."""
        if len(self._tasks) >= self.max_pending:
            raise QueueFull(
                f"{len(self._tasks)} asynchronous calls are pending (at most "
                f"{self.max_pending}); retry later",
                retry_after_s=1.0,
            )
        task = asyncio.get_running_loop().create_task(
            self._run(call_id, function, body, dict(headers), callback_url),
            name=f"async-call-{call_id}",
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(
        self,
        call_id: str,
        function: str,
        body: bytes,
        headers: dict[str, str],
        callback_url: str | None,
    ) -> None:
        result = await self._invoke(function, body, headers)
        if callback_url is None:
            return
        try:
            status = await self._post(
                callback_url, result.body, callback_headers(call_id, function, result)
            )
        except Exception as exc:  # the callback's failure is logged, never raised
            self.failed_deliveries += 1
            log.warning("call %s: callback to %s failed: %s", call_id, callback_url, exc)
            return
        self.delivered += 1
        if status >= 400:
            log.warning("call %s: callback %s answered %d", call_id, callback_url, status)

    async def drain(self, timeout_s: float) -> int:
        """Wait up to ``timeout_s`` for pending calls; cancel the rest. Returns cancelled."""
        if not self._tasks:
            return 0
        _, rest = await asyncio.wait(set(self._tasks), timeout=timeout_s)
        for task in rest:
            task.cancel()
        if rest:
            await asyncio.gather(*rest, return_exceptions=True)
            log.warning("%d asynchronous calls were cancelled at stop", len(rest))
        return len(rest)

"""Per-stage dispatch: a bounded FIFO queue in front of a stage's replicas.

Each stage has one ``StagePool``. A request for the stage takes a *slot* on the
least-loaded ready replica (in-flight / capacity, capacity = the stage's
``max_concurrency``) or waits in FIFO order; a full queue refuses at once (429). A slot
is released as soon as that replica answers, so an early stage's replica is never held
while later stages run (the prototype's nested synchronous chaining did hold them).

Replicas come and go through ``add``/``remove``/``drain``, called by the runtime when the
backend reports a replica ready, gone or stopping. A replica that fails a request at the
connection level is taken out of rotation at once (``mark_failed``) and the backend is
told, so the crash is confirmed and the replica replaced.

Everything here runs on the gateway's event loop; nothing blocks.

A replica is called through ``EndpointClient`` (HTTP) unless the pool's
``client_factory`` says otherwise: a backend whose replicas are not HTTP workers (the Ray
backend's actors) sets it to build a client with the same ``post``/``close``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quartfaas.dataplane.httpclient import EndpointClient
from quartfaas.errors import NoReplicas, QueueFull, StageTimeout


@dataclass(eq=False)
class Endpoint:
    """One ready replica as the dispatcher sees it."""

    replica_id: str
    url: str
    capacity: int
    inflight: int = 0
    draining: bool = False
    failed: bool = False
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # (replica_id, url) -> a client with EndpointClient's post/close; None: HTTP
    client_factory: Callable[[str, str], Any] | None = None
    client: EndpointClient = field(init=False)

    def __post_init__(self) -> None:
        make = self.client_factory
        self.client = EndpointClient(self.url) if make is None else make(self.replica_id, self.url)

    @property
    def routable(self) -> bool:
        return not self.draining and not self.failed and self.inflight < self.capacity


class StagePool:
    """The replicas of one stage and the queue of requests waiting for a slot."""

    def __init__(
        self,
        name: str,
        capacity_per_replica: int,
        max_queue_len: int,
        retry_after_s: float,
        *,
        on_demand: Callable[[str], None] | None = None,
        on_failed: Callable[[str, str], None] | None = None,
    ) -> None:
        self.name = name
        self.capacity = capacity_per_replica
        self.max_queue_len = max_queue_len
        self.retry_after_s = retry_after_s
        self.endpoints: dict[str, Endpoint] = {}
        self.waiters: collections.deque[asyncio.Future[Endpoint]] = collections.deque()
        self.starting = 0  # replicas the backend is starting (kept by the runtime)
        self.last_start_error = ""
        self._on_demand = on_demand
        self._on_failed = on_failed
        # (replica_id, url) -> endpoint client; None: HTTP (set by non-HTTP backends)
        self.client_factory: Callable[[str, str], Any] | None = None

    # -- observation --------------------------------------------------------------

    @property
    def queue_len(self) -> int:
        return len(self.waiters)

    @property
    def inflight(self) -> int:
        return sum(e.inflight for e in self.endpoints.values())

    @property
    def ready_replicas(self) -> int:
        return sum(1 for e in self.endpoints.values() if not e.draining and not e.failed)

    def has_prospect(self) -> bool:
        """Could a slot still come: a usable replica now, or one starting."""
        return self.ready_replicas > 0 or self.starting > 0

    # -- membership ---------------------------------------------------------------

    def add(self, replica_id: str, url: str) -> None:
        self.endpoints[replica_id] = Endpoint(
            replica_id, url, self.capacity, client_factory=self.client_factory
        )
        self._hand_off()

    def remove(self, replica_id: str) -> Endpoint | None:
        ep = self.endpoints.pop(replica_id, None)
        if ep is not None:
            ep.failed = True
            ep.idle.set()
            ep.client.close()
        self.fail_waiters_if_hopeless()
        return ep

    def mark_failed(self, ep: Endpoint, why: str) -> None:
        """Stop routing to a replica that failed at the connection level."""
        if not ep.failed:
            ep.failed = True
            if self._on_failed is not None:
                self._on_failed(ep.replica_id, why)
        self.fail_waiters_if_hopeless()

    async def drain(self, replica_id: str, timeout_s: float) -> bool:
        """Stop routing new work to a replica and wait for its in-flight work to finish."""
        ep = self.endpoints.get(replica_id)
        if ep is None:
            return True
        ep.draining = True
        if ep.inflight == 0:
            ep.idle.set()
        try:
            await asyncio.wait_for(ep.idle.wait(), timeout=timeout_s)
            return True
        except TimeoutError:
            return False
        finally:
            self.endpoints.pop(replica_id, None)
            ep.client.close()
            self.fail_waiters_if_hopeless()

    def fail_waiters_if_hopeless(self) -> None:
        """With no replica and none starting, waiting is pointless: answer 503 now."""
        if self.has_prospect() or not self.waiters:
            return
        why = f"; last start failure: {self.last_start_error}" if self.last_start_error else ""
        err = NoReplicas(f"stage {self.name} has no ready or starting replica{why}")
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(err)

    # -- slots --------------------------------------------------------------------

    def _pick(self) -> Endpoint | None:
        best: Endpoint | None = None
        for ep in self.endpoints.values():
            if ep.routable and (best is None or ep.inflight < best.inflight):
                best = ep
        return best

    async def acquire(self, deadline: float) -> Endpoint:
        """A slot on a replica, FIFO behind earlier waiters, before ``deadline`` (loop time)."""
        if not self.waiters:
            ep = self._pick()
            if ep is not None:
                ep.inflight += 1
                return ep
        if len(self.waiters) >= self.max_queue_len:
            raise QueueFull(
                f"stage {self.name} queue is full ({self.max_queue_len} waiting)",
                retry_after_s=self.retry_after_s,
            )
        if not self.has_prospect():
            if self._on_demand is None:
                raise NoReplicas(f"stage {self.name} has no replicas")
            self._on_demand(self.name)  # scale from zero: the request waits for a fork
            if not self.has_prospect():
                raise NoReplicas(
                    f"stage {self.name} has no replicas and none could be started"
                    + (f": {self.last_start_error}" if self.last_start_error else "")
                )
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Endpoint] = loop.create_future()
        self.waiters.append(fut)
        timer = loop.call_at(deadline, self._expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # got a slot just as the caller gave up
            else:
                self._forget(fut)
            raise
        finally:
            timer.cancel()

    def _forget(self, fut: asyncio.Future[Endpoint]) -> None:
        with contextlib.suppress(ValueError):
            self.waiters.remove(fut)  # O(queue) but only on timeouts and cancellations

    def _expire(self, fut: asyncio.Future[Endpoint]) -> None:
        if not fut.done():
            self._forget(fut)
            fut.set_exception(
                StageTimeout(f"stage {self.name}: no replica slot before the deadline")
            )

    def release(self, ep: Endpoint) -> None:
        ep.inflight -= 1
        if ep.inflight == 0 and (ep.draining or ep.failed):
            ep.idle.set()
        self._hand_off()

    def _hand_off(self) -> None:
        while self.waiters:
            ep = self._pick()
            if ep is None:
                return
            fut = self.waiters.popleft()
            if fut.done():
                continue
            ep.inflight += 1
            fut.set_result(ep)

"""Per-stage dispatch: a bounded FIFO queue in front of a stage's replicas.

Each stage has one ``StagePool``. A request for the stage takes a *slot* on the
least-loaded ready replica (in-flight / capacity, capacity = the stage's
``max_concurrency``) or waits in FIFO order; a full queue refuses at once (429). A slot
is released as soon as that replica answers, so an early stage's replica is never held
while later stages run (the prototype's nested synchronous chaining did hold them).

Replicas come and go through ``add``/``remove``/``drain``, called by the runtime when the
backend reports a replica ready, gone or stopping. A replica that fails a request at the
connection level is taken out of rotation at once (``mark_failed``) and the backend is
told, so the crash is confirmed and the replica replaced. Until the backend reports it
gone (after it has started the replacement), a failed replica still counts as a
prospect, so the requests queued behind it wait for the replacement instead of failing.

Outlier ejection (``dataplane/outlier.py``): each endpoint carries a ``Health``; call
outcomes and health probes update it (``observe``), an ejected endpoint leaves rotation
until a probe answers, is not counted ready, and the calls in flight on it are cancelled
so their callers retry them on another replica (stages are idempotent).

Everything here runs on the gateway's event loop; nothing blocks.

A replica is called through ``EndpointClient`` (HTTP) unless the pool's
``client_factory`` says otherwise: a backend whose replicas are not HTTP workers (the Ray
backend's actors) sets it to build a client with the same ``post``/``close``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from quartfaas.dataplane.httpclient import EndpointClient
from quartfaas.dataplane.outlier import Health, OutlierPolicy, observe
from quartfaas.errors import NoReplicas, QueueFull, StageTimeout

log = logging.getLogger("quartfaas.dispatch")


@dataclass(eq=False)
class Endpoint:
    """One ready replica as the dispatcher sees it."""

    replica_id: str
    url: str
    capacity: int
    inflight: int = 0
    draining: bool = False
    failed: bool = False
    health: Health = field(default_factory=Health)
    idle: asyncio.Event = field(default_factory=asyncio.Event)
    # (replica_id, url) -> a client with EndpointClient's post/close; None: HTTP
    client_factory: Callable[[str, str], Any] | None = None
    client: EndpointClient = field(init=False)
    # Calls in flight here, and those cancelled because this replica was ejected.
    calls: set[asyncio.Task[Any]] = field(default_factory=set)
    ejected_calls: set[asyncio.Task[Any]] = field(default_factory=set)

    def __post_init__(self) -> None:
        make = self.client_factory
        self.client = EndpointClient(self.url) if make is None else make(self.replica_id, self.url)

    @property
    def usable(self) -> bool:
        return not self.draining and not self.failed and not self.health.ejected

    @property
    def routable(self) -> bool:
        return self.usable and self.inflight < self.capacity


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
        outlier: OutlierPolicy | None = None,
        start_wait_s: float = 0.0,
        on_all_ejected: Callable[[str], None] | None = None,
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
        self.outlier = outlier or OutlierPolicy()
        self._on_all_ejected = on_all_ejected
        self._timers: dict[asyncio.Future[Endpoint], asyncio.TimerHandle] = {}
        # How long a request waits for a stage's *first* replica (start-up, scale from
        # zero): the replica start timeout, not the stage's per-call timeout.
        self.start_wait_s = start_wait_s

    # -- observation --------------------------------------------------------------

    @property
    def queue_len(self) -> int:
        return len(self.waiters)

    @property
    def inflight(self) -> int:
        return sum(e.inflight for e in self.endpoints.values())

    @property
    def ready_replicas(self) -> int:
        """Replicas in rotation (an ejected one is not ready until it answers again)."""
        return sum(1 for e in self.endpoints.values() if e.usable)

    @property
    def ejected_replicas(self) -> int:
        return sum(1 for e in self.endpoints.values() if e.health.ejected and not e.failed)

    def has_prospect(self) -> bool:
        """Could a slot still come: a usable replica now, one starting, one ejected (it
        may answer again), or a failed one the backend has not yet reported gone (it
        starts the replacement before it does)."""
        if self.ready_replicas > 0 or self.starting > 0:
            return True
        return any(not e.draining for e in self.endpoints.values())

    def waiting_for_start(self) -> bool:
        """No replica in rotation: a request waits for one to start (or an ejected one to
        answer again), as long as a start may take."""
        return not any(e.usable for e in self.endpoints.values())

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
        self._outage()
        self._revive()
        return ep

    def mark_failed(self, ep: Endpoint, why: str) -> None:
        """Stop routing to a replica that failed at the connection level.

        Waiters keep waiting: the backend confirms the crash, starts a replacement and
        only then reports this one gone (``remove``)."""
        if not ep.failed:
            ep.failed = True
            if self._on_failed is not None:
                self._on_failed(ep.replica_id, why)
        self._outage()

    def _outage(self) -> None:
        """The stage just lost its last replica in rotation: the requests queued behind it
        now wait for a replacement, so each gets at least ``start_wait_s`` from now (the
        time lost to the crash is not theirs to pay)."""
        if not self._timers or not self.waiting_for_start():
            return
        loop = asyncio.get_running_loop()
        later = loop.time() + self.start_wait_s
        for fut, timer in list(self._timers.items()):
            if timer.when() < later and not fut.done():
                timer.cancel()
                self._timers[fut] = loop.call_at(later, self._expire, fut)

    # -- outlier ejection -----------------------------------------------------------

    def record(self, ep: Endpoint, ok: bool, now: float, why: str = "") -> None:
        """One call or probe outcome of ``ep``: eject it, or return it to rotation."""
        was = ep.health.ejected
        ep.health = observe(ep.health, ok, now, self.outlier, why)
        if ep.health.ejected and not was:
            log.warning("stage %s: replica %s ejected (%s)", self.name, ep.replica_id,
                        ep.health.reason)  # fmt: skip
            for task in list(ep.calls):  # retried elsewhere by call_stage
                ep.ejected_calls.add(task)
                task.cancel()
            if self.ready_replicas == 0 and self.starting == 0 and self._on_all_ejected:
                self._on_all_ejected(self.name)  # a stand-in; requests wait for it
            self._outage()
        elif was and not ep.health.ejected:
            log.info("stage %s: replica %s answers again; back in rotation", self.name,
                     ep.replica_id)  # fmt: skip
            self._hand_off()

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
            self._revive()

    def _revive(self) -> None:
        """The last replica left with requests still queued: start one for them (scale
        from zero) rather than failing them; fail them only if none can start."""
        if self.waiters and not self.has_prospect() and self._on_demand is not None:
            self._on_demand(self.name)
        self.fail_waiters_if_hopeless()

    def fail_waiters_if_hopeless(self) -> None:
        """With no replica, none starting and none that may come back, waiting is
        pointless: answer 503 now."""
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
        """A slot on a replica, FIFO behind earlier waiters, before ``deadline`` (loop time).

        While the stage has no replica in rotation (start-up, scale from zero, the only
        one crashed), the wait lasts at least ``start_wait_s``: a replica start is what it
        waits for, and the caller's deadline is for answering, not for starting."""
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
        if self.waiting_for_start():
            deadline = max(deadline, loop.time() + self.start_wait_s)
        fut: asyncio.Future[Endpoint] = loop.create_future()
        self.waiters.append(fut)
        self._timers[fut] = loop.call_at(deadline, self._expire, fut)
        try:
            return await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled() and fut.exception() is None:
                self.release(fut.result())  # got a slot just as the caller gave up
            else:
                self._forget(fut)
            raise
        finally:
            timer = self._timers.pop(fut, None)
            if timer is not None:
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
        if ep.inflight == 0 and (ep.draining or ep.failed or ep.health.ejected):
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

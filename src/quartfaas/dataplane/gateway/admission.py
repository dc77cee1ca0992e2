"""Admission: whether a request may enter, by bytes and by deadline (issue #13, item 5).

Two budgets and one bound, each answered with a quick ``429`` and ``Retry-After`` rather
than memory growth or a ``504`` after the stage timeout:

- **bytes in flight, gateway-wide** (``gateway.max_inflight_bytes``): the declared body
  sizes of the requests being served, taken before a body is read;
- **bytes in flight per stage** (``gateway.stage_inflight_bytes``): the frames queued for
  or running on the stage;
- **queue length by deadline**: a request that joins a queue of ``q`` waits about
  ``q / rate`` seconds before its own turn, where ``rate`` = slots / (mean seconds a
  request holds a slot, the median of its recent calls; slots of replicas being started
  count); past ``0.8 x rate x stage timeout - slots`` it would time out anyway, so the
  queue is capped there (never above ``gateway.max_queue_len``). Before any measurement,
  or while no replica is ready or starting, the cap is ``max_queue_len``.

``queue_cap`` and ``admit_queue`` are pure (numbers in, a decision out); ``Admission``
holds the byte counters and the recent holds, and reads the stage pools. A single body larger than
a whole budget is still admitted when nothing else is in flight, so a request within
``max_body_bytes`` can always be served on an idle gateway.

Neighbours: ``pipeline.py`` asks before reading a body and before each stage;
``dispatch.StagePool`` keeps the queue itself.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass

from quartfaas.dataplane.dispatch import StagePool
from quartfaas.errors import QueueFull
from quartfaas.spec import PipelineSpec

# The share of a stage's timeout a queued request may be expected to use; the rest absorbs
# a hold time longer than measured (a busier machine, a burst's own parsing work): at 0.9,
# 7 of 80 burst requests still timed out on this 2-vCPU machine at load average 16.
DEADLINE_SHARE = 0.8
HOLD_SAMPLES = 256  # recent holds per stage the estimate is the median of
MIN_HOLDS = 5  # fewer: not measured yet (the cap is max_queue_len)


@dataclass(frozen=True, slots=True)
class StageLoad:
    """What admission knows of a stage at one moment."""

    queue_len: int
    slots: int  # usable replicas x max_concurrency
    hold_s: float | None  # mean seconds a request holds a slot (service + hop), if measured


@dataclass(frozen=True, slots=True)
class Refuse:
    reason: str
    retry_after_s: float


def queue_cap(load: StageLoad, timeout_s: float, max_queue_len: int) -> int:
    """The longest queue whose last request can still be served within ``timeout_s``."""
    if load.hold_s is None or load.hold_s <= 0 or load.slots <= 0:
        return max_queue_len
    # The q-th waiter is served after the slots' current requests and q/slots rounds:
    # it finishes near (q + slots) * hold / slots, within DEADLINE_SHARE of the timeout.
    rate = load.slots / load.hold_s
    return max(0, min(max_queue_len, math.floor(rate * timeout_s * DEADLINE_SHARE) - load.slots))


def admit_queue(
    stage: str, load: StageLoad, timeout_s: float, max_queue_len: int, retry_after_s: float
) -> Refuse | None:
    """``None`` to admit, or why not and when to retry (the time to drain the queue)."""
    cap = queue_cap(load, timeout_s, max_queue_len)
    if load.queue_len < cap:
        return None
    drain_s = retry_after_s
    if load.hold_s and load.slots > 0:
        drain_s = max(retry_after_s, load.queue_len * load.hold_s / load.slots)
    return Refuse(
        f"stage {stage} queue is full: {load.queue_len} waiting, and at "
        f"{load.slots} slots x {_ms(load.hold_s)} per request more would not be served "
        f"within its timeout of {timeout_s:g} s",
        drain_s,
    )


def _ms(hold_s: float | None) -> str:
    return "unmeasured" if hold_s is None else f"{hold_s * 1000.0:.1f} ms"


class ByteBudget:
    """Bytes held by requests in flight, against a limit."""

    def __init__(self, name: str, limit: int) -> None:
        self.name = name
        self.limit = limit
        self.used = 0

    def refuse(self, nbytes: int) -> str | None:
        if self.used == 0 or self.used + nbytes <= self.limit:
            return None
        return f"{self.name}: {self.used} bytes in flight + {nbytes} would exceed {self.limit}"

    @contextmanager
    def hold(self, nbytes: int, retry_after_s: float) -> Iterator[None]:
        why = self.refuse(nbytes)
        if why is not None:
            raise QueueFull(why, retry_after_s=retry_after_s)
        self.used += nbytes
        try:
            yield
        finally:
            self.used -= nbytes


class Admission:
    """The gateway's budgets; ``request`` and ``stage`` raise ``QueueFull`` (429)."""

    def __init__(self, spec: PipelineSpec, pools: dict[str, StagePool]) -> None:
        g = spec.gateway
        self.retry_after_s = g.retry_after_s
        self.max_queue_len = g.max_queue_len
        self.total = ByteBudget("gateway (gateway.max_inflight_bytes)", g.max_inflight_bytes)
        self.stages = {
            name: ByteBudget(f"stage {name} (gateway.stage_inflight_bytes)", g.stage_inflight_bytes)
            for name in pools
        }
        self.pools = pools
        self._holds: dict[str, deque[float]] = {name: deque(maxlen=HOLD_SAMPLES) for name in pools}

    def request(self, nbytes: int | None) -> AbstractContextManager[None]:
        """Hold a request's declared body size for its whole life in the gateway."""
        return self.total.hold(nbytes or 0, self.retry_after_s)

    def observe(self, stage: str, hold_s: float) -> None:
        """A request held a slot of ``stage`` for ``hold_s`` (its call, without queueing)."""
        self._holds[stage].append(hold_s)

    def load(self, pool: StagePool) -> StageLoad:
        # The median of recent holds, not the mean: a stall of the machine inflates every
        # request in flight at once, and a mean would then refuse for a whole window what
        # the queue, once the stall is over, serves in time. Replicas being started count:
        # waiters are served by them as soon as they are ready.
        holds = self._holds[pool.name]
        hold = statistics.median(holds) if len(holds) >= MIN_HOLDS else None
        slots = (pool.ready_replicas + pool.starting) * pool.capacity
        return StageLoad(pool.queue_len, slots, hold)

    @contextmanager
    def stage(self, pool: StagePool, nbytes: int, timeout_s: float) -> Iterator[None]:
        """Admit one frame to a stage's queue, holding its bytes until the call ends."""
        refused = admit_queue(
            pool.name, self.load(pool), timeout_s, self.max_queue_len, self.retry_after_s
        )
        if refused is not None:
            raise QueueFull(refused.reason, retry_after_s=refused.retry_after_s)
        with self.stages[pool.name].hold(nbytes, self.retry_after_s):
            yield

"""Outlier ejection: which replicas leave rotation, and when they come back.

As Envoy's outlier detection does, a replica leaves its stage's rotation when it

- fails ``max_consecutive_failures`` calls in a row (5xx answers; not call timeouts,
  which an overloaded stage gives its healthy replicas too), or
- answers nothing to a health probe within ``probe_timeout_s`` (a hung or SIGSTOPped
  process still accepts connections in the kernel, so only a deadline tells),

and comes back on its first answered probe (after ``base_ejection_s`` if it was ejected
for failed calls, which a replica that answers probes may keep failing). The thresholds
are the spec's ``gateway.outlier`` (``OutlierPolicy.from_spec``).

A probe's silence counts against the replica only if the gateway was listening: its
own event loop, starved of CPU or backlogged, reads no answer either, and then every
probe of the round times out together. Under two busy loops plus a load test on two
cores, every replica of all three stages was ejected in one round that way (issue #13):
their calls were cancelled and retried, stand-ins forked, and the extra work deepened
the stall. ``LoopWatch`` measures how long the loop was deaf during a round
(``deaf_s``); ``silence_counts`` voids the round's silences when that was half the
deadline or more (a hung replica stays silent in the next round, which is heard). Decisions are
pure functions of a frozen ``Health`` and ``now`` (``observe``); the dispatcher
(``dataplane/dispatch.py``) keeps one ``Health`` per endpoint and acts on the result
(routes around it, retries the calls in flight on it elsewhere, counts it as not ready
for the controller). The probe loop that
feeds ``observe`` lives with the stage pools (``dataplane/gateway/replicas.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

from quartfaas.spec import OutlierSpec


@dataclass(frozen=True)
class OutlierPolicy:
    """Thresholds of the ejection rule (Envoy: ``consecutive_5xx``, ``interval``); the
    defaults are ``OutlierSpec``'s (``gateway.outlier`` in a spec)."""

    max_consecutive_failures: int = 3
    probe_interval_s: float = 0.5
    probe_timeout_s: float = 2.0
    base_ejection_s: float = 5.0

    @classmethod
    def from_spec(cls, spec: OutlierSpec) -> OutlierPolicy:
        return cls(
            max_consecutive_failures=spec.max_consecutive_failures,
            probe_interval_s=spec.probe_interval_s,
            probe_timeout_s=spec.probe_timeout_s,
            base_ejection_s=spec.base_ejection_s,
        )


@dataclass(frozen=True)
class Health:
    """What the dispatcher knows about one replica's answers."""

    consecutive_failures: int = 0
    ejected_at: float | None = None
    reason: str = ""

    @property
    def ejected(self) -> bool:
        return self.ejected_at is not None


def observe(h: Health, ok: bool, now: float, policy: OutlierPolicy, why: str = "") -> Health:
    """The replica's health after one call or probe outcome.

    A success clears the failure count and returns an ejected replica to rotation (one
    ejected for failed calls only after ``base_ejection_s``); a
    failure ejects once ``max_consecutive_failures`` have come in a row. A probe with no
    answer within its deadline ejects at once (pass ``why`` starting with ``"probe"``):
    one silent probe is already ``probe_timeout_s`` of silence.
    """
    if ok:
        by_calls = h.ejected_at is not None and not h.reason.startswith("probe")
        if by_calls and h.ejected_at is not None and now - h.ejected_at < policy.base_ejection_s:
            return h  # ejected for failed calls: out for base_ejection_s at least
        return Health()
    n = h.consecutive_failures + 1
    if h.ejected:
        return replace(h, consecutive_failures=n)
    if n >= policy.max_consecutive_failures or why.startswith("probe"):
        return Health(consecutive_failures=n, ejected_at=now, reason=why or f"{n} failures")
    return Health(consecutive_failures=n)


def silence_counts(deaf_s: float, policy: OutlierPolicy) -> bool:
    """Does a probe with no answer in ``probe_timeout_s`` say the replica is hung, when the
    gateway's own loop could not listen for ``deaf_s`` of that time? Only if it listened
    for more than half the deadline."""
    return deaf_s < policy.probe_timeout_s / 2.0


class LoopWatch:
    """How long this event loop could not run a callback on time, while it is watched.

    A ticker sleeps ``tick_s`` at a time; every tick that fires late adds its lateness to
    ``deaf_s`` (the loop was starved of CPU or busy with other work: an answer that came
    in meanwhile went unread). Use as ``async with LoopWatch(tick_s) as w: ...``.
    """

    def __init__(self, tick_s: float) -> None:
        if not tick_s > 0:
            raise ValueError(f"tick_s ({tick_s}) must be > 0")
        self.tick_s = tick_s
        self.deaf_s = 0.0
        self._due = 0.0  # when the pending tick should fire
        self._task: asyncio.Task[None] | None = None

    async def _tick(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._due = loop.time() + self.tick_s
            await asyncio.sleep(self.tick_s)
            self.deaf_s += max(0.0, loop.time() - self._due)

    async def __aenter__(self) -> LoopWatch:
        self._due = asyncio.get_running_loop().time() + self.tick_s
        self._task = asyncio.create_task(self._tick())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            # a stall that the pending tick has not reported yet still counts
            self.deaf_s += max(0.0, asyncio.get_running_loop().time() - self._due)
            self._task.cancel()
            # asyncio.wait, not ``await task`` under suppress(CancelledError): that would
            # also swallow a cancellation of the watching task itself arriving now, and the
            # probe loop would outlive the gateway's stop (seen under busy loops).
            await asyncio.wait([self._task])


async def probe(url: str, timeout_s: float) -> bool | None:
    """``GET /healthz`` on the replica behind ``url``: True on a 200 within ``timeout_s``,
    False on no answer in time (hung), None if the connection is refused or reset (the
    process is gone: a crash, which the backend replaces; not an outlier).

    A raw one-shot request on its own connection (not the pooled invoke client), so a
    probe never waits behind a pooled request and never disturbs one.
    """
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    writer: asyncio.StreamWriter | None = None
    try:
        async with asyncio.timeout(timeout_s):
            reader, writer = await asyncio.open_connection(host, port)
            head = f"GET /healthz HTTP/1.1\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            writer.write(head.encode())
            await writer.drain()
            line = await reader.readline()
            if not line:
                return None  # closed without a word: exiting
            return line.split(b" ", 2)[1:2] == [b"200"]
    except TimeoutError:
        return False
    except OSError:
        return None
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(writer.wait_closed(), 0.1)

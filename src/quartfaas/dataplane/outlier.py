"""Outlier ejection: which replicas leave rotation, and when they come back.

As Envoy's outlier detection does, a replica leaves its stage's rotation when it

- fails ``max_consecutive_failures`` calls in a row (5xx answers; not call timeouts,
  which an overloaded stage gives its healthy replicas too), or
- answers nothing to a health probe within ``probe_timeout_s`` (a hung or SIGSTOPped
  process still accepts connections in the kernel, so only a deadline tells),

and comes back on its first answered probe (after ``base_ejection_s`` if it was ejected
for failed calls, which a replica that answers probes may keep failing). The thresholds
are the spec's ``gateway.outlier`` (``OutlierPolicy.from_spec``). Decisions are
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

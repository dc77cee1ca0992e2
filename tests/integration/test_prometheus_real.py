"""A real Prometheus scraping a real gateway: PromQL snapshots agree with in-process ones.

Starts Debian's ``/usr/bin/prometheus`` on 127.0.0.1 (``metrics/prometheus.PrometheusServer``)
scraping an ``EmbeddedRuntime`` of synthetic sleep stages every 0.5 s, sends steady
open-loop traffic, compares the two collectors at one instant, then stops Prometheus and
expects a no-data snapshot with a note. Prometheus' target discovery publishes its first
targets about 5 s after start, so the test waits (with a deadline) for the first samples.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable

import httpx
import pytest

from helpers import synthetic_spec
from quartfaas.metrics.collector import InProcessCollector
from quartfaas.metrics.prometheus import PrometheusCollector
from quartfaas.metrics.prometheus_server import PrometheusServer
from quartfaas.runtime import EmbeddedRuntime

BINARY = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
)

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.timeout(90),
    pytest.mark.skipif(
        BINARY is None,
        reason="needs the prometheus binary: install Debian's 'prometheus' package",
    ),
]

WINDOW_S = 4.0
RATE = 30.0  # requests per second, open loop


async def until(cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:g} s")
        await asyncio.sleep(0.1)


def test_promql_snapshot_agrees_with_in_process_then_no_data(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(
        2,
        name="prq",
        work="sleep",
        mean_ms=20.0,
        controller={"enabled": False, "window_s": WINDOW_S, "interval_s": 1.0},
    )

    async def main() -> None:
        async with (
            EmbeddedRuntime(spec) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=10.0) as client,
        ):
            kill_leftovers.append(str(rt.files.dir))
            target = rt.url.removeprefix("http://")
            async with PrometheusServer([target], scrape_interval_s=0.5, binary=BINARY) as prom:
                pc = PrometheusCollector(prom.url, spec, timeout_s=2.0)
                ic = InProcessCollector(rt.gateway)

                async def scraped() -> bool:
                    return (await pc.collect(rt.clock.now())).has_data

                await until(scraped, 20.0, "first Prometheus samples of the gateway")

                pending: set[asyncio.Task[httpx.Response]] = set()
                statuses: list[int] = []

                async def one() -> httpx.Response:
                    r = await client.post("/function/prq", json={"inputs": [[1, 2, 3]]})
                    statuses.append(r.status_code)
                    return r

                # Steady traffic for a window and a half (plus scrape lag), on a fixed grid.
                t0 = time.monotonic()
                k = 0
                while time.monotonic() - t0 < 1.5 * WINDOW_S + 1.0:
                    k += 1
                    task = asyncio.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    await asyncio.sleep(max(0.0, t0 + k / RATE - time.monotonic()))
                now = rt.clock.now()
                local = ic.snapshot(now)
                remote = await pc.collect(now)
                await asyncio.gather(*pending)
                assert statuses and set(statuses) == {200}

                assert remote.has_data, remote.note
                assert remote.note == ""
                assert remote.data_age_s is not None and remote.data_age_s < 2.0
                for a, b in zip(local.stages, remote.stages, strict=True):
                    assert a.name == b.name
                    assert (b.ready_replicas, b.starting_replicas) == (
                        a.ready_replicas,
                        a.starting_replicas,
                    )
                    assert a.arrival_rate is not None and b.arrival_rate is not None
                    assert a.arrival_rate == pytest.approx(RATE, rel=0.3)
                    assert b.arrival_rate == pytest.approx(a.arrival_rate, rel=0.2)
                    assert a.service_mean_s is not None and b.service_mean_s is not None
                    assert a.service_mean_s == pytest.approx(0.020, rel=0.5)
                    assert b.service_mean_s == pytest.approx(a.service_mean_s, rel=0.15)
                    p50, p99 = b.latency.p50_s, b.latency.p99_s
                    assert p50 is not None and p99 is not None and p99 >= p50
                    assert b.errors == 0 and b.rejected == 0
                assert remote.e2e.count == pytest.approx(local.e2e.count, rel=0.25)

                await prom.stop()
                gone = await pc.collect(rt.clock.now())
                assert not gone.has_data and gone.data_age_s is None
                assert gone.note.startswith("unreachable:"), gone.note
                assert [s.ready_replicas for s in gone.stages] == [
                    s.ready_replicas for s in remote.stages
                ]
                await pc.aclose()

    asyncio.run(main())

"""Upstream's dashboard queries, run by a real Prometheus scraping a real gateway.

The queries are those of openfaas/faas ``contrib/grafana.json`` (panels "Function rate",
"Replica scaling", "Total requests - 200 OK", "Execution duration"), the query the
upstream gateway itself runs to fill ``invocationCount`` (``gateway/metrics/
add_metrics.go`` line 59: ``function_name=~".*.<namespace>"``), faas-netes' alert rule
(``chart/openfaas/templates/prometheus-cfg.yaml`` line 71) and the docs' single-function
query (openfaas/docs ``docs/architecture/metrics.md``). Each answer is checked against
what the test sent: a known number of pipeline calls, bad requests and calls of an
unknown function, with the client's own latency measurements.

Prometheus (Debian's ``/usr/bin/prometheus``) scrapes every 0.5 s; one call of each kind
is made and scraped before the measured traffic, so every series exists before it
rises (``rate`` on a series born inside its window undercounts).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from helpers import synthetic_spec
from quartfaas.metrics.prometheus_server import PrometheusServer
from quartfaas.runtime import EmbeddedRuntime

BINARY = shutil.which("prometheus") or (
    "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
)

pytestmark = [
    pytest.mark.prometheus,
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        BINARY is None,
        reason="needs the prometheus binary: install Debian's 'prometheus' package",
    ),
]

N_OK = 24  # measured pipeline calls
N_BAD = 3  # measured 400s
N_UNKNOWN = 2  # measured calls of a function that does not exist
RATE = 8.0  # requests per second while measuring
BODY = {"inputs": [[1, 2, 3]]}


async def until(cond: Callable[[], Awaitable[bool]], timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not await cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not within {timeout_s:g} s")
        await asyncio.sleep(0.1)


def test_dashboard_queries_match_the_requests_sent(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="gq", work="sleep", mean_ms=10.0)
    result: dict[str, Any] = {}

    async def main() -> None:
        async with (
            EmbeddedRuntime(spec) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=10.0) as gw,
        ):
            kill_leftovers.append(str(rt.files.dir))
            target = rt.url.removeprefix("http://")
            async with (
                PrometheusServer([target], scrape_interval_s=0.5, binary=BINARY) as prom,
                httpx.AsyncClient(base_url=prom.url, timeout=5.0) as pq,
            ):

                async def query(q: str, at: float) -> list[dict[str, Any]]:
                    r = await pq.get("/api/v1/query", params={"query": q, "time": f"{at:.3f}"})
                    assert r.status_code == 200, (q, r.text)
                    data = r.json()["data"]
                    if data["resultType"] == "scalar":
                        return [{"metric": {}, "value": data["result"]}]
                    return list(data["result"])

                async def scraped_after(t: float) -> bool:
                    r = await pq.get("/api/v1/targets")
                    active = r.json()["data"]["activeTargets"]
                    if not active or active[0]["health"] != "up":
                        return False
                    from datetime import datetime

                    last = datetime.fromisoformat(active[0]["lastScrape"].replace("Z", "+00:00"))
                    return last.timestamp() > t + 0.1

                # One call of each kind, scraped, before measuring.
                assert (await gw.post("/function/gq", json=BODY)).status_code == 200
                assert (await gw.post("/function/gq", json={"x": 1})).status_code == 400
                assert (await gw.post("/function/nope", json=BODY)).status_code == 404
                t_warm = time.time()
                await until(lambda: scraped_after(t_warm), 30.0, "a scrape after warm-up")

                latencies: list[float] = []
                t0 = time.monotonic()
                for k in range(N_OK):
                    s = time.monotonic()
                    r = await gw.post("/function/gq", json=BODY)
                    latencies.append(time.monotonic() - s)
                    assert r.status_code == 200
                    await asyncio.sleep(max(0.0, t0 + (k + 1) / RATE - time.monotonic()))
                for _ in range(N_BAD):
                    assert (await gw.post("/function/gq", json={"x": 1})).status_code == 400
                for _ in range(N_UNKNOWN):
                    assert (await gw.post("/function/nope", json=BODY)).status_code == 404
                t_end = time.time()
                await until(lambda: scraped_after(t_end), 10.0, "a scrape after the traffic")
                at = time.time()

                listed = (await gw.get("/system/functions")).json()
                ns = listed[0].get("namespace", "")
                result["ns"] = ns
                result["listed"] = {f["name"]: f for f in listed}
                result["latency_mean"] = sum(latencies) / len(latencies)
                result["span_s"] = N_OK / RATE
                queries = {
                    "total_ok": 'scalar( sum( gateway_function_invocation_total {  code="200"} ))',
                    "rate": "rate ( gateway_function_invocation_total [20s])",
                    "replicas": "gateway_service_count",
                    "duration": "(rate(gateway_functions_seconds_sum[20s]) / "
                    "rate(gateway_functions_seconds_count[20s]))",
                    "alert": 'sum(rate(gateway_function_invocation_total{code="200"}[10s])) '
                    "BY (function_name)",
                    "mixin": "sum(gateway_function_invocation_total"
                    f'{{function_name=~".*.{ns}"}}) by (function_name)',
                    "single": "rate ( gateway_function_invocation_total"
                    f"{{function_name='gq.{ns}'}} [20s])",
                }
                for key, q in queries.items():
                    result[key] = await query(q, at)
                meta = await pq.get(
                    "/api/v1/metadata", params={"metric": "gateway_function_invocation_started"}
                )
                result["meta"] = meta.json()["data"]

    asyncio.run(main())
    check(result)


def _by(rows: list[dict[str, Any]], *labels: str) -> dict[Any, float]:
    """Values keyed by one label's value, or by a tuple of several labels' values."""

    def key(metric: dict[str, str]) -> Any:
        values = tuple(metric.get(k, "") for k in labels)
        return values[0] if len(values) == 1 else values

    return {key(r["metric"]): float(r["value"][1]) for r in rows}


def check(res: dict[str, Any]) -> None:
    """Every query's answer against the requests sent (counts include the warm-up call).

    All checks run and every failure is reported, so one run says which panels are wrong.
    """
    ns = res["ns"]
    fn, unknown = f"gq.{ns}", f"nope.{ns}"
    ok, bad, missing = N_OK + 1, N_BAD + 1, N_UNKNOWN + 1
    failures: list[str] = []

    def expect(cond: bool, what: str) -> None:
        if not cond:
            failures.append(what)

    expect(bool(ns), "the gateway reports no namespace, so function_name is not name.namespace")

    # "Total requests - 200 OK": one per pipeline call, not one per stage hop too.
    total_ok = next(iter(_by(res["total_ok"]).values()), float("nan"))
    expect(total_ok == ok, f"Total requests - 200 OK: {total_ok}, sent {ok}")

    # "Function rate": the functions called from outside, with their codes, and no more.
    rate = _by(res["rate"], "function_name", "code")
    want = {(fn, "200"), (fn, "400"), (unknown, "404")}
    expect(set(rate) == want, f"Function rate series {sorted(rate)}, want {sorted(want)}")
    # Every measured 200 fell inside the 20 s window: rate * 20 s ~ N_OK (Prometheus
    # extrapolates to the window's edges, hence the tolerance).
    r200 = rate.get((fn, "200"), 0.0)
    expect(
        r200 * 20.0 == pytest.approx(N_OK, rel=0.4),
        f"rate*20s of {fn} = {r200 * 20:.1f}, sent {N_OK}",
    )

    # faas-netes' alert rule and the docs' single-function query see the same rate.
    alert = _by(res["alert"], "function_name")
    expect(set(alert) == {fn}, f"alert rule series {sorted(alert)}, want [{fn!r}]")
    a200 = alert.get(fn, 0.0)  # a 10 s window: rate * 10 s ~ N_OK as well
    expect(
        a200 * 10.0 == pytest.approx(N_OK, rel=0.4), f"alert rate*10s {a200 * 10:.1f}, sent {N_OK}"
    )
    single = _by(res["single"], "function_name", "code")
    expect(set(single) == {(fn, "200"), (fn, "400")}, f"single-function query {sorted(single)}")

    # "Execution duration": the pipeline's mean latency as its callers measured it.
    dur = _by(res["duration"], "function_name", "code")
    expect({f for f, _ in dur} <= {fn, unknown}, f"Execution duration series {sorted(dur)}")
    mean, d = res["latency_mean"], dur.get((fn, "200"), float("nan"))
    expect(0.5 * mean <= d <= 1.05 * mean, f"Execution duration of {fn} {d}, clients saw {mean}")

    # "Replica scaling": desired replicas of every function, namespaced.
    replicas = _by(res["replicas"], "function_name")
    want_r = {f"{n}.{ns}": float(f["replicas"]) for n, f in res["listed"].items()}
    expect(replicas == want_r, f"Replica scaling {replicas}, want {want_r}")

    # The gateway's own invocationCount query, and what /system/functions reports.
    mixin = _by(res["mixin"], "function_name")
    expect(mixin.get(fn) == ok + bad, f"invocationCount query {mixin}, want {fn}: {ok + bad}")
    count = res["listed"]["gq"]["invocationCount"]
    expect(count == ok + bad, f"/system/functions invocationCount {count}, want {ok + bad}")
    expect(
        mixin.get(unknown) == missing,
        f"unknown function count {mixin.get(unknown)}, want {missing}",
    )

    # The started counter is typed as a counter, as client_golang exports it.
    types = [m["type"] for m in res["meta"].get("gateway_function_invocation_started", [])]
    expect(types == ["counter"], f"gateway_function_invocation_started types {types}")

    assert not failures, "\n".join(failures)

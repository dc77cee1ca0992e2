"""The gateway_* series as upstream exports them, and asynchronous calls with callbacks."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from quartfaas.dataplane.async_calls import (
    AsyncCalls,
    CallResult,
    callback_headers,
    parse_callback_url,
)
from quartfaas.dataplane.openfaas import Namespaces
from quartfaas.errors import BadRequest, QueueFull
from quartfaas.metrics.openfaas_series import (
    OTHER_UNKNOWN,
    InvocationSeries,
    StageHopSeries,
    render,
)


def make(
    desired: dict[str, int] | None = None, **kw: object
) -> tuple[InvocationSeries, CollectorRegistry]:
    reg = CollectorRegistry()
    ns = Namespaces("openfaas-fn", aliases=())
    s = InvocationSeries(
        ns.label,
        lambda: ["p", "p-s0"],
        lambda: desired or {"p": 1, "p-s0": 2},
        registry=reg,
        **kw,  # type: ignore[arg-type]
    )
    return s, reg


def total(reg: CollectorRegistry, function_name: str, code: str) -> float | None:
    """``gateway_function_invocation_total`` of one function and status code."""
    labels = {"function_name": function_name, "code": code}
    return reg.get_sample_value("gateway_function_invocation_total", labels)


def test_counts_with_namespaced_labels_and_status_codes() -> None:
    s, reg = make()
    for _ in range(3):
        s.started("p")
        s.finished("p", 200, 0.004)
    s.started("p")
    s.finished("p", 429, 0.0001)
    s.started("nope")
    s.finished("nope", 404, 0.0002)
    v = reg.get_sample_value
    assert v("gateway_function_invocation_started", {"function_name": "p.openfaas-fn"}) == 4
    assert total(reg, "p.openfaas-fn", "200") == 3
    assert total(reg, "p.openfaas-fn", "429") == 1
    assert total(reg, "nope.openfaas-fn", "404") == 1
    lab = {"function_name": "p.openfaas-fn", "code": "200"}
    assert v("gateway_functions_seconds_count", lab) == 3
    assert v("gateway_functions_seconds_sum", lab) == pytest.approx(0.012)
    assert v("gateway_functions_seconds_bucket", {**lab, "le": "0.0025"}) == 0
    assert v("gateway_functions_seconds_bucket", {**lab, "le": "0.005"}) == 3
    assert v("gateway_functions_seconds_bucket", {**lab, "le": "+Inf"}) == 3
    assert v("gateway_service_count", {"function_name": "p-s0.openfaas-fn"}) == 2
    assert s.invocation_count("p") == 4 and s.invocation_count("p-s0") == 0


def test_exposition_types_match_upstream() -> None:
    s, reg = make()
    s.started("p")
    s.finished("p", 200, 0.01)
    text = render(reg).decode()
    assert "# TYPE gateway_function_invocation_started counter\n" in text
    assert 'gateway_function_invocation_started{function_name="p.openfaas-fn"} 1.0\n' in text
    assert "_started_total" not in text
    assert "# TYPE gateway_function_invocation_total counter\n" in text
    assert "# TYPE gateway_functions_seconds histogram\n" in text
    assert "# TYPE gateway_service_count gauge\n" in text
    assert "_created" not in text  # client_golang exports no creation-time series
    types = {f.name: f.type for f in text_string_to_metric_families(text)}
    assert types["gateway_function_invocation_started"] == "counter"
    assert types["gateway_functions_seconds"] == "histogram"


def test_unknown_names_are_bounded() -> None:
    s, reg = make(max_unknown=2)
    for name in ["a", "b", "c", "d", "a"]:
        s.started(name)
        s.finished(name, 404, 0.001)
    assert total(reg, "a.openfaas-fn", "404") == 2
    assert total(reg, "b.openfaas-fn", "404") == 1
    assert total(reg, f"{OTHER_UNKNOWN}.openfaas-fn", "404") == 2


def test_callback_url_and_headers() -> None:
    assert parse_callback_url(None) is None
    assert parse_callback_url("http://127.0.0.1:9/cb") == "http://127.0.0.1:9/cb"
    for bad in ["ftp://x/y", "not a url", "http://"]:
        with pytest.raises(BadRequest, match="X-Callback-Url"):
            parse_callback_url(bad)
    h = callback_headers("id-1", "p", CallResult(504, b"{}", "application/json", 1.5))
    assert h == {
        "Content-Type": "application/json",
        "X-Call-Id": "id-1",
        "X-Function-Status": "504",
        "X-Function-Name": "p",
        "X-Duration-Seconds": "1.500000",
    }


def test_async_calls_run_post_back_and_are_bounded() -> None:
    posted: list[tuple[str, bytes, dict[str, str]]] = []
    release = asyncio.Event()

    async def invoke(function: str, body: bytes, headers: Mapping[str, str]) -> CallResult:
        assert function == "p"
        await release.wait()
        return CallResult(200, body.upper(), "text/plain", 0.25)

    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        posted.append((url, body, dict(headers)))
        if url.endswith("/broken"):
            raise ConnectionRefusedError("refused")
        return 200

    async def main() -> None:
        calls = AsyncCalls(invoke, post, max_pending=3)
        calls.submit("c1", "p", b"one", {}, "http://cb/ok")
        calls.submit("c2", "p", b"two", {}, None)
        calls.submit("c3", "p", b"three", {}, "http://cb/broken")
        with pytest.raises(QueueFull, match="at most 3"):
            calls.submit("c4", "p", b"four", {}, None)
        assert calls.pending == 3
        release.set()
        assert await calls.drain(timeout_s=30.0) == 0
        assert calls.pending == 0
        assert calls.delivered == 1 and calls.failed_deliveries == 1
        url, body, headers = posted[0]
        assert (url, body, headers["X-Call-Id"], headers["X-Function-Status"]) == (
            "http://cb/ok",
            b"ONE",
            "c1",
            "200",
        )

    asyncio.run(main())


def test_drain_cancels_what_does_not_finish() -> None:
    async def never(function: str, body: bytes, headers: Mapping[str, str]) -> CallResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def post(url: str, body: bytes, headers: Mapping[str, str]) -> int:
        return 200

    async def main() -> None:
        calls = AsyncCalls(never, post, max_pending=2)
        calls.submit("c1", "p", b"", {}, None)
        assert await calls.drain(timeout_s=0.0) == 1
        assert calls.pending == 0

    asyncio.run(main())
    with pytest.raises(ValueError, match="max_pending"):
        AsyncCalls(never, post, max_pending=0)


def test_stage_hops_are_counted_apart_from_external_calls() -> None:
    reg = CollectorRegistry()
    hops = StageHopSeries(registry=reg)
    s, _ = make()
    for _ in range(3):  # one pipeline call = one external call, one visit per stage
        s.started("p")
        for stage in ("p-s0", "p-s1"):
            hops.arrived(stage)
            hops.finished(stage, 200, 0.002)
        s.finished("p", 200, 0.005)
    hops.arrived("p-s1")
    hops.finished("p-s1", 504, 2.0)
    v = reg.get_sample_value
    assert v("quartfaas_stage_arrivals_total", {"stage": "p-s1"}) == 4
    assert v("quartfaas_stage_requests_total", {"stage": "p-s0", "code": "200"}) == 3
    assert v("quartfaas_stage_requests_total", {"stage": "p-s1", "code": "504"}) == 1
    assert v("quartfaas_stage_latency_seconds_count", {"stage": "p-s1", "code": "200"}) == 3
    assert (
        v("quartfaas_stage_latency_seconds_bucket", {"stage": "p-s1", "code": "504", "le": "2.5"})
        == 1
    )
    assert s.invocation_count("p") == 3
    text = render(reg).decode()
    assert "# TYPE quartfaas_stage_arrivals_total counter" in text
    assert "gateway_" not in text

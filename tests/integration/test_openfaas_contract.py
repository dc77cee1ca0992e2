"""The OpenFaaS API contract, as OpenFaaS clients use it, against a live gateway.

Written from upstream's API spec and client code (read with the ``fetch`` tool; see
``COMPAT-16.md`` for each file and line), not copied from them:

- faas-cli / go-sdk invoke ``/function/{name}.{namespace}`` (default ``openfaas-fn``)
  with any method, and ``/async-function/...`` expecting 202 (go-sdk ``functions.go``,
  faas-cli ``proxy/invoke.go``);
- ``faas-cli version`` reads ``GET /system/info``; ``list``/``describe`` read
  ``/system/functions`` and ``/system/function/{name}`` with ``?namespace=``;
  ``GET /system/namespaces`` lists namespaces (go-sdk ``client.go``);
- the gateway adds ``X-Call-Id`` (UUID), ``X-Start-Time`` and ``X-Served-By``
  (faas ``gateway/handlers/callid_middleware.go``); callbacks carry ``X-Call-Id``,
  ``X-Function-Status``, ``X-Function-Name`` (nats-queue-worker ``postResult``);
- endpoints with no meaning for a pipeline answer 501 with a JSON reason;
- ``gateway_*`` series count calls from outside, labelled ``name.namespace``.

One gateway (synthetic zero-work stages) serves the read-only and invocation tests;
scaling tests get their own. Metric checks compare scrapes before and after.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from typing import Any

import httpx
import pytest
from aiohttp import web

from helpers import synthetic_spec
from openfaas_schemas import (
    ERROR,
    FUNCTION_LIST,
    FUNCTION_STATUS,
    GATEWAY_INFO,
    NAMESPACE_LIST,
    errors,
)
from quartfaas import __version__
from quartfaas.dataplane import framing
from quartfaas.runtime import EmbeddedRuntime
from quartfaas.spec import PipelineSpec

pytestmark = pytest.mark.timeout(120)

UUID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
CLIENT_NS = "openfaas-fn"  # go-sdk functions.go: DefaultNamespace
BODY = {"inputs": [[5, 6, 7]]}


class LiveGateway:
    """An EmbeddedRuntime on its own event loop in a thread, for synchronous tests."""

    def __init__(self, spec: PipelineSpec, **kw: Any) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.rt = EmbeddedRuntime(spec, **kw)
        self.call(self.rt.start())
        self.url = self.rt.url
        self.client = httpx.Client(base_url=self.url, timeout=30.0)

    def call(self, coro: Any, timeout_s: float = 60.0) -> Any:
        fut: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return fut.result(timeout_s)

    def close(self) -> None:
        self.client.close()
        try:
            self.call(self.rt.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()


@pytest.fixture(scope="module")
def gw() -> Iterator[LiveGateway]:
    g = LiveGateway(synthetic_spec(3, name="ofc"))
    try:
        yield g
    finally:
        g.close()


def namespace_of(g: LiveGateway) -> str:
    """The gateway's namespace, as it reports it (configurable, so never assumed)."""
    ns = g.client.get("/system/function/ofc").json().get("namespace", "")
    assert isinstance(ns, str)
    return ns


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)$")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def samples(g: LiveGateway) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Samples under the names the exposition gives them (prometheus_client's parser would
    rename a counter's samples to ``..._total``, hiding what a scraper sees)."""
    out: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for line in g.client.get("/metrics").text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or line.startswith("#"):
            continue
        labels = frozenset(_LABEL.findall(m.group(2) or ""))
        out[(m.group(1), labels)] = float(m.group(3))
    return out


def delta(before: dict[Any, float], after: dict[Any, float], name: str, **labels: str) -> float:
    key = (name, frozenset(labels.items()))
    return after.get(key, 0.0) - before.get(key, 0.0)


def until(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        time.sleep(0.05)


# -- read-only system API -------------------------------------------------------------


def test_function_list_validates_against_function_status(gw: LiveGateway) -> None:
    r = gw.client.get("/system/functions")
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")
    assert errors(r.json(), FUNCTION_LIST) == []
    assert {f["name"] for f in r.json()} == {"ofc", "ofc-s0", "ofc-s1", "ofc-s2"}


def test_function_status_validates_and_unknown_is_404(gw: LiveGateway) -> None:
    for name in ("ofc", "ofc-s1"):
        r = gw.client.get(f"/system/function/{name}")
        assert r.status_code == 200 and errors(r.json(), FUNCTION_STATUS) == []
    r = gw.client.get("/system/function/nope")
    assert r.status_code == 404 and errors(r.json(), ERROR) == []


def test_namespace_query_accepts_the_clients_default_and_refuses_others(gw: LiveGateway) -> None:
    for ns in (CLIENT_NS, namespace_of(gw)):
        r = gw.client.get("/system/functions", params={"namespace": ns})
        assert r.status_code == 200 and errors(r.json(), FUNCTION_LIST) == []
        r = gw.client.get("/system/function/ofc", params={"namespace": ns})
        assert r.status_code == 200
    # faas-netes answers 400 for a namespace it does not manage (reader.go).
    r = gw.client.get("/system/functions", params={"namespace": "dev"})
    assert r.status_code == 400 and "dev" in r.json()["error"]
    r = gw.client.get("/system/function/ofc", params={"namespace": "dev"})
    assert r.status_code == 400


def test_system_info_is_a_gateway_info(gw: LiveGateway) -> None:
    r = gw.client.get("/system/info")
    assert r.status_code == 200, r.text
    assert r.headers["Content-Type"].startswith("application/json")
    info = r.json()
    assert errors(info, GATEWAY_INFO) == []
    assert info["provider"]["provider"] == "quartfaas"
    assert info["provider"]["version"]["release"] == __version__
    assert info["version"]["release"] == __version__


def test_system_namespaces_lists_the_functions_namespace(gw: LiveGateway) -> None:
    r = gw.client.get("/system/namespaces")
    assert r.status_code == 200, r.text
    assert errors(r.json(), NAMESPACE_LIST) == []
    ns = namespace_of(gw)
    assert ns and ns in r.json()


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/system/functions"),
        ("PUT", "/system/functions"),
        ("DELETE", "/system/functions"),
        ("GET", "/system/secrets"),
        ("POST", "/system/secrets"),
        ("GET", "/system/logs?name=ofc"),
    ],
)
def test_endpoints_that_cannot_apply_answer_501_with_a_reason(
    gw: LiveGateway, method: str, path: str
) -> None:
    r = gw.client.request(method, path, json={"service": "x", "image": "y", "name": "s"})
    assert r.status_code == 501, (r.status_code, r.text)
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert errors(body, ERROR) == []
    assert "not applicable" in body["error"] or "not served" in body["error"]


# -- invocation -----------------------------------------------------------------------


def test_invoke_with_the_namespace_clients_append(gw: LiveGateway) -> None:
    for name in (f"ofc.{CLIENT_NS}", f"ofc.{namespace_of(gw)}", "ofc"):
        r = gw.client.post(f"/function/{name}", json=BODY)
        assert r.status_code == 200, (name, r.text)
        assert r.json()["pipeline"] == "ofc"
    r = gw.client.post("/function/ofc.dev", json=BODY)
    assert r.status_code == 404 and errors(r.json(), ERROR) == []


def test_invoke_any_method_trailing_slash_and_sub_path(gw: LiveGateway) -> None:
    for method, path in [
        ("PUT", "/function/ofc"),
        ("PATCH", f"/function/ofc.{CLIENT_NS}"),
        ("POST", "/function/ofc/"),
        ("POST", f"/function/ofc.{CLIENT_NS}/some/sub/path?x=1"),
    ]:
        r = gw.client.request(method, path, json=BODY)
        assert r.status_code == 200, (method, path, r.status_code, r.text)
    # faas-cli invoke -m GET sends no body: a clear 400, not a 405.
    r = gw.client.get(f"/function/ofc.{CLIENT_NS}")
    assert r.status_code == 400 and "inputs" in r.json()["error"]


def test_invoke_sets_upstreams_tracing_headers(gw: LiveGateway) -> None:
    t0 = time.time_ns()
    r = gw.client.post("/function/ofc", json=BODY)
    t1 = time.time_ns()
    assert r.status_code == 200
    assert UUID.match(r.headers["X-Call-Id"]), r.headers.get("X-Call-Id")
    assert t0 <= int(r.headers["X-Start-Time"]) <= t1
    assert r.headers["X-Served-By"].startswith("quartfaas/")
    assert float(r.headers["X-Duration-Seconds"]) >= 0
    # A caller's own call id is kept.
    r = gw.client.post("/function/ofc", json=BODY, headers={"X-Call-Id": "trace-42"})
    assert r.headers["X-Call-Id"] == "trace-42"


def test_stage_functions_set_the_same_headers(gw: LiveGateway) -> None:
    import numpy as np

    frame = framing.encode_numpy({"hidden": np.ones((1, 2, 4), np.float32)})
    r = gw.client.post("/function/ofc-s1", content=frame,
                       headers={"Content-Type": framing.CONTENT_TYPE})  # fmt: skip
    assert r.status_code == 200
    assert UUID.match(r.headers.get("X-Call-Id", "")), dict(r.headers)
    assert int(r.headers["X-Start-Time"]) > 0
    assert float(r.headers["X-Duration-Seconds"]) >= 0


def test_async_invoke_answers_202_and_delivers_to_the_callback(gw: LiveGateway) -> None:
    got: asyncio.Queue[tuple[dict[str, str], bytes]] | None = None

    async def start_receiver() -> tuple[web.AppRunner, str]:
        nonlocal got
        got = asyncio.Queue()

        async def receive(request: web.Request) -> web.Response:
            assert got is not None
            await got.put((dict(request.headers), await request.read()))
            return web.Response(status=200)

        app = web.Application()
        app.router.add_post("/cb", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return runner, f"http://127.0.0.1:{port}/cb"

    runner, cb = gw.call(start_receiver())
    try:
        r = gw.client.post(f"/async-function/ofc.{CLIENT_NS}", json=BODY,
                           headers={"X-Callback-Url": cb})  # fmt: skip
        assert r.status_code == 202, r.text
        call_id = r.headers["X-Call-Id"]
        assert UUID.match(call_id)
        assert got is not None
        headers, body = gw.call(asyncio.wait_for(got.get(), 30.0))
        assert headers["X-Call-Id"] == call_id
        assert headers["X-Function-Status"] == "200"
        assert headers["X-Function-Name"] in ("ofc", f"ofc.{CLIENT_NS}")
        assert float(headers["X-Duration-Seconds"]) >= 0
        import json

        assert json.loads(body)["pipeline"] == "ofc"
        # Without a callback: accepted all the same.
        assert gw.client.post("/async-function/ofc", json=BODY).status_code == 202
        # A callback URL that cannot be used is refused at once.
        r = gw.client.post("/async-function/ofc", json=BODY,
                           headers={"X-Callback-Url": "not a url"})  # fmt: skip
        assert r.status_code == 400 and "X-Callback-Url" in r.json()["error"]
        assert gw.client.post("/async-function/nope", json=BODY).status_code == 404
        # The accepted calls finish (and are counted) before the metric tests look.
        until(lambda: gw.rt.gateway.async_calls.pending == 0)
    finally:
        gw.call(runner.cleanup())


# -- metrics --------------------------------------------------------------------------


def test_gateway_series_count_external_calls_once_with_namespaced_names(gw: LiveGateway) -> None:
    ns = namespace_of(gw)
    fn = f"ofc.{ns}" if ns else "ofc"
    stage = f"ofc-s0.{ns}" if ns else "ofc-s0"
    before = samples(gw)
    for _ in range(4):
        assert gw.client.post("/function/ofc", json=BODY).status_code == 200
    assert gw.client.post("/function/ofc", json={"nope": 1}).status_code == 400
    assert gw.client.post("/function/nope", json=BODY).status_code == 404
    after = samples(gw)
    total = "gateway_function_invocation_total"
    assert delta(before, after, total, function_name=fn, code="200") == 4
    assert delta(before, after, total, function_name=fn, code="400") == 1
    # Stage hops inside the pipeline are not calls of the stage functions.
    assert delta(before, after, total, function_name=stage, code="200") == 0
    assert delta(before, after, "gateway_function_invocation_started", function_name=fn) == 5
    assert (
        delta(before, after, "gateway_functions_seconds_count", function_name=fn, code="200") == 4
    )
    unknown = f"nope.{ns}" if ns else "nope"
    assert delta(before, after, total, function_name=unknown, code="404") == 1
    listed = {f["name"]: f for f in gw.client.get("/system/functions").json()}
    assert listed["ofc-s0"]["invocationCount"] == after.get(
        (total, frozenset({("function_name", stage), ("code", "200")})), 0.0
    )


def test_series_types_are_upstreams(gw: LiveGateway) -> None:
    text = gw.client.get("/metrics").text
    assert "# TYPE gateway_function_invocation_started counter" in text
    assert "# TYPE gateway_function_invocation_total counter" in text
    assert "# TYPE gateway_functions_seconds histogram" in text
    assert "# TYPE gateway_service_count gauge" in text


def test_service_count_is_the_desired_replicas(gw: LiveGateway) -> None:
    ns = namespace_of(gw)
    listed = gw.client.get("/system/functions").json()
    now = samples(gw)
    for f in listed:
        label = f"{f['name']}.{ns}" if ns else f["name"]
        key = ("gateway_service_count", frozenset({("function_name", label)}))
        assert now.get(key) == f["replicas"], (label, now.get(key), f["replicas"])


# -- scaling --------------------------------------------------------------------------


@pytest.fixture
def scaled() -> Iterator[LiveGateway]:
    spec = synthetic_spec(2, name="ofs", stage_overrides={1: {"min_replicas": 0}})
    g = LiveGateway(spec)
    try:
        yield g
    finally:
        g.close()


def replicas(g: LiveGateway, stage: str) -> int:
    return len(g.rt.backend.list_replicas(stage))


def test_scale_to_zero_where_the_stage_allows_it(scaled: LiveGateway) -> None:
    c = scaled.client
    r = c.post("/system/scale-function/ofs-s1",
               json={"serviceName": "ofs-s1", "namespace": CLIENT_NS, "replicas": 2})  # fmt: skip
    assert r.status_code in (200, 202), r.text
    until(lambda: scaled.rt.gateway.pools["ofs-s1"].ready_replicas == 2)
    r = c.post("/system/scale-function/ofs-s1",
               json={"serviceName": "ofs-s1", "namespace": CLIENT_NS, "replicas": 0})  # fmt: skip
    assert r.status_code in (200, 202), r.text
    until(lambda: replicas(scaled, "ofs-s1") == 0)
    assert c.get("/system/function/ofs-s1").json()["replicas"] == 0
    r = c.post("/system/scale-function/ofs-s0", json={"serviceName": "ofs-s0", "replicas": 0})
    assert r.status_code == 400 and "com.openfaas.scale.min" in r.json()["error"]
    r = c.post("/system/scale-function/ofs-s0",
               json={"serviceName": "ofs-s0", "namespace": "dev", "replicas": 1})  # fmt: skip
    assert r.status_code == 400 and "dev" in r.json()["error"]
    r = c.post("/system/scale-function/nope", json={"serviceName": "nope", "replicas": 1})
    assert r.status_code == 404


def test_scaling_the_pipeline_scales_its_stages(scaled: LiveGateway) -> None:
    c = scaled.client
    r = c.post("/system/scale-function/ofs",
               json={"serviceName": "ofs", "namespace": CLIENT_NS, "replicas": 2})  # fmt: skip
    assert r.status_code in (200, 202), r.text
    until(lambda: all(scaled.rt.gateway.pools[s].ready_replicas == 2 for s in ("ofs-s0", "ofs-s1")))
    assert c.get("/system/function/ofs").json()["replicas"] == 2
    # Beyond a stage's maximum (4): refused, naming the stage and the bound.
    r = c.post("/system/scale-function/ofs", json={"serviceName": "ofs", "replicas": 9})
    assert r.status_code == 400 and "com.openfaas.scale.max" in r.json()["error"]


def test_new_system_endpoints_need_basic_auth_like_the_rest() -> None:
    spec = synthetic_spec(1, name="ofa", gateway={"auth": {"enabled": True}})
    g = LiveGateway(spec, environ={"QUARTFAAS_GATEWAY_PASSWORD": "pw-" + uuid.uuid4().hex})
    try:
        for path in ("/system/info", "/system/namespaces", "/system/functions"):
            r = g.client.get(path)
            assert r.status_code == 401, (path, r.status_code)
        # Invocation stays open, as upstream (only /system is behind auth).
        assert g.client.post(f"/function/ofa.{CLIENT_NS}", json=BODY).status_code == 200
    finally:
        g.close()


def test_a_configured_namespace_names_paths_lists_and_labels() -> None:
    g = LiveGateway(synthetic_spec(1, name="ofn", gateway={"namespace": "team"}))
    try:
        for name in ("ofn.team", f"ofn.{CLIENT_NS}", "ofn"):
            assert g.client.post(f"/function/{name}", json=BODY).status_code == 200, name
        assert g.client.get("/system/namespaces").json() == ["team"]
        assert g.client.get("/system/function/ofn").json()["namespace"] == "team"
        after = samples(g)
        key = ("gateway_function_invocation_total",
               frozenset({("function_name", "ofn.team"), ("code", "200")}))  # fmt: skip
        assert after[key] == 3
    finally:
        g.close()

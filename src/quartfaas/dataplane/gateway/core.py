"""``Gateway``: builds the gateway's parts (package docstring) and wires them to routes.

It owns the stage pools (``replicas``) and the metrics, and is what the runtime, the
in-process collector (``metrics.collector.GatewayView``) and the CLI hold on to. The
backend is attached after construction (``gateway.backend = ...``); the local backend's
replica events go to ``gateway.replicas``.

OpenFaaS wiring: the namespace (``gateway.namespace``), the ``gateway_*`` series of calls
from outside (``metrics.openfaas_series.InvocationSeries``, counted by
``routes.calls_middleware``), and ``/async-function``: accepted here (202), then run by
``dataplane.async_calls.AsyncCalls`` as a ``/function`` call to this same gateway, as
upstream's queue worker calls the gateway, so it is counted and traced like any call.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping

import aiohttp
from aiohttp import web

from quartfaas.clock import Clock, MonotonicClock
from quartfaas.control.backend import Backend
from quartfaas.dataplane.async_calls import CALLBACK_URL, AsyncCalls, CallResult, parse_callback_url
from quartfaas.dataplane.dispatch import StagePool
from quartfaas.dataplane.gateway.auth import BasicAuth
from quartfaas.dataplane.gateway.inputs import InputEncoder, read_body
from quartfaas.dataplane.gateway.pipeline import Pipeline
from quartfaas.dataplane.gateway.replicas import StageReplicas
from quartfaas.dataplane.gateway.routes import (
    Handlers,
    calls_middleware,
    function_names,
    make_app,
    unknown_function,
)
from quartfaas.dataplane.gateway.status import StatusApi
from quartfaas.dataplane.openfaas import CALL_ID, Namespaces
from quartfaas.metrics.gateway_metrics import GatewayMetrics, StageGauges
from quartfaas.metrics.openfaas_series import InvocationSeries, render
from quartfaas.spec import PipelineSpec

#: Longest wait for the callback receiver of an asynchronous call.
CALLBACK_TIMEOUT_S = 30.0


class Gateway:
    """Routes requests to stage replicas; owns the stage pools and the metrics."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.clock = clock or MonotonicClock()
        self.metrics = GatewayMetrics(
            spec.name,
            [s.name for s in spec.stages],
            window_s=spec.controller.window_s,
            now=self.clock.now(),
            read_gauges=self.gauges,
        )
        self.replicas = StageReplicas(spec, self.metrics)
        self.pools: dict[str, StagePool] = self.replicas.pools
        self.order: list[StagePool] = self.replicas.order
        self.auth = BasicAuth.from_spec(spec, environ)
        self.inputs = InputEncoder(spec)
        self.pipeline = Pipeline(spec, self.clock, self.replicas, self.metrics, self.inputs)
        self.namespaces = Namespaces(spec.gateway.namespace)
        self.status = StatusApi(spec, self.replicas, self.namespaces, self._invocation_count)
        self.calls = InvocationSeries(
            self.namespaces.label,
            self.function_names,
            self.status.desired_replicas,
            registry=self.metrics.registry,
        )
        self.async_calls = AsyncCalls(
            self._call_self, self._post_callback, max_pending=spec.gateway.max_queue_len
        )
        self._origin = ""
        self._session: aiohttp.ClientSession | None = None

    @property
    def backend(self) -> Backend | None:
        return self.replicas.backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        self.replicas.backend = backend

    @property
    def on_failed_replica(self) -> Callable[[str, str], None] | None:
        """Told when a replica fails a request (the runtime kills it if it lives on)."""
        return self.replicas.on_failed_replica

    @on_failed_replica.setter
    def on_failed_replica(self, callback: Callable[[str, str], None] | None) -> None:
        self.replicas.on_failed_replica = callback

    def gauges(self) -> dict[str, StageGauges]:
        return self.replicas.gauges()

    def function_names(self) -> list[str]:
        return function_names(self.spec)

    def app(self) -> web.Application:
        handlers = Handlers(
            function=self.pipeline.handle_function,
            async_function=self.handle_async,
            functions=self.status.handle_functions,
            function_status=self.status.handle_function_status,
            scale=self.status.handle_scale,
            info=self.status.handle_info,
            namespaces=self.status.handle_namespaces,
            metrics=self.handle_metrics,
        )
        calls = calls_middleware(self.namespaces, self.function_names, self.calls, self.clock)
        return make_app(
            handlers, max_body_bytes=self.spec.gateway.max_body_bytes, auth=self.auth, calls=calls
        )

    async def handle_metrics(self, _: web.Request) -> web.Response:
        self.metrics.set_now(self.clock.now())
        return web.Response(body=render(self.metrics.registry), content_type="text/plain")

    async def handle_async(self, request: web.Request) -> web.Response:
        """``POST /async-function/{name}``: 202 now; the call runs and is posted back."""
        name = request.match_info["name"]
        if name not in self.function_names():
            raise unknown_function(self.spec, name)
        callback = parse_callback_url(request.headers.get(CALLBACK_URL))
        body = await read_body(request, self.spec.gateway.max_body_bytes)
        if not self._origin:
            self._origin = _origin(request)
        headers = {CALL_ID: request.headers[CALL_ID]}
        if "Content-Type" in request.headers:
            headers["Content-Type"] = request.headers["Content-Type"]
        self.async_calls.submit(request.headers[CALL_ID], name, body, headers, callback)
        return web.Response(status=202)

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession()
        return self._session

    def _invocation_count(self, name: str) -> int:
        return self.calls.invocation_count(name)

    async def _call_self(
        self, function: str, body: bytes, headers: Mapping[str, str]
    ) -> CallResult:
        t0 = self.clock.now()
        url = f"{self._origin}/function/{function}"
        timeout = aiohttp.ClientTimeout(total=self.spec.slo.timeout_budget_s + 5.0)
        try:
            async with self._client().post(
                url, data=body, headers=dict(headers), timeout=timeout
            ) as r:
                data = await r.read()
                return CallResult(r.status, data, r.content_type, self.clock.now() - t0)
        except (aiohttp.ClientError, TimeoutError) as exc:
            error = json.dumps({"error": f"the call did not complete: {exc!r}"}).encode()
            return CallResult(502, error, "application/json", self.clock.now() - t0)

    async def _post_callback(self, url: str, body: bytes, headers: Mapping[str, str]) -> int:
        timeout = aiohttp.ClientTimeout(total=CALLBACK_TIMEOUT_S)
        async with self._client().post(url, data=body, headers=dict(headers), timeout=timeout) as r:
            return r.status

    async def close(self) -> None:
        await self.async_calls.drain(min(self.spec.gateway.drain_timeout_s, 5.0))
        if self._session is not None:
            await self._session.close()
        await self.replicas.close()


def _origin(request: web.Request) -> str:
    """This gateway's own base URL, from the socket the request arrived on."""
    sockname = request.transport.get_extra_info("sockname") if request.transport else None
    if not sockname:
        return f"{request.scheme}://{request.host}"
    host, port = sockname[0], sockname[1]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"

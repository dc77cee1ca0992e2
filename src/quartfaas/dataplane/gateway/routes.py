"""HTTP routes and error mapping: the gateway's one route table, and how errors answer.

Every route is one row of ``route_table``: method, path, handler, and whether it needs
basic auth (the ``/system/*`` API does, when ``gateway.auth`` is on). Function routes
take any method, ``name`` or ``name.namespace``, a trailing slash and a sub-path, as
upstream's (``dataplane/openfaas.py``); endpoints that cannot apply to a pipeline from a
spec answer 501 (``openfaas.NOT_APPLICABLE``). ``calls_middleware`` wraps every
function call: it resolves ``name.namespace`` to the function, sets upstream's
``X-Call-Id``/``X-Start-Time``/``X-Served-By``/``X-Duration-Seconds`` headers, and counts
the call (with its final status, errors and unknown names included) in the
``gateway_*`` series, once per call from outside the gateway. Errors raised on
the request path are ``GatewayError``s; the middleware answers each with its status
(``errors.http_status``) as JSON ``{"error": ..., "function": ..., "code": ...}``, plus
``Retry-After`` when the error carries one. A body over ``max_body_bytes`` is a 413.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web
from multidict import CIMultiDict

from quartfaas.clock import Clock
from quartfaas.dataplane.gateway.auth import BasicAuth
from quartfaas.dataplane.openfaas import (
    ASYNC_FUNCTION_ROUTE,
    FUNCTION_ROUTE,
    NOT_APPLICABLE,
    CallContext,
    Namespaces,
    NotApplicableRoute,
)
from quartfaas.errors import GatewayError, PayloadTooLarge, UnknownFunction, http_status
from quartfaas.metrics.openfaas_series import InvocationSeries
from quartfaas.spec import PipelineSpec

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Handlers:
    """The handler of each route (``core.Gateway`` collects them from its parts)."""

    function: Handler
    async_function: Handler
    functions: Handler
    function_status: Handler
    scale: Handler
    info: Handler
    namespaces: Handler
    metrics: Handler


def route_table(h: Handlers) -> list[tuple[str, str, Handler, bool]]:
    """(method, path, handler, needs auth) of every route the gateway serves."""
    return [
        ("*", FUNCTION_ROUTE, h.function, False),
        ("POST", ASYNC_FUNCTION_ROUTE, h.async_function, False),
        ("GET", "/system/functions", h.functions, True),
        ("GET", "/system/function/{name}", h.function_status, True),
        ("POST", "/system/scale-function/{name}", h.scale, True),
        ("GET", "/system/info", h.info, True),
        ("GET", "/system/namespaces", h.namespaces, True),
        *(
            (method, row.path, not_applicable(row), True)
            for row in NOT_APPLICABLE
            for method in row.methods
        ),
        ("GET", "/healthz", healthz, False),
        ("GET", "/metrics", h.metrics, False),
    ]


def make_app(
    handlers: Handlers,
    *,
    max_body_bytes: int,
    auth: BasicAuth | None,
    calls: Middleware | None = None,
) -> web.Application:
    middlewares = [errors_middleware(max_body_bytes)]
    if calls is not None:  # outermost: it sees the final status of every answer
        middlewares.insert(0, calls)
    app = web.Application(client_max_size=max_body_bytes, middlewares=middlewares)
    for method, path, handler, needs_auth in route_table(handlers):
        guarded = _guarded(handler, auth) if needs_auth and auth is not None else handler
        app.router.add_route(method, path, guarded)
    return app


def not_applicable(row: NotApplicableRoute) -> Handler:
    async def answer(_: web.Request) -> web.StreamResponse:
        raise row.error()

    return answer


def calls_middleware(
    namespaces: Namespaces,
    known: Callable[[], Collection[str]],
    series: InvocationSeries,
    clock: Clock,
) -> Middleware:
    """Function calls: resolve ``name.namespace``, set upstream's headers, count the call.

    Handlers see the bare function name in ``match_info["name"]`` and the call id and
    start time in the request's ``X-Call-Id`` and ``X-Start-Time``. An
    ``/async-function`` call is only accepted here (202); it is counted when it runs, as
    a call of ``/function`` (upstream's queue worker does the same).
    """

    @web.middleware
    async def calls(request: web.Request, handler: Handler) -> web.StreamResponse:
        path = request.path
        sync = path.startswith("/function/")
        if not (sync or path.startswith("/async-function/")) or "name" not in request.match_info:
            return await handler(request)
        name, _ = namespaces.split(request.match_info["name"], known())
        request.match_info["name"] = name
        ctx = CallContext.begin(request.headers, time.time_ns())
        headers = CIMultiDict(request.headers)
        headers.update(ctx.upstream_headers())  # X-Call-Id, X-Start-Time, as upstream
        request = request.clone(headers=headers)
        t0 = clock.now()
        if sync:
            series.started(name)
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            if sync:
                series.finished(name, exc.status, clock.now() - t0)
            exc.headers.update(ctx.response_headers(clock.now() - t0 if sync else None))
            raise
        except BaseException:
            if sync:
                series.finished(name, 500, clock.now() - t0)
            raise
        duration = clock.now() - t0
        if sync:
            series.finished(name, response.status, duration)
        response.headers.update(ctx.response_headers(duration if sync else None))
        return response

    return calls


def _guarded(handler: Handler, auth: BasicAuth) -> Handler:
    async def guarded(request: web.Request) -> web.StreamResponse:
        auth.check(request)
        return await handler(request)

    return guarded


async def healthz(_: web.Request) -> web.Response:
    return web.Response(text="OK")


def function_names(spec: PipelineSpec) -> list[str]:
    """The pipeline, then its stages: every name ``/function/{name}`` answers to."""
    return [spec.name, *(s.name for s in spec.stages)]


def unknown_function(spec: PipelineSpec, name: str) -> UnknownFunction:
    return UnknownFunction(f"function {name!r} not found; functions: {function_names(spec)}")


def errors_middleware(max_body_bytes: int) -> Middleware:
    @web.middleware
    async def errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = max_body_bytes
            too_large = PayloadTooLarge(f"request body exceeds {limit} bytes (max_body_bytes)")
            return error_response(too_large, request.match_info.get("name"))
        except GatewayError as exc:
            return error_response(exc, request.match_info.get("name"))

    return errors


def error_response(exc: GatewayError, function: str | None) -> web.Response:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return web.json_response(
        {"error": exc.message, "function": function, "code": http_status(exc)},
        status=http_status(exc),
        headers=headers,
    )

"""HTTP routes and error mapping: the gateway's one route table, and how errors answer.

Every route is one row of ``route_table``: method, path, handler, and whether it needs
basic auth (the ``/system/*`` API does, when ``gateway.auth`` is on). Errors raised on
the request path are ``GatewayError``s; the middleware answers each with its status
(``errors.http_status``) as JSON ``{"error": ..., "function": ..., "code": ...}``, plus
``Retry-After`` when the error carries one. A body over ``max_body_bytes`` is a 413.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp import web

from quartfaas.dataplane.gateway.auth import BasicAuth
from quartfaas.errors import GatewayError, PayloadTooLarge, UnknownFunction, http_status
from quartfaas.spec import PipelineSpec

if TYPE_CHECKING:
    from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True)
class Handlers:
    """The handler of each route (``core.Gateway`` collects them from its parts)."""

    function: Handler
    functions: Handler
    function_status: Handler
    scale: Handler
    metrics: Handler


def route_table(h: Handlers) -> list[tuple[str, str, Handler, bool]]:
    """(method, path, handler, needs auth) of every route the gateway serves."""
    return [
        ("POST", "/function/{name}", h.function, False),
        ("GET", "/system/functions", h.functions, True),
        ("GET", "/system/function/{name}", h.function_status, True),
        ("POST", "/system/scale-function/{name}", h.scale, True),
        ("GET", "/healthz", healthz, False),
        ("GET", "/metrics", h.metrics, False),
    ]


def make_app(handlers: Handlers, *, max_body_bytes: int, auth: BasicAuth | None) -> web.Application:
    app = web.Application(
        client_max_size=max_body_bytes, middlewares=[errors_middleware(max_body_bytes)]
    )
    add = {"GET": app.router.add_get, "POST": app.router.add_post}
    for method, path, handler, needs_auth in route_table(handlers):
        add[method](path, _guarded(handler, auth) if needs_auth and auth is not None else handler)
    return app


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

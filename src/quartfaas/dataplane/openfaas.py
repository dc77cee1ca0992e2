"""The OpenFaaS protocol surface that is not routing: names, namespaces, info, headers, 501s.

Pure values and functions the gateway's route modules call, so that what an OpenFaaS
client sees is decided in one place and tested without a server. Neighbours:
``dataplane/openfaas_scale.py`` (scale requests), ``dataplane/async_calls.py``
(``/async-function``), ``metrics/openfaas_series.py`` (the ``gateway_*`` series).
``COMPAT-16.md`` at the repository root lists each upstream behaviour with the file it
was read from; the main ones:

- Function paths: upstream routes ``/function/{name}``, ``/function/{name}/`` and
  ``/function/{name}/{params:.*}`` for any method, names matching ``[-a-zA-Z_0-9.]+``
  (openfaas/faas ``gateway/main.go`` lines 27 and 210-212), and splits ``name.namespace``
  at the last dot (``gateway/pkg/middleware/service_name.go`` line 6). faas-cli and the
  go-sdk always append a namespace, ``openfaas-fn`` by default (go-sdk ``functions.go``
  lines 8 and 16-22).
- Namespaces: a provider with one namespace lists just it and answers 400 for another
  (faas-netes ``pkg/handlers/namespaces.go`` line 31, ``reader.go`` lines 37-40).
- ``/system/info``: ``GatewayInfo`` of ``api-docs/spec.openapi.yml`` lines 528-582.
- Headers: the gateway adds ``X-Call-Id`` (a UUID, only when the caller sent none),
  ``X-Start-Time`` (Unix nanoseconds) and ``X-Served-By`` to the request and the response
  (``gateway/handlers/callid_middleware.go`` lines 23-33).
- Endpoints that cannot apply answer 501, as faas-provider does for a missing feature
  (faas-provider ``serve.go`` lines 92-95: "Feature not implemented in this version").
"""

from __future__ import annotations

import platform
import uuid
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from typing import Any

from quartfaas import __version__
from quartfaas.errors import BadRequest, NotApplicable

#: The namespace faas-cli and the go-sdk put in every function URL unless told otherwise.
DEFAULT_CLIENT_NAMESPACE = "openfaas-fn"
PROVIDER_NAME = "quartfaas"
SERVED_BY = f"quartfaas/{__version__}"
#: Upstream's NameExpression: the characters a function name (with its namespace) may hold.
NAME_PATTERN = "[-a-zA-Z_0-9.]+"
#: aiohttp route patterns: the name, then nothing, a slash, or a sub-path (``path``).
FUNCTION_ROUTE = "/function/{name:" + NAME_PATTERN + "}{path:(?:/.*)?}"
ASYNC_FUNCTION_ROUTE = "/async-function/{name:" + NAME_PATTERN + "}{path:(?:/.*)?}"
#: Methods faas-provider's proxy forwards (others get 405 there too).
INVOKE_METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "HEAD")

CALL_ID = "X-Call-Id"
START_TIME = "X-Start-Time"
SERVED_BY_HEADER = "X-Served-By"
DURATION = "X-Duration-Seconds"


@dataclass(frozen=True, slots=True)
class Namespaces:
    """The gateway's one namespace, plus the names clients use for it by default.

    ``namespace`` may be empty (then metric labels are bare function names, as upstream
    with no namespace set). ``aliases`` are accepted wherever a namespace is given
    (paths, ``?namespace=``, scale bodies) and mean the same namespace.
    """

    namespace: str = "quartfaas"
    aliases: tuple[str, ...] = (DEFAULT_CLIENT_NAMESPACE,)

    def accepts(self, ns: str) -> bool:
        return ns == self.namespace or ns in self.aliases

    def listed(self) -> list[str]:
        """The answer to ``GET /system/namespaces``."""
        return [self.namespace] if self.namespace else []

    def check(self, ns: str | None, where: str = "namespace") -> None:
        """A namespace a client named (query or body): empty means the default."""
        if ns and not self.accepts(ns):
            allowed = list(dict.fromkeys(n for n in (self.namespace, *self.aliases) if n))
            raise BadRequest(f"{where} {ns!r} does not exist here; namespaces: {allowed}")

    def split(self, segment: str, known: Collection[str]) -> tuple[str, str | None]:
        """``name`` or ``name.namespace`` from a path -> (function name, namespace given).

        A segment that is itself a known function is taken whole (a name may hold a dot).
        Otherwise it is split at the last dot, as upstream does; an unknown namespace is
        kept in the name, so the caller answers 404 for it.
        """
        if segment in known:
            return segment, None
        name, dot, ns = segment.rpartition(".")
        if dot and name and self.accepts(ns):
            return name, ns
        return segment, None

    def label(self, name: str) -> str:
        """The ``function_name`` metric label: ``name.namespace`` when a namespace is set."""
        if self.namespace and "." not in name:
            return f"{name}.{self.namespace}"
        return name


@dataclass(frozen=True, slots=True)
class CallContext:
    """One call's tracing headers, as upstream's call-id middleware sets them."""

    call_id: str
    start_ns: int
    generated: bool

    @classmethod
    def begin(
        cls,
        headers: Mapping[str, str],
        now_ns: int,
        new_id: Callable[[], str] = lambda: str(uuid.uuid4()),
    ) -> CallContext:
        given = headers.get(CALL_ID, "")
        if given:
            return cls(given, now_ns, generated=False)
        return cls(new_id(), now_ns, generated=True)

    def upstream_headers(self) -> dict[str, str]:
        """What each stage hop carries, so stage logs can be joined to the call."""
        return {CALL_ID: self.call_id, START_TIME: str(self.start_ns)}

    def response_headers(self, duration_s: float | None = None) -> dict[str, str]:
        """What the caller gets back. ``X-Call-Id`` is echoed even when the caller sent it
        (upstream adds it only when it made one; echoing loses nothing)."""
        out = {
            CALL_ID: self.call_id,
            START_TIME: str(self.start_ns),
            SERVED_BY_HEADER: SERVED_BY,
        }
        if duration_s is not None:
            out[DURATION] = f"{duration_s:.6f}"
        return out


def system_info(
    *, orchestration: str, release: str = __version__, sha: str = "", arch: str | None = None
) -> dict[str, Any]:
    """``GET /system/info``: upstream's ``GatewayInfo`` with quartfaas as the provider.

    faas-cli's ``version`` reads ``provider.provider``, ``provider.orchestration``,
    ``provider.version.release/sha`` and ``version.release/sha``.
    """
    version = {"release": release, "sha": sha, "commit_message": ""}
    return {
        "provider": {
            "provider": PROVIDER_NAME,
            "orchestration": orchestration,
            "version": {"release": release, "sha": sha},
        },
        "version": version,
        "arch": arch if arch is not None else platform.machine(),
    }


@dataclass(frozen=True, slots=True)
class NotApplicableRoute:
    """An upstream endpoint that has no meaning for a pipeline from a spec."""

    methods: tuple[str, ...]
    path: str
    reason: str

    def error(self) -> NotApplicable:
        return NotApplicable(self.reason)


_SPEC = "functions come from the pipeline spec given to `quartfaas serve`"
NOT_APPLICABLE: tuple[NotApplicableRoute, ...] = (
    NotApplicableRoute(
        ("POST", "PUT", "DELETE"),
        "/system/functions",
        f"deploy, update and remove are not applicable: {_SPEC}; edit the spec and restart "
        "the gateway (GET /system/functions lists what runs)",
    ),
    NotApplicableRoute(
        ("GET", "POST", "PUT", "DELETE"),
        "/system/secrets",
        f"secrets are not applicable: {_SPEC}, which holds no secrets; the gateway's own "
        "password is read from the environment variable named by gateway.auth.password_env",
    ),
    NotApplicableRoute(
        ("GET",),
        "/system/logs",
        "function logs are not served over the API: replica logs go to the log of "
        "`quartfaas serve` (run it with -v for more)",
    ),
    NotApplicableRoute(
        ("POST", "PUT", "DELETE"),
        "/system/namespace/{namespace:.*}",
        "namespaces cannot be created or changed: the gateway has one namespace "
        "(GET /system/namespaces)",
    ),
)

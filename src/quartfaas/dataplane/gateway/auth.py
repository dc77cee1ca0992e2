"""Basic auth for the gateway's ``/system/*`` routes (``gateway.auth`` in the spec).

The password comes from the environment variable the spec names, never from the spec
itself; credentials are compared in constant time.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Mapping

from aiohttp import web

from quartfaas.errors import SpecError
from quartfaas.spec import PipelineSpec


class BasicAuth:
    """One username and password; ``check`` refuses a request without them."""

    def __init__(self, username: str, password: str) -> None:
        self._username = username
        self._password = password

    @classmethod
    def from_spec(cls, spec: PipelineSpec, environ: Mapping[str, str] | None) -> BasicAuth | None:
        """The spec's auth, or ``None`` when it is off; ``SpecError`` if its password is unset."""
        auth = spec.gateway.auth
        if not auth.enabled:
            return None
        password = (environ or {}).get(auth.password_env)
        if not password:
            raise SpecError(
                f"gateway.auth.enabled is true but the environment variable "
                f"{auth.password_env} (gateway.auth.password_env) is unset or empty"
            )
        return cls(auth.username, password)

    def check(self, request: web.Request) -> None:
        """Raise 401 (with ``WWW-Authenticate``) unless the request carries the credentials."""
        header = request.headers.get("Authorization", "")
        ok = False
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                ok = hmac.compare_digest(user, self._username) and hmac.compare_digest(
                    password, self._password
                )
            except (binascii.Error, UnicodeDecodeError):
                ok = False
        if not ok:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "basic auth required for /system/*"}),
                content_type="application/json",
                headers={"WWW-Authenticate": 'Basic realm="quartfaas"'},
            )

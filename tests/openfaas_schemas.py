"""JSON schemas of the OpenFaaS payloads clients parse, written for these tests.

Written by hand from openfaas/faas ``api-docs/spec.openapi.yml`` (``FunctionStatus``
lines 777-868, ``GatewayInfo``/``VersionInfo``/``ProviderInfo`` lines 528-582,
``ListNamespaceResponse`` lines 991-996), tightened where the Go clients are stricter
than the spec: faas-provider's ``types.FunctionStatus`` decodes ``replicas`` and
``availableReplicas`` into ``uint64`` (so a float or a negative number fails to decode),
``createdAt`` into ``time.Time`` (RFC 3339), and labels/annotations into
``map[string]string``. OpenAPI's ``nullable`` is written as a JSON-schema type union.
"""

from __future__ import annotations

from typing import Any

import jsonschema

_STR_MAP = {"type": ["object", "null"], "additionalProperties": {"type": "string"}}
_UINT = {"type": "integer", "minimum": 0}
_RFC3339 = r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$"

FUNCTION_STATUS: dict[str, Any] = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "image": {"type": "string"},
        "namespace": {"type": "string"},
        "envProcess": {"type": "string"},
        "envVars": {"type": "object", "additionalProperties": {"type": "string"}},
        "constraints": {"type": "array", "items": {"type": "string"}},
        "secrets": {"type": "array", "items": {"type": "string"}},
        "labels": _STR_MAP,
        "annotations": _STR_MAP,
        "readOnlyRootFilesystem": {"type": "boolean"},
        "invocationCount": {"type": "number", "minimum": 0},
        "replicas": _UINT,
        "availableReplicas": _UINT,
        "createdAt": {"type": "string", "pattern": _RFC3339},
        "usage": {"type": ["object", "null"]},
    },
}

FUNCTION_LIST: dict[str, Any] = {"type": "array", "items": FUNCTION_STATUS}

_VERSION_INFO = {
    "type": "object",
    "required": ["sha", "release"],
    "properties": {
        "commit_message": {"type": "string"},
        "sha": {"type": "string"},
        "release": {"type": "string", "minLength": 1},
    },
}

GATEWAY_INFO: dict[str, Any] = {
    "type": "object",
    "required": ["provider", "version", "arch"],
    "properties": {
        "provider": {
            "type": "object",
            "required": ["provider", "orchestration", "version"],
            "properties": {
                "provider": {"type": "string", "minLength": 1},
                "orchestration": {"type": "string", "minLength": 1},
                "version": _VERSION_INFO,
            },
        },
        "version": _VERSION_INFO,
        "arch": {"type": "string"},
    },
}

NAMESPACE_LIST: dict[str, Any] = {"type": "array", "items": {"type": "string", "minLength": 1}}

ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {"error": {"type": "string", "minLength": 1}},
}


def errors(instance: Any, schema: dict[str, Any]) -> list[str]:
    """Every violation, as ``path: message`` (empty when the instance is valid)."""
    validator = jsonschema.Draft202012Validator(schema)
    return [
        f"{'/'.join(str(p) for p in e.absolute_path) or '(root)'}: {e.message}"
        for e in validator.iter_errors(instance)
    ]

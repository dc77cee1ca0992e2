"""One exception tree for quartfaas.

Expected outcomes (a cache miss, no metrics yet, a full queue seen by the controller) are
values, not exceptions. Exceptions are for what a caller must handle or a user must fix::

    QuartfaasError
    ├── SpecError               a spec, setting or CLI argument is invalid (field, value, rule)
    ├── WeightsError            a weights file is missing, truncated or fails its checksum
    ├── FramingError            an activation body does not follow the tensor framing
    ├── ModelInputError         inputs have the wrong shape, dtype or range for a stage
    ├── TraceError              a trace file cannot be parsed (line number, what was expected)
    ├── BackendError            a replica could not be started, stopped or resized
    │   ├── ReplicaStartTimeout     a replica did not become ready before its deadline
    │   └── InsufficientMemory      starting a replica would exceed the host's memory
    ├── GatewayError            an HTTP-mappable failure on the request path
    │   ├── UnknownFunction         404
    │   ├── BadRequest              400
    │   ├── PayloadTooLarge         413
    │   ├── QueueFull               429 (with Retry-After)
    │   ├── UpstreamFailed          502
    │   ├── NoReplicas              503
    │   ├── NotApplicable           501 (an OpenFaaS endpoint that cannot apply here)
    │   └── StageTimeout            504
    └── SimulationError         a simulation cannot be run as asked (with the numbers)

``http_status`` maps gateway errors to HTTP codes in one table.
"""

from __future__ import annotations


class QuartfaasError(Exception):
    """Base of every error quartfaas raises on purpose."""


class SpecError(QuartfaasError):
    """A spec, setting or argument is invalid. The message names field, value and rule."""


class WeightsError(QuartfaasError):
    """A stage weights file is missing, corrupt or does not match its manifest."""


class FramingError(QuartfaasError):
    """An activation body is not a valid tensor frame."""


class ModelInputError(QuartfaasError):
    """Inputs do not fit the stage (shape, dtype, vocabulary or sequence length)."""


class TraceError(QuartfaasError):
    """A trace file cannot be parsed."""


class BackendError(QuartfaasError):
    """A replica operation failed."""


class ReplicaStartTimeout(BackendError):
    """A replica did not become ready before its start deadline."""


class InsufficientMemory(BackendError):
    """Starting a replica (or caching a stage) would exceed the host's memory budget."""


class SimulationError(QuartfaasError):
    """A simulation cannot be run as asked."""


class GatewayError(QuartfaasError):
    """A failure on the request path that maps to an HTTP status."""

    status = 500

    def __init__(self, message: str, *, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.retry_after_s = retry_after_s


class BadRequest(GatewayError):
    status = 400


class UnknownFunction(GatewayError):
    status = 404


class PayloadTooLarge(GatewayError):
    status = 413


class QueueFull(GatewayError):
    status = 429


class UpstreamFailed(GatewayError):
    status = 502


class NoReplicas(GatewayError):
    status = 503


class StageTimeout(GatewayError):
    status = 504


class NotApplicable(GatewayError):
    """An OpenFaaS endpoint that cannot apply to a pipeline (deploy, secrets, logs)."""

    status = 501


_STATUS: dict[type[Exception], int] = {
    BadRequest: 400,
    ModelInputError: 400,
    FramingError: 400,
    SpecError: 400,
    UnknownFunction: 404,
    PayloadTooLarge: 413,
    QueueFull: 429,
    UpstreamFailed: 502,
    NoReplicas: 503,
    InsufficientMemory: 503,
    StageTimeout: 504,
    NotApplicable: 501,
}


def http_status(exc: BaseException) -> int:
    """The HTTP status for an exception raised on the request path (500 if unknown)."""
    for cls in type(exc).__mro__:
        if cls in _STATUS:
            return _STATUS[cls]
    return 500

"""What every section of a spec shares: frozen models that reject unknown fields, and the
rule for function names (OpenFaaS/Kubernetes: 1-63 lower-case letters, digits and '-')."""

from __future__ import annotations

import re

from pydantic import BaseModel, ConfigDict

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{what} must be 1-63 characters of lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (an OpenFaaS/Kubernetes name)"
        )
    return value


class FieldError(ValueError):
    """A check across fields that belongs to one of them: the error is reported at
    ``field`` (e.g. ``stages``), not at the top level (``loading.format_validation_error``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field

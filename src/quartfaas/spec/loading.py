"""Reading a spec: YAML or a mapping in, a ``PipelineSpec`` out, or a ``SpecError`` with one
line per problem (``field = value: rule``)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from quartfaas.errors import SpecError
from quartfaas.spec.base import FieldError
from quartfaas.spec.pipeline import PipelineSpec


class _SpecLoader(yaml.SafeLoader):
    """YAML 1.1's float rule needs a dot, so ``1e-12`` would load as a string and fail the
    strict number fields; floats here follow YAML 1.2 (and JSON), as users write them."""


_SpecLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"bert", "minilm", "synthetic"} and out.endswith("model"):
            continue  # discriminated-union tag: not a field the user wrote
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError, source: str = "spec") -> str:
    """One line per problem: ``field = value: rule``."""
    lines = [f"invalid {source}:"]
    errors = exc.errors()
    locs = [tuple(e.get("loc", ())) for e in errors]
    for err, raw in zip(errors, locs, strict=True):
        # A container that is too short only because its items failed adds nothing.
        if err.get("type") == "too_short" and any(o[: len(raw)] == raw and o != raw for o in locs):
            continue
        loc = _loc(raw)
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, FieldError):  # a cross-field check that belongs to one field
            loc = _loc((*raw, cause.field))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "missing":
            lines.append(f"  {loc}: required field is missing")
            continue
        value = err.get("input")
        shown = repr(value)
        if isinstance(value, Mapping) or len(shown) > 80:
            lines.append(f"  {loc}: {msg}")
        else:
            lines.append(f"  {loc} = {shown}: {msg}")
    return "\n".join(lines)


def parse_spec(data: Any, *, source: str = "spec", base_dir: Path | None = None) -> PipelineSpec:
    """Validate a mapping (e.g. parsed YAML) into a ``PipelineSpec``."""
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise SpecError(f"invalid {source}: the top level must be a mapping, got {kind}")
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    return spec.with_base_dir(base_dir) if base_dir is not None else spec


def load_spec(path: str | Path) -> PipelineSpec:
    """Read a YAML spec file; relative paths inside it are resolved against its folder."""
    p = Path(path)
    if p.is_dir():
        raise SpecError(f"spec {str(p)!r} is a directory, not a YAML file")
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=_SpecLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"spec file {str(p)!r} is not valid YAML{where}: {exc}") from None
    return parse_spec(data, source=f"spec {str(p)!r}", base_dir=p.resolve().parent)

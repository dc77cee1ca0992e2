"""JSON replies that are always valid JSON: no bare ``NaN``/``Infinity`` (RFC 8259).

Python's ``json.dumps`` writes float NaN and infinities as the bare tokens ``NaN`` and
``Infinity`` by default, which no strict parser accepts; a stage whose weights are
corrupt produces exactly such values (issue #13, item 9). ``dumps`` refuses them with
the JSON path of the first offender, so the caller can answer a clear error instead of
an unparseable body; ``nonfinite_paths`` finds them without encoding.

Neighbours: the gateway's reply path (``dataplane/gateway.py``: the pipeline summary)
is where this is wired in; aiohttp's ``json_response(dumps=...)`` takes ``dumps``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping
from typing import Any

MAX_PATHS = 8


class NonFiniteValue(ValueError):
    """A float that JSON cannot carry (NaN or an infinity)."""


def _walk(obj: Any, path: str) -> Iterator[str]:
    if isinstance(obj, float):
        if not math.isfinite(obj):
            yield path or "$"
    elif isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, f"{path}.{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")


def nonfinite_paths(obj: Any, limit: int = MAX_PATHS) -> list[str]:
    """JSON paths (``$.output.norm[0]``) of up to ``limit`` NaN/infinite floats in ``obj``."""
    out = []
    for p in _walk(obj, "$"):
        out.append(p)
        if len(out) >= limit:
            break
    return out


def dumps(obj: Any) -> str:
    """``json.dumps`` that raises ``NonFiniteValue`` (naming where) instead of writing NaN."""
    try:
        return json.dumps(obj, allow_nan=False)
    except ValueError:
        paths = nonfinite_paths(obj)
        if not paths:
            raise
        raise NonFiniteValue(
            f"non-finite value (NaN or Infinity) at {', '.join(paths)}: JSON cannot carry it"
        ) from None

"""Replies never carry bare NaN/Infinity: ``strict_json.dumps`` refuses them, saying where."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from quartfaas.dataplane.strict_json import NonFiniteValue, dumps, nonfinite_paths


def test_finite_values_encode_as_plain_json() -> None:
    obj = {"output": {"norm": [1.5, 0.0], "shape": [2, 3]}, "ok": True, "name": "x"}
    assert json.loads(dumps(obj)) == obj


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, float(np.float32("nan"))])
def test_non_finite_values_are_refused_with_their_path(bad: float) -> None:
    obj = {"output": {"emb": {"norm": [1.0, bad], "head": [bad]}}}
    with pytest.raises(
        NonFiniteValue, match=r"\$\.output\.emb\.norm\[1\], \$\.output\.emb\.head\[0\]"
    ):
        dumps(obj)
    assert json.dumps(obj).count("NaN") + json.dumps(obj).count("Infinity") == 2  # the default


def test_paths_are_bounded_and_top_level_values_named() -> None:
    assert nonfinite_paths([math.nan] * 100) == [f"$[{i}]" for i in range(8)]
    assert nonfinite_paths(math.inf) == ["$"]
    assert nonfinite_paths({"a": (1.0, 2)}) == []


def test_other_encoding_errors_pass_through() -> None:
    with pytest.raises(TypeError):
        dumps({"x": object()})

"""benchmarks/live_compare.py summarises runs per policy as median [min-max]."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "live_compare.py"


def _module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("live_compare", SCRIPT)
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_table_reports_median_and_range_per_policy() -> None:
    mod = _module()
    rows = [
        {"policy": "quart", "slo": s, "p99_ms": p, "replica_s": r, "errors": 0}
        for s, p, r in [(90.0, 500.0, 100.0), (100.0, 300.0, 300.0), (95.0, 400.0, 200.0)]
    ] + [{"policy": "static", "slo": 50.0, "p99_ms": 900.0, "replica_s": 80.0, "errors": 2}]
    out = mod.table(rows, ["quart", "static", "hpa"]).splitlines()
    assert len(out) == 3  # header + the two policies that have runs
    assert "95.0 [90.0-100.0]" in out[1] and "400 [300-500]" in out[1]
    assert "200 [100-300]" in out[1]
    assert out[2].startswith("static") and out[2].rstrip().endswith("2")

"""benchmarks/live_compare.py summarises runs per policy as median [min-max]."""

from __future__ import annotations

from helpers import benchmark_script


def test_table_reports_median_and_range_per_policy() -> None:
    mod = benchmark_script("live_compare")
    rows = [
        {"policy": "quart", "slo": s, "p99_ms": p, "replica_s": r, "errors": 0}
        for s, p, r in [(90.0, 500.0, 100.0), (100.0, 300.0, 300.0), (95.0, 400.0, 200.0)]
    ] + [{"policy": "static", "slo": 50.0, "p99_ms": 900.0, "replica_s": 80.0, "errors": 2}]
    out = mod.table(rows, ["quart", "static", "hpa"]).splitlines()
    assert len(out) == 3  # header + the two policies that have runs
    assert "95.0 [90.0-100.0]" in out[1] and "400 [300-500]" in out[1]
    assert "200 [100-300]" in out[1]
    assert out[2].startswith("static") and out[2].rstrip().endswith("2")

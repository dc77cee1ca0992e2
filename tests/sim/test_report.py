"""Report tables and plots."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.control.policy import Decision, hold_all
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.report import plot_stage_replicas, summary_row, summary_table, write_report
from quartfaas.sim.run import SimResult, simulate


class Hold:
    name = "hold"

    def initial_state(self, snapshot: PipelineSnapshot) -> None:
        return None

    def decide(self, snapshot: PipelineSnapshot, state: None) -> tuple[Decision, None]:
        return hold_all(snapshot, self.name, "static"), state


def _run(rate: float) -> SimResult:
    arr = np.cumsum(np.random.default_rng(1).exponential(1 / rate, 3000))
    return simulate(
        pipeline_preset("whisper-time-3"),
        cluster_preset("small"),
        Hold(),
        arr,
        controller=ControllerConfig(interval_s=1.0, window_s=10.0),
    )


def test_summary_row_and_table() -> None:
    light, heavy = _run(20.0), _run(90.0)
    row = summary_row(light)
    lat = light.latency_s
    assert row["completed"] == 3000 and row["rejected"] == 0
    assert row["p99_ms"] == np.percentile(lat, 99) * 1000
    assert row["slo_attain_pct"] == 100.0 * np.mean(lat <= light.pipeline.slo_p99_s)
    table = summary_table([light, heavy])
    lines = table.splitlines()
    assert lines[0].startswith("pipeline whisper-time-3 (3 stages) on cluster small")
    assert len(lines) == 4 and all(len(line) == len(lines[1]) for line in lines[1:])
    heavy_row = summary_row(heavy)
    assert float(heavy_row["slo_attain_pct"]) < float(row["slo_attain_pct"])  # type: ignore[arg-type]


def test_plots_are_written(tmp_path: Path) -> None:
    runs = [_run(20.0), _run(60.0)]
    paths = write_report(runs, tmp_path)
    for key in ("summary", "latency_cdf", "replicas"):
        assert paths[key].exists() and paths[key].stat().st_size > 0
    assert paths["latency_cdf"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    png = plot_stage_replicas(runs[0], tmp_path / "stages.png")
    assert png.stat().st_size > 1000

"""Experiments on the simulator: comparisons, ablations, sweeps, the CLI, refusals."""

from __future__ import annotations

import json
from dataclasses import replace
from io import StringIO
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console
from typer.testing import CliRunner

from quartfaas.cli.simulate import TABLE_WIDTH, render, sim_app
from quartfaas.control.backend import StartTier
from quartfaas.errors import SimulationError, SpecError
from quartfaas.sim import experiments as ex
from quartfaas.sim import sweep as sweep_mod
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import pipeline_preset

PIPE = pipeline_preset("whisper-time-3")
SMALL = cluster_preset("small")
# Bursty enough that the autoscalers act within a minute on the small cluster.
LOAD = "mmpp:rate=40,cv=4"


def _compare(seed: int, policies: str = "quart,knative,static") -> ex.Comparison:
    w = ex.make_workload(LOAD, seed=seed)
    return ex.compare_policies(PIPE, SMALL, w, policies, seed=seed, duration_s=60)


def _rich(table: ex.Comparison) -> str:
    buf = StringIO()
    render(table, Console(file=buf, width=TABLE_WIDTH, color_system=None))
    return buf.getvalue()


def test_same_seed_gives_byte_identical_tables() -> None:
    a, b, c = _compare(3), _compare(3), _compare(4)
    assert a.text() == b.text() and a.csv() == b.csv() and a.json() == b.json()
    assert _rich(a) == _rich(b)
    assert a.text() != c.text()  # the seed does reach the arrivals and the work
    assert [r.name for r in a.rows] == ["quart", "knative", "static"]
    quart = a.rows[0].values
    assert quart["requests"] == a.rows[0].result.n_requests > 1000
    assert quart["scale_ups"] > 0  # the workload makes Quart act
    assert 0 <= quart["slo_attain_pct"] <= 100
    assert json.loads(a.json())["rows"][0]["policy"] == "quart"


def test_cli_table_is_byte_identical_and_out_dir_is_written(tmp_path: Path) -> None:
    args = ["simulate", "--cluster", "small", "--pipeline", "whisper-time-3",
            "--workload", "mmpp:cv=4", "--rate", "40", "--duration", "40",
            "--policies", "quart,hpa", "--seed", "5", "--seeds", "1", "--no-progress"]  # fmt: skip
    runner = CliRunner()
    first = runner.invoke(sim_app, [*args, "--out", str(tmp_path)])
    second = runner.invoke(sim_app, args)
    assert first.exit_code == 0, first.output
    assert second.exit_code == 0, second.output
    assert first.stdout == second.stdout
    assert "p99_ms" in first.stdout and "quart" in first.stdout and "hpa" in first.stdout
    for name in ("table.txt", "table.csv", "table.json", "latency_cdf.png", "replicas.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert (tmp_path / "table.csv").read_text().splitlines()[0].startswith("policy,requests")


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--cluster", "huge"], "valid clusters: paper, small"),
        (["--pipeline", "gpt-5"], "valid pipelines: bert-21b-latency-41"),
        (["--trace", "azure-foo"], "azure-code, azure-conv"),
        (["--policies", "quart,kubeflow"], "valid policies: quart, openfaas-ce"),
        (["--placement", "quart,nearest"], "valid placers: bin-pack"),
    ],
)
def test_unknown_names_list_the_valid_ones(args: list[str], expected: str) -> None:
    res = CliRunner().invoke(sim_app, ["simulate", "--no-progress", *args])
    assert res.exit_code == 2
    assert expected in res.output


def test_unknown_trace_in_trace_kind_is_named() -> None:
    w = ex.make_workload("trace:azure-foo", rate=10)
    with pytest.raises(SpecError, match="azure-code, azure-conv"):
        ex.compare_policies(PIPE, SMALL, w, ["quart"], duration_s=10)


def test_cluster_that_cannot_hold_the_pipeline_is_refused_with_numbers() -> None:
    pipe = pipeline_preset("bert-21b-me-21", min_replicas=8)
    w = ex.make_workload("poisson:rate=5")
    with pytest.raises(SimulationError) as err:
        ex.compare_policies(pipe, SMALL, w, ["quart"], duration_s=10)
    msg = str(err.value)
    assert "168 in total" in msg and "GiB of GPU memory >" in msg and "256.0 GiB" in msg
    # Model-level anti-affinity with a first-fit placer: one GPU per replica.
    one = pipeline_preset("bert-21b-me-21")
    with pytest.raises(SimulationError, match=r"21 replicas need one GPU each .* > 8 GPUs"):
        ex.compare_policies(one, SMALL, w, ["quart"], duration_s=10, placement="first-fit")


def test_too_long_a_run_is_refused_before_starting_with_numbers() -> None:
    w = ex.make_workload("azure-code", rate=200)
    with pytest.raises(SimulationError) as err:
        ex.compare_policies(
            pipeline_preset("bert-21b-me-21"), cluster_preset("paper"), w, ex.POLICIES,
            duration_s=3600, max_visits=1_000_000,
        )  # fmt: skip
    msg = str(err.value)
    assert "x 21 stages x 8 runs" in msg and "over the limit of 1,000,000" in msg
    assert "shorten --duration" in msg
    est = ex.Estimate(requests=720_000, stages=21, runs=8, ticks=3600)
    assert est.visits == 720_000 * 21 * 8
    assert est.seconds > est.visits * ex.MEASURED_SPEED.per_visit_s


def test_ablations_run_and_no_cache_pays_the_cold_tier() -> None:
    t = _compare(2, ",".join(("quart", *ex.ABLATIONS)))
    rows = {r.name: r for r in t.rows}
    assert set(rows) == {"quart", "quart-no-smoother", "quart-no-cache", "quart-no-compensator",
                         "quart-no-prewarm", "quart-corrector"}  # fmt: skip
    assert all(r.values["refused"] >= 0 for r in t.rows)  # type: ignore[operator]
    no_cache = rows["quart-no-cache"]
    assert no_cache.values["starts"].startswith("cold:")  # type: ignore[union-attr]
    starts = [e for e in no_cache.result.replica_events if e.kind == "start"]
    assert starts, "the workload should make Quart start replicas"
    cold = SMALL.delays
    for e in starts:
        st = next(s for s in PIPE.stages if s.name == e.stage)
        want = cold.seconds(StartTier.COLD, st.size_gib, SMALL.servers[0].gpu, st.service_s)
        assert e.seconds == pytest.approx(want)
    # With the cache, some starts come from host memory (a pre-forked child or a fork)
    # and are faster.
    quart_starts = [e for e in rows["quart"].result.replica_events if e.kind == "start"]
    assert any(e.tier in (StartTier.FORK, StartTier.PREFORK) for e in quart_starts)
    assert min(e.seconds for e in quart_starts) < min(e.seconds for e in starts)


def test_static_is_peak_provisioning_deployed_up_front() -> None:
    w = ex.make_workload(LOAD, seed=1)
    arr = ex.arrivals_for(w, 60)
    counts = ex.static_counts(PIPE, SMALL, arr)
    peak = ex.peak_rate(arr)
    for s in PIPE.stages:
        want = int(np.ceil(peak * s.service_s / (0.7 * s.max_concurrency)))
        assert counts[s.name] == max(s.min_replicas, min(s.max_replicas, want))
    big = replace(SMALL, servers=tuple(replace(SMALL.servers[0], name=f"b{i}", gpus=8)
                                       for i in range(8)))  # fmt: skip
    t = ex.compare_policies(PIPE, big, w, ["static"], seed=1, duration_s=60)
    r = t.rows[0].result
    assert t.rows[0].values["scale_ups"] == 0 and t.rows[0].values["starts"] == "-"
    assert list(r.ready[0]) == [counts[s.name] for s in PIPE.stages]
    assert "static: peak 1-s rate" in t.notes[0] and "fits: " in t.notes[0]
    assert r.refused_initial == 0 and r.gpu_seconds == pytest.approx(r.replica_seconds)


def test_static_larger_than_an_exclusive_cluster_is_refused_and_says_so() -> None:
    w = ex.make_workload(LOAD, seed=1)
    counts = ex.static_counts(PIPE, SMALL, ex.arrivals_for(w, 60))
    assert sum(counts.values()) > SMALL.total_gpus  # the premise
    t = ex.compare_policies(PIPE, SMALL, w, ["static"], seed=1, duration_s=60)
    r = t.rows[0].result
    held = r.ready + r.starting + r.draining
    assert held.sum(axis=1).max() == SMALL.total_gpus  # one replica per GPU, never more
    assert r.refused_initial == sum(counts.values()) - SMALL.total_gpus
    assert t.rows[0].values["refused"] >= r.refused_initial  # type: ignore[operator]
    assert "DOES NOT FIT" in t.notes[0]


def test_peak_rate_counts_the_busiest_window() -> None:
    arr = np.array([0.0, 0.1, 0.2, 5.0, 5.5, 5.6, 5.7, 5.9, 9.0])
    assert ex.peak_rate(arr, 1.0) == 5.0
    assert ex.peak_rate(arr, 0.5) == 8.0
    assert ex.peak_rate(np.empty(0)) == 0.0


def test_workload_names_and_rates() -> None:
    code = ex.make_workload("azure-code", rate=50.0)
    assert str(code).startswith("trace:azure-code,method=thinning,rate=50")
    once = ex.arrivals_for(code, None)  # the trace's span at its own time scale, 50/s
    assert once.size / 3436 == pytest.approx(50.0, rel=0.02)
    arr = ex.arrivals_for(code, 400.0)  # a 400 s window at 50/s
    assert arr[-1] < 400.0 and arr.size / 400 == pytest.approx(50.0, rel=0.05)
    assert ex.make_workload("mmpp:cv=4", rate=20).mmpp_process().mean_rate == pytest.approx(20)
    with pytest.raises(SpecError, match="given twice"):
        ex.make_workload("poisson:rate=3", rate=4)
    assert ex.expected_requests(ex.make_workload("poisson:rate=10"), 30) == 300
    with pytest.raises(SpecError, match="needs a duration"):
        ex.expected_requests(ex.make_workload("poisson:rate=10"), None)


def test_placement_comparison_reports_start_tiers_and_times() -> None:
    w = ex.make_workload(LOAD, seed=2)
    t = ex.compare_placements(
        PIPE, SMALL, w, ["quart", "least-loaded", "first-fit"], seed=2, duration_s=60
    )
    assert [r.name for r in t.rows] == ["quart", "least-loaded", "first-fit"]
    for r in t.rows:
        v = r.values
        assert v["starts"] > 0  # type: ignore[operator]
        assert 0 <= v["fork_hit_pct"] <= 100  # type: ignore[operator]
        assert 0 < v["start_p50_s"] <= v["start_p99_s"]  # type: ignore[operator]
        assert r.result.policy == r.name
    assert "fork_hit_pct" in t.text()


def test_cli_rejects_several_placers_with_several_policies() -> None:
    res = CliRunner().invoke(
        sim_app, ["simulate", "--placement", "quart,random", "--policies", "quart,hpa"]
    )
    assert res.exit_code == 2 and "runs one policy" in res.output


def test_sweep_writes_csv_and_figure_with_progress(tmp_path: Path) -> None:
    events: list[ex.ProgressEvent] = []
    res = sweep_mod.sweep(
        PIPE, SMALL, [1, 4], [20], ["quart", "static"], seed=1, duration_s=30,
        out_dir=tmp_path, progress=events.append,
    )  # fmt: skip
    assert len(res.table.rows) == 4
    assert [(r.values["cv"], r.name) for r in res.table.rows] == [
        (1.0, "quart"), (1.0, "static"), (4.0, "quart"), (4.0, "static"),
    ]  # fmt: skip
    assert res.csv_path is not None and res.figure_path is not None
    lines = res.csv_path.read_text().splitlines()
    assert lines[0].startswith("cv,load_rps,policy") and len(lines) == 5
    assert res.figure_path.stat().st_size > 10_000
    assert {e.run for e in events} == {0, 1, 2, 3} and {e.runs for e in events} == {4}
    assert events[-1].done == events[-1].total
    with pytest.raises(SpecError, match="at least one CV"):
        sweep_mod.sweep(PIPE, SMALL, [], [20], ["quart"])


def test_cli_seeds_replicate_and_the_seed_changes_the_table(tmp_path: Path) -> None:
    """Issue #11 item 6: N seeds, mean and 95% interval; --seed 1 vs 2 differ, 1 twice not."""
    args = ["simulate", "--cluster", "small", "--pipeline", "whisper-time-3",
            "--trace", "azure-code", "--rate", "30", "--duration", "40",
            "--policies", "quart,hpa", "--seeds", "3", "--no-progress"]  # fmt: skip
    runner = CliRunner()
    one = runner.invoke(sim_app, [*args, "--seed", "1", "--out", str(tmp_path)])
    again = runner.invoke(sim_app, [*args, "--seed", "1"])
    two = runner.invoke(sim_app, [*args, "--seed", "2"])
    for res in (one, again, two):
        assert res.exit_code == 0, res.output
    assert one.stdout == again.stdout
    assert one.stdout != two.stdout
    assert "slo_ci95" in one.stdout and "3 seeds from base seed 1" in one.stdout
    assert (tmp_path / "attainment_vs_gpu.png").stat().st_size > 0
    rows = json.loads((tmp_path / "table.json").read_text())["rows"]
    assert [r["policy"] for r in rows] == ["quart", "hpa"] and rows[0]["runs"] == 3


def test_mean_ci95_and_seed_sets() -> None:
    from quartfaas.sim.experiments.replicate import mean_ci95, seeds_for

    m, h = mean_ci95([1.0, 2.0, 3.0])
    assert m == 2.0 and h == pytest.approx(4.303 * 1.0 / np.sqrt(3))
    assert np.isnan(mean_ci95([5.0])[1])
    assert seeds_for(1, 5) == seeds_for(1, 5) and not set(seeds_for(1, 5)) & set(seeds_for(2, 5))

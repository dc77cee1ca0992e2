"""Whole jobs: ``run`` (serve, replay a workload, write a report), ``bench scaleup`` and
``train-smoother``."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from quartfaas.cli.common import (
    ProgressOpt,
    SpecArg,
    VerboseOpt,
    console,
    friendly,
    load_pipeline,
    out,
    positive,
    workload_text,
)


def run(
    spec: SpecArg = "demo",
    workload: Annotated[
        str | None,
        typer.Option(
            help="a trace name (azure-code, azure-conv) or kind:key=value, e.g. "
            "'azure-code,rate=5' or 'mmpp:rate=20,cv=4' "
            "(default: a bursty 150 s slice of the Azure code trace)"
        ),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="seconds (synthetic workloads)")] = None,
    policy: Annotated[
        str | None, typer.Option(help="quart (default), static, knative, hpa, ... or none")
    ] = None,
    smoother: Annotated[
        bool | None,
        typer.Option(
            "--smoother/--no-smoother",
            help="propagate bursts to later stages (default: the spec's controller.smoother)",
        ),
    ] = None,
    compensator: Annotated[
        bool | None,
        typer.Option(
            "--compensator/--no-compensator",
            help="resize replicas' CPU in place (default: the spec's controller.compensator)",
        ),
    ] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="report directory")] = None,
    seed: Annotated[int, typer.Option(help="seed of synthetic workloads")] = 0,
    progress: ProgressOpt = True,
    verbose: VerboseOpt = False,
    backend: Annotated[
        str,
        typer.Option(
            help="local (worker processes) or ray (a local Ray cluster, head + 2 "
            "nodes, started and stopped by the job)"
        ),
    ] = "local",
) -> None:
    """The main job: serve a pipeline with its controller, replay a workload, write a report."""
    import time as _time

    from quartfaas.jobs.run import DEFAULT_WORKLOAD, RunConfig, run_job
    from quartfaas.workload import Workload

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    positive(duration, "--duration")
    with friendly():
        pipeline = load_pipeline(spec)
        wl = Workload.parse(workload_text(workload or DEFAULT_WORKLOAD), seed=seed)
        where = out_dir or Path("runs") / _time.strftime(f"{pipeline.name}-%Y%m%d-%H%M%S")
        if backend not in ("local", "ray"):
            raise typer.BadParameter(f"--backend is local or ray, not {backend!r}")
        cfg = RunConfig(
            spec=pipeline, workload=wl, out_dir=where, duration_s=duration, policy=policy,
            smoother=smoother, compensator=compensator, progress=progress,
            runtime=ray_runtime_factory(console.print) if backend == "ray" else None,
        )  # fmt: skip
        report = run_job(cfg, log=lambda m: console.print(m, highlight=False))
    summary = report["load"]
    table = Table("metric", "value", title=f"{report['pipeline']} / {report['policy']}")
    for key, label in (("latency_p50_s", "p50"), ("latency_p95_s", "p95"),
                       ("latency_p99_s", "p99")):  # fmt: skip
        v = summary.get(key)
        table.add_row(f"latency {label}", "-" if v is None else f"{float(v) * 1000:.1f} ms")
    table.add_row("SLO (p99)", f"{report['slo_p99_ms']:.0f} ms")
    table.add_row("SLO attainment", f"{float(summary.get('slo_attainment') or 0) * 100:.1f} %")
    table.add_row("requests sent / ok", f"{summary.get('sent')} / {summary.get('ok')}")
    table.add_row("errors", json.dumps(summary.get("errors", {})))
    for stage, rs in report["replica_seconds"].items():
        table.add_row(f"replica-s {stage}", f"{rs:.0f} (max {report['max_replicas'][stage]})")
    table.add_row("start tiers", json.dumps(report["start_tiers"]))
    out.print(table)
    console.print(
        f"report: {cfg.out_dir}/ (summary.json, requests.csv, decisions.jsonl, timeline.csv, "
        "latency.png, replicas.png, queues.png)"
    )


def ray_runtime_factory(say: Any) -> Any:
    """(spec, decision_log) -> a RayRuntime on a local cluster (head + 2 nodes) that it
    starts now and stops with the runtime."""
    from quartfaas.backends.ray.runtime import RayRuntime, connect

    def make(spec: Any, decision_log: Path) -> Any:
        conn, accel = connect(spec, local_nodes=2)
        say(f"Ray backend: {conn.describe()}", highlight=False)
        try:
            return RayRuntime(spec, decision_log=decision_log, accelerator_resource=accel,
                              connection=conn)  # fmt: skip
        except BaseException:
            conn.close()
            raise

    return make


def bench_scaleup(
    spec: SpecArg = "bert-1g",
    repeats: Annotated[int, typer.Option(help="replica starts measured per tier")] = 5,
    seq_len: Annotated[int, typer.Option(help="tokens in each measured request")] = 16,
) -> None:
    """Replica start time per cache tier, first request, PSS, scale from zero."""
    from quartfaas.bench.scaleup import report, run_scaleup

    with friendly():
        pipeline = load_pipeline(spec)
        res = asyncio.run(
            run_scaleup(pipeline, repeats=repeats, seq_len=seq_len, log=console.print)
        )
    text, ok = report(res)
    out.print(text, highlight=False)
    if not ok:
        raise typer.Exit(1)


def train_smoother_cmd(
    out_dir: Annotated[
        Path, typer.Argument(help="where to write model.safetensors, config.json, metrics.json")
    ],
    seed: Annotated[int, typer.Option(help="seed of data and training")] = 0,
    runs: Annotated[int, typer.Option(help="simulated runs in the dataset")] = 300,
    epochs: Annotated[int, typer.Option(help="most training epochs (early stopping)")] = 300,
) -> None:
    """Train the smoother's GAT on simulator data; prints held-out errors vs QNA."""
    from rich.progress import Progress

    from quartfaas.sim.train_smoother import train_smoother

    with friendly(), Progress(console=console) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int, message: str) -> None:
            if phase not in tasks:
                tasks[phase] = bar.add_task(phase, total=total)
            bar.update(tasks[phase], completed=done, total=total, description=f"{phase}")

        metrics = train_smoother(out_dir, seed=seed, n_runs=runs, epochs=epochs,
                                 progress=progress)  # fmt: skip
    test = metrics["test"]
    table = Table("predictor", "CV MAE", "CV RMSE", title="held-out test split")
    for name in ("gat", "qna", "persistence"):
        if name in test:
            table.add_row(name, f"{test[name]['mae']:.4f}", f"{test[name]['rmse']:.4f}")
    out.print(table)
    out.print(f"winner: {metrics.get('winner')}; files in {out_dir}")

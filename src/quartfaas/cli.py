"""The ``quartfaas`` command line: parse arguments, load a spec, call one function.

Environment variables are read here and nowhere else (``ENV`` below), then passed down.
Every command turns a ``QuartfaasError`` into a one-line message and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from quartfaas.errors import QuartfaasError, SpecError
from quartfaas.spec import PipelineSpec, load_spec

ENV: dict[str, str] = dict(os.environ)
DEFAULT_GATEWAY = "http://127.0.0.1:8080"

app = typer.Typer(
    help="Serve large models as pipelines of serverless functions inside a latency SLO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
out = Console()

T = TypeVar("T")

GatewayOpt = Annotated[
    str, typer.Option("--gateway", "-g", envvar="QUARTFAAS_GATEWAY", help="gateway base URL")
]
UserOpt = Annotated[str, typer.Option("--user", help="basic-auth user for /system/*")]
PasswordOpt = Annotated[
    str | None,
    typer.Option(
        "--password", envvar="QUARTFAAS_GATEWAY_PASSWORD", help="basic-auth password (or env)"
    ),
]
SpecArg = Annotated[Path, typer.Argument(help="pipeline spec (YAML)")]


@contextlib.contextmanager
def _friendly() -> Iterator[None]:
    try:
        yield
    except QuartfaasError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def _run_async(fn: Callable[[], Any]) -> Any:
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(fn())
    return asyncio.run(fn())


def _load(spec_path: Path) -> PipelineSpec:
    return load_spec(spec_path)


def _auth(user: str, password: str | None) -> tuple[str, str] | None:
    return (user, password) if password else None


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )


@app.command()
def serve(
    spec: SpecArg,
    host: Annotated[str | None, typer.Option(help="bind address (default: the spec's)")] = None,
    port: Annotated[int | None, typer.Option(help="bind port (default: the spec's)")] = None,
    controller: Annotated[
        bool | None, typer.Option("--controller/--no-controller", help="run the autoscaler")
    ] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Serve a pipeline: gateway + stage workers on this machine, until Ctrl-C."""
    _setup_logging(verbose)
    with _friendly():
        pipeline = _load(spec)
        from quartfaas.runtime import EmbeddedRuntime

        async def main() -> None:
            rt = EmbeddedRuntime(pipeline, host=host, port=port, controller=controller,
                                 environ=ENV)  # fmt: skip
            await rt.start()
            console.print(
                f"[green]serving[/green] {pipeline.name} at {rt.url} "
                f"(functions: {', '.join(rt.gateway.function_names())}); Ctrl-C stops"
            )
            console.print(rt.cpu.report.describe(), highlight=False)
            await rt.serve_forever()

        _run_async(main)


@app.command()
def invoke(
    name: Annotated[str, typer.Argument(help="function: the pipeline or one stage")],
    data: Annotated[
        str, typer.Option("--data", "-d", help='JSON body, or @file (e.g. {"inputs": "hi"})')
    ],
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    timeout_s: Annotated[float, typer.Option("--timeout")] = 60.0,
) -> None:
    """Invoke a function through the gateway and print its answer."""
    import httpx

    body = Path(data[1:]).read_bytes() if data.startswith("@") else data.encode()
    try:
        r = httpx.post(
            f"{gateway}/function/{name}",
            content=body,
            headers={"Content-Type": "application/json"},
            timeout=timeout_s,
        )
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/red] cannot reach {gateway}: {exc}")
        raise typer.Exit(2) from None
    out.print(r.text, highlight=False, soft_wrap=True)
    if r.status_code >= 400:
        raise typer.Exit(1)


def _system(method: str, url: str, auth: tuple[str, str] | None, **kw: Any) -> Any:
    import httpx

    try:
        r = httpx.request(method, url, auth=auth, timeout=30.0, **kw)
    except httpx.HTTPError as exc:
        console.print(f"[red]error:[/red] cannot reach {url}: {exc}")
        raise typer.Exit(2) from None
    if r.status_code >= 400:
        console.print(f"[red]error {r.status_code}:[/red] {r.text}", highlight=False)
        raise typer.Exit(1)
    return r.json()


@app.command()
def functions(
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    user: UserOpt = "admin",
    password: PasswordOpt = None,
) -> None:
    """List the gateway's functions (the pipeline and its stages)."""
    rows = _system("GET", f"{gateway}/system/functions", _auth(user, password))
    table = Table("name", "replicas", "available", "invocations", "min", "max", "image")
    for f in rows:
        labels = f.get("labels", {})
        table.add_row(
            f["name"], str(f["replicas"]), str(f["availableReplicas"]),
            str(f["invocationCount"]), labels.get("com.openfaas.scale.min", ""),
            labels.get("com.openfaas.scale.max", ""), f.get("image", ""),
        )  # fmt: skip
    out.print(table)


@app.command()
def scale(
    name: Annotated[str, typer.Argument(help="stage function name")],
    replicas: Annotated[int, typer.Argument(help="desired replicas")],
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    user: UserOpt = "admin",
    password: PasswordOpt = None,
) -> None:
    """Set a stage's replica count (within its min/max)."""
    res = _system(
        "POST",
        f"{gateway}/system/scale-function/{name}",
        _auth(user, password),
        json={"serviceName": name, "replicas": replicas},
    )
    out.print(json.dumps(res))


@app.command("make-weights")
def make_weights_cmd(
    spec: SpecArg,
    force: Annotated[bool, typer.Option(help="rewrite files that already match")] = False,
) -> None:
    """Write each stage's safetensors file (and the manifest) for a spec."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with _friendly():
        pipeline = _load(spec)
        from quartfaas.models import make_weights

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            paths = make_weights(pipeline, force=force, progress=progress)
        if not paths:
            console.print(f"{pipeline.name}: model kind {pipeline.model.kind!r} has no weights")
        for p in paths:
            out.print(str(p))


@app.command("check-spec")
def check_spec(spec: SpecArg) -> None:
    """Validate a spec and print its stages, layers and timeouts."""
    with _friendly():
        pipeline = _load(spec)
    table = Table("stage", "layers", "timeout_s", "replicas", "concurrency", "cpu")
    for i, s in enumerate(pipeline.stages):
        layers = "-" if pipeline.model.kind == "synthetic" else str(list(pipeline.stage_layers(i)))
        table.add_row(
            s.name, layers, f"{pipeline.stage_timeout_s(i):.2f}",
            f"{s.min_replicas}..{s.max_replicas}", str(s.max_concurrency), str(s.cpu),
        )  # fmt: skip
    out.print(table)


@app.command()
def run(
    spec: Annotated[
        str, typer.Argument(help="spec file or bundled example name (default: demo)")
    ] = "demo",
    workload: Annotated[
        str | None,
        typer.Option(
            help="e.g. 'trace:azure-code,rate=5' or 'mmpp:rate=20,cv=4' "
            "(default: a bursty 150 s slice of the Azure code trace)"
        ),
    ] = None,
    duration: Annotated[float | None, typer.Option(help="seconds (synthetic workloads)")] = None,
    policy: Annotated[
        str | None, typer.Option(help="quart (default), static, knative, hpa, ... or none")
    ] = None,
    smoother: Annotated[bool | None, typer.Option("--smoother/--no-smoother")] = None,
    compensator: Annotated[bool | None, typer.Option("--compensator/--no-compensator")] = None,
    out_dir: Annotated[Path | None, typer.Option("--out", help="report directory")] = None,
    seed: Annotated[int, typer.Option(help="seed of synthetic workloads")] = 0,
    progress: Annotated[bool, typer.Option("--progress/--no-progress")] = True,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """The main job: serve a pipeline with its controller, replay a workload, write a report."""
    import time as _time

    from quartfaas.jobs.run import DEFAULT_WORKLOAD, RunConfig, example_spec, run_job
    from quartfaas.workload.synthetic import Workload

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )
    with _friendly():
        pipeline = _load(example_spec(spec))
        wl = Workload.parse(workload or DEFAULT_WORKLOAD, seed=seed)
        where = out_dir or Path("runs") / _time.strftime(f"{pipeline.name}-%Y%m%d-%H%M%S")
        cfg = RunConfig(
            spec=pipeline, workload=wl, out_dir=where, duration_s=duration, policy=policy,
            smoother=smoother, compensator=compensator, progress=progress,
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


@app.command()
def load(
    name: Annotated[str, typer.Argument(help="function to load (usually the pipeline)")],
    workload: Annotated[str, typer.Option(help="e.g. 'poisson:rate=10', 'trace:azure-conv'")],
    duration: Annotated[float | None, typer.Option(help="seconds (synthetic workloads)")] = None,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    slo_ms: Annotated[float | None, typer.Option(help="SLO for the attainment figure")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="per-request CSV")] = None,
    seed: Annotated[int, typer.Option()] = 0,
    max_words: Annotated[int, typer.Option(help="cap on words per request text")] = 30,
    timeout_s: Annotated[float, typer.Option("--timeout")] = 30.0,
) -> None:
    """Open-loop load from a trace or a synthetic process; prints latency and SLO attainment."""
    from dataclasses import asdict

    from quartfaas.workload.loadgen import function_url, inputs_for, run_load
    from quartfaas.workload.synthetic import Workload

    with _friendly():
        trace = Workload.parse(workload, seed=seed).trace(duration)
        inputs = inputs_for(trace.prompt_tokens, len(trace.arrivals_s), max_len=max_words)
        res = run_load(
            function_url(gateway, name), trace.arrivals_s, inputs,
            slo_s=None if slo_ms is None else slo_ms / 1000.0, csv_path=csv_out,
            timeout_s=timeout_s, progress=True,
        )  # fmt: skip
    out.print_json(json.dumps(asdict(res.summary), default=str))


@app.command()
def control(
    spec: SpecArg,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    prometheus: Annotated[
        str, typer.Option(help="Prometheus base URL (it scrapes the gateway)")
    ] = "http://127.0.0.1:9090",
    decision_log: Annotated[Path | None, typer.Option(help="JSONL decision log")] = None,
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the controller alone against a remote gateway and its Prometheus."""
    _setup_logging(verbose)
    with _friendly():
        pipeline = _load(spec)
        from quartfaas.backends.gateway import GatewayBackend
        from quartfaas.clock import MonotonicClock
        from quartfaas.control.loop import ControlLoop, run_live
        from quartfaas.control.registry import make_policy
        from quartfaas.control.sinks import HoldLogger, JsonlDecisionLog
        from quartfaas.metrics.prometheus import PrometheusCollector

        cfg = pipeline.controller
        backend = GatewayBackend(gateway, auth=_auth(user, password))
        sinks: list[Any] = [HoldLogger()]
        if decision_log is not None:
            sinks.append(JsonlDecisionLog(decision_log))
        loop = ControlLoop(make_policy(cfg.policy, cfg), backend, sinks)
        collector = PrometheusCollector(prometheus, pipeline)

        async def controller() -> None:
            stop = asyncio.Event()
            ev = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                ev.add_signal_handler(sig, stop.set)
            console.print(f"controlling {pipeline.name} at {gateway} from {prometheus}")
            try:
                await run_live(loop, collector.collect, MonotonicClock(), cfg.interval_s, stop)
            finally:
                await collector.aclose()
                backend.close()

        _run_async(controller)


def _mount_simulator() -> None:
    from quartfaas.sim.commands import register

    register(app)


_mount_simulator()

bench_app = typer.Typer(help="Benchmarks (figures for the README and the issues).")
app.add_typer(bench_app, name="bench")


@bench_app.command("scaleup")
def bench_scaleup(
    spec: Annotated[str, typer.Argument(help="spec or example name")] = "bert-1g",
    repeats: Annotated[int, typer.Option()] = 5,
    seq_len: Annotated[int, typer.Option()] = 16,
) -> None:
    """Replica start time per cache tier, first request, PSS, scale from zero."""
    from quartfaas.bench.scaleup import report, run_scaleup
    from quartfaas.jobs.run import example_spec

    with _friendly():
        pipeline = _load(example_spec(spec))
        res = asyncio.run(
            run_scaleup(pipeline, repeats=repeats, seq_len=seq_len, log=console.print)
        )
    text, ok = report(res)
    out.print(text, highlight=False)
    if not ok:
        raise typer.Exit(1)


@app.command("train-smoother")
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

    with _friendly(), Progress(console=console) as bar:
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


def main() -> None:
    try:
        app()
    except SpecError as exc:  # raised outside a command's own handler
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()

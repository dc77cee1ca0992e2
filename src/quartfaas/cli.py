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
        from quartfaas.dataplane.runtime import EmbeddedRuntime

        async def main() -> None:
            rt = EmbeddedRuntime(pipeline, host=host, port=port, controller=controller,
                                 environ=ENV)  # fmt: skip
            await rt.start()
            console.print(
                f"[green]serving[/green] {pipeline.name} at {rt.url} "
                f"(functions: {', '.join(rt.gateway.function_names())}); Ctrl-C stops"
            )
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


def main() -> None:
    try:
        app()
    except SpecError as exc:  # raised outside a command's own handler
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(2)


if __name__ == "__main__":
    main()

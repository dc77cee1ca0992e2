"""Commands that talk to a running gateway: ``invoke``, ``functions``, ``scale`` and ``load``
(open-loop load from a trace or a synthetic process)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from quartfaas.cli.common import (
    DEFAULT_GATEWAY,
    GatewayOpt,
    PasswordOpt,
    UserOpt,
    basic_auth,
    console,
    friendly,
    out,
)


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


def functions(
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    user: UserOpt = "admin",
    password: PasswordOpt = None,
) -> None:
    """List the gateway's functions (the pipeline and its stages)."""
    rows = _system("GET", f"{gateway}/system/functions", basic_auth(user, password))
    table = Table("name", "replicas", "available", "invocations", "min", "max", "image")
    for f in rows:
        labels = f.get("labels", {})
        table.add_row(
            f["name"], str(f["replicas"]), str(f["availableReplicas"]),
            str(f["invocationCount"]), labels.get("com.openfaas.scale.min", ""),
            labels.get("com.openfaas.scale.max", ""), f.get("image", ""),
        )  # fmt: skip
    out.print(table)


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
        basic_auth(user, password),
        json={"serviceName": name, "replicas": replicas},
    )
    out.print(json.dumps(res))


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

    from quartfaas.workload import Workload
    from quartfaas.workload.loadgen import run_load
    from quartfaas.workload.payloads import function_url, inputs_for

    with friendly():
        trace = Workload.parse(workload, seed=seed).trace(duration)
        inputs = inputs_for(trace.prompt_tokens, len(trace.arrivals_s), max_len=max_words)
        res = run_load(
            function_url(gateway, name), trace.arrivals_s, inputs,
            slo_s=None if slo_ms is None else slo_ms / 1000.0, csv_path=csv_out,
            timeout_s=timeout_s, progress=True,
        )  # fmt: skip
    out.print_json(json.dumps(asdict(res.summary), default=str))

"""Commands that talk to a running gateway: ``invoke``, ``functions``, ``scale`` and ``load``
(open-loop load from a trace or a synthetic process).

Errors follow the CLI convention (``common.py``): one line naming what the user typed,
exit 2 — the gateway not reachable (``--gateway``), an unknown function (the names there
are listed), a 401 (how to pass the password), any other error the gateway answers
(its JSON ``error``). Answers go to stdout as the gateway sent them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from quartfaas.cli.common import (
    DEFAULT_GATEWAY,
    PASSWORD_ENV,
    GatewayOpt,
    PasswordOpt,
    ProgressOpt,
    UserOpt,
    basic_auth,
    console,
    fail,
    friendly,
    out,
    positive,
    workload_text,
)

TimeoutOpt = Annotated[
    float, typer.Option("--timeout", help="seconds to wait for the gateway's answer")
]


def _gateway_error(status: int, text: str, gateway: str, what: str) -> str:
    """One line for an error answer of the gateway."""
    try:
        body = json.loads(text)
        message = str(body.get("error", text)) if isinstance(body, dict) else text
    except ValueError:
        message = text
    if status == 401:
        return (
            f"{what}: {gateway} needs basic auth for /system/*: pass --password "
            f"(or set {PASSWORD_ENV}) and --user if it is not 'admin'"
        )
    return f"{what}: {gateway} answered {status}: {message.strip() or '(no body)'}"


def _request(method: str, url: str, gateway: str, what: str, **kw: Any) -> Any:
    import httpx

    try:
        return httpx.request(method, url, **kw)
    except httpx.TimeoutException:
        fail(f"--gateway {gateway}: no answer to {what} within --timeout {kw.get('timeout')}s")
    except httpx.HTTPError as exc:
        fail(f"--gateway {gateway}: cannot reach the gateway ({type(exc).__name__}: {exc})")


def invoke(
    name: Annotated[str, typer.Argument(help="function: the pipeline or one stage")],
    data: Annotated[
        str, typer.Option("--data", "-d", help='JSON body, or @FILE (e.g. {"inputs": "hi"})')
    ],
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    timeout_s: TimeoutOpt = 60.0,
) -> None:
    """Invoke a function through the gateway and print its answer (stdout)."""
    if data.startswith("@"):
        try:
            body = Path(data[1:]).read_bytes()
        except OSError as exc:
            fail(f"--data {data}: cannot read {data[1:]!r} ({exc.strerror or exc})")
    else:
        body = data.encode()
    r = _request(
        "POST", f"{gateway.rstrip('/')}/function/{name}", gateway, f"invoke {name}",
        content=body, headers={"Content-Type": "application/json"}, timeout=timeout_s,
    )  # fmt: skip
    if r.status_code >= 400:
        fail(_gateway_error(r.status_code, r.text, gateway, f"invoke {name}"))
    out.print(r.text, highlight=False, soft_wrap=True, markup=False)


def _system(method: str, path: str, gateway: str, what: str, auth: Any, **kw: Any) -> Any:
    r = _request(method, f"{gateway.rstrip('/')}{path}", gateway, what, auth=auth,
                 timeout=30.0, **kw)  # fmt: skip
    if r.status_code >= 400:
        fail(_gateway_error(r.status_code, r.text, gateway, what))
    try:
        return r.json()
    except ValueError:
        fail(f"{what}: {gateway} answered {r.status_code} with no JSON: {r.text[:200]!r}")


def functions(
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="print the JSON list")] = False,
) -> None:
    """List the gateway's functions (the pipeline and its stages)."""
    rows = _system("GET", "/system/functions", gateway, "functions", basic_auth(user, password))
    if as_json:
        out.print_json(json.dumps(rows))
        return
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
    name: Annotated[
        str, typer.Argument(help="a stage, or the pipeline (its stages scale in proportion)")
    ],
    replicas: Annotated[int, typer.Argument(help="desired replicas (0 where min_replicas is 0)")],
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    user: UserOpt = "admin",
    password: PasswordOpt = None,
) -> None:
    """Set a function's replicas. With `serve`'s controller on, this is a hint it may undo."""
    if replicas < 0:
        fail(f"REPLICAS must be >= 0, got {replicas}")
    res = _system(
        "POST", f"/system/scale-function/{name}", gateway, f"scale {name}",
        basic_auth(user, password), json={"serviceName": name, "replicas": replicas},
    )  # fmt: skip
    out.print(json.dumps(res), highlight=False, soft_wrap=True)
    if isinstance(res, dict) and res.get("note"):
        console.print(f"note: {res['note']}", highlight=False)


def load(
    name: Annotated[str, typer.Argument(help="function to load (usually the pipeline)")],
    workload: Annotated[
        str,
        typer.Option(
            help="a trace name (azure-code, azure-conv) or kind:key=value, e.g. "
            "'poisson:rate=10', 'trace:azure-conv,rate=5'"
        ),
    ],
    duration: Annotated[
        float | None, typer.Option(help="seconds to run (synthetic workloads; traces: a slice)")
    ] = None,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    slo_ms: Annotated[float | None, typer.Option(help="SLO for the attainment figure")] = None,
    csv_out: Annotated[Path | None, typer.Option("--csv", help="per-request CSV")] = None,
    seed: Annotated[int, typer.Option(help="seed of synthetic arrivals and texts")] = 0,
    max_words: Annotated[int, typer.Option(help="cap on words per request text")] = 30,
    timeout_s: Annotated[float, typer.Option("--timeout", help="seconds per request")] = 30.0,
    progress: ProgressOpt = True,
) -> None:
    """Open-loop load; prints a JSON summary (stdout). Exits 2 when every request failed."""
    from dataclasses import asdict

    from quartfaas.workload import Workload
    from quartfaas.workload.loadgen import run_load
    from quartfaas.workload.payloads import function_url, inputs_for

    positive(duration, "--duration")
    positive(timeout_s, "--timeout")
    with friendly():
        trace = Workload.parse(workload_text(workload), seed=seed).trace(duration)
        inputs = inputs_for(trace.prompt_tokens, len(trace.arrivals_s), max_len=max_words)
        res = run_load(
            function_url(gateway, name), trace.arrivals_s, inputs,
            slo_s=None if slo_ms is None else slo_ms / 1000.0, csv_path=csv_out,
            timeout_s=timeout_s, progress=progress,
        )  # fmt: skip
    summary = asdict(res.summary)
    out.print_json(json.dumps(summary, default=str))
    sent, ok = summary.get("sent", 0), summary.get("ok", 0)
    if sent and not ok:
        fail(
            f"load {name}: all {sent} requests failed ({json.dumps(summary.get('errors', {}))});"
            f" is the gateway at --gateway {gateway} serving {name!r}?"
        )

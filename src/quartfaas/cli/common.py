"""What every command shares: the environment, the consoles, option types, error handling.

Environment variables are read here and nowhere else (``ENV``), then passed down.
``friendly()`` turns a ``QuartfaasError`` into a one-line message and exit status 2.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from quartfaas.errors import QuartfaasError
from quartfaas.spec import PipelineSpec, load_spec

ENV: dict[str, str] = dict(os.environ)
DEFAULT_GATEWAY = "http://127.0.0.1:8080"

console = Console(stderr=True)
out = Console()

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
def friendly() -> Iterator[None]:
    """A ``QuartfaasError`` raised inside becomes ``error: ...`` on stderr and exit 2."""
    try:
        yield
    except QuartfaasError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def run_async(fn: Callable[[], Any]) -> Any:
    """Run the coroutine ``fn()`` to completion, on uvloop where it is installed."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(fn())
    return asyncio.run(fn())


def load_pipeline(spec_path: Path) -> PipelineSpec:
    return load_spec(spec_path)


def basic_auth(user: str, password: str | None) -> tuple[str, str] | None:
    return (user, password) if password else None


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )

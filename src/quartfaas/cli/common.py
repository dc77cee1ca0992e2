"""What every command shares: the environment, the consoles, option types, error handling.

The convention every command follows (issue #16):

- every error is one line on stderr, ``error: ...``, naming the option or field the user
  typed, and the exit status is 2 (``fail``; ``friendly()`` turns a ``QuartfaasError``
  or a port already taken into one);
- progress and chatter go to stderr (``console``) and can be turned off; machine-readable
  output goes to stdout (``out``);
- nothing is hard-wrapped when output is piped or logged: ``console`` and ``out`` wrap only
  on a terminal, at ``TERMINAL_WIDTH`` (or ``COLUMNS``) when set;
- a spec argument is a YAML file or a bundled example name (``load_pipeline``); a
  workload is ``kind:key=value,...`` or a trace name (``workload_text``).

Environment variables are read here and nowhere else (``ENV``), then passed down.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console

from quartfaas.errors import QuartfaasError, SpecError

if TYPE_CHECKING:  # loaded by the commands that read a spec (not by --help or invoke)
    from quartfaas.spec import PipelineSpec

ENV: dict[str, str] = dict(os.environ)
DEFAULT_GATEWAY = "http://127.0.0.1:8080"
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
PASSWORD_ENV = "QUARTFAAS_GATEWAY_PASSWORD"


def example_names() -> list[str]:
    return sorted(p.stem for p in EXAMPLES.glob("*.yaml"))


def make_console(*, stderr: bool, environ: Mapping[str, str] = ENV) -> Console:
    """A console that hard-wraps only on a terminal (piped text keeps its lines whole)."""
    stream = sys.stderr if stderr else sys.stdout
    width = environ.get("TERMINAL_WIDTH") or environ.get("COLUMNS")
    if stream.isatty():
        return Console(stderr=stderr, width=int(width) if width and width.isdigit() else None)
    # Not a terminal: no wrapping of printed text, and tables as wide as they need.
    return Console(
        stderr=stderr, soft_wrap=True, width=int(width) if width and width.isdigit() else 200
    )


def help_width(environ: Mapping[str, str]) -> dict[str, int]:
    """click's help width from ``TERMINAL_WIDTH`` (or ``COLUMNS``), when one is set."""
    width = environ.get("TERMINAL_WIDTH") or environ.get("COLUMNS") or ""
    if not width.isdigit():
        return {}
    return {"terminal_width": int(width), "max_content_width": int(width)}


console = make_console(stderr=True)
out = make_console(stderr=False)

GatewayOpt = Annotated[
    str,
    typer.Option(
        "--gateway", "-g", envvar="QUARTFAAS_GATEWAY", help="gateway base URL", show_envvar=True
    ),
]
UserOpt = Annotated[str, typer.Option("--user", help="basic-auth user for /system/*")]
PasswordOpt = Annotated[
    str | None,
    typer.Option(
        "--password",
        envvar=PASSWORD_ENV,
        help="basic-auth password for /system/* (or the environment variable)",
        show_envvar=True,
    ),
]
SpecArg = Annotated[
    str,
    typer.Argument(
        help=f"spec file (YAML) or bundled example name ({', '.join(example_names())})",
        metavar="SPEC",
        show_default=False,
    ),
]
VerboseOpt = Annotated[bool, typer.Option("--verbose", "-v", help="log debug detail to stderr")]
ProgressOpt = Annotated[
    bool, typer.Option("--progress/--no-progress", help="show progress on stderr")
]


def fail(message: str) -> NoReturn:
    """The one way a command reports an error: one line on stderr, exit status 2."""
    console.print(f"[red]error:[/red] {one_line(message)}", highlight=False)
    raise typer.Exit(2)


def one_line(message: str) -> str:
    """``head:\n  a\n  b`` (a spec's problems, one per line) -> ``head: a; b``."""
    head, *rest = [line.strip() for line in message.strip().splitlines() if line.strip()] or [""]
    if not rest:
        return head
    return f"{head} {'; '.join(rest)}" if head.endswith(":") else "; ".join([head, *rest])


@contextlib.contextmanager
def friendly(port_option: str = "--port") -> Iterator[None]:
    """A ``QuartfaasError`` (or a port already taken) raised inside becomes one line, exit 2."""
    try:
        yield
    except QuartfaasError as exc:
        fail(str(exc))
    except OSError as exc:
        if exc.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            fail(f"{port_option}: cannot listen there ({exc.strerror or exc}); pick another")
        raise


def run_async(fn: Callable[[], Any]) -> Any:
    """Run the coroutine ``fn()`` to completion, on uvloop where it is installed."""
    with contextlib.suppress(ImportError):
        import uvloop

        return uvloop.run(fn())
    return asyncio.run(fn())


def spec_path(name: str) -> Path:
    """A spec file, or a bundled example by name (``tiny``, ``demo``, ...)."""
    p = Path(name)
    if p.is_dir():
        raise SpecError(f"spec {name!r} is a directory; give a YAML file in it or an example name")
    if p.is_file():
        return p
    candidate = EXAMPLES / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    raise SpecError(
        f"spec {name!r} is neither a file nor a bundled example; examples: {example_names()}"
    )


def load_pipeline(spec: str | Path) -> PipelineSpec:
    from quartfaas.spec import load_spec

    return load_spec(spec_path(str(spec)))


def workload_text(text: str) -> str:
    """One workload syntax everywhere: a trace name alone means ``trace:<name>``."""
    from quartfaas.workload.traces import NAMED_TRACES

    text = text.strip()
    head = text.split(",", 1)[0].strip()
    if ":" not in text and head in NAMED_TRACES:
        return f"trace:{text}"
    return text


def positive(value: float | None, option: str) -> None:
    """A ``--duration``-like option must be > 0 (the error names the option)."""
    if value is not None and not value > 0:
        fail(f"{option} must be > 0, got {value:g}")


def basic_auth(user: str, password: str | None) -> tuple[str, str] | None:
    return (user, password) if password else None


def setup_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(name)s %(levelname)s %(message)s",
        stream=sys.stderr,
    )

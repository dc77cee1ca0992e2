"""The ``quartfaas`` command line: parse arguments, load a spec, call one function.

One module per command group, each a set of plain functions registered here in the order
``quartfaas --help`` lists them:

- ``serving.py``: ``serve`` (gateway and workers here), ``control`` (the controller alone);
- ``client.py``: ``invoke``, ``functions``, ``scale``, ``load`` (talk to a running gateway);
- ``specs.py``: ``make-weights``, ``check-spec``;
- ``jobs.py``: ``run`` (the main job), ``train-smoother``, ``bench scaleup``;
- ``simulate.py``: ``simulate`` and ``sweep`` (the simulator experiments);
- ``common.py``: environment, consoles, option types and error handling they share.

Environment variables are read in ``common.py`` and nowhere else, then passed down.
Every command turns a ``QuartfaasError`` into a one-line message and exit status 2.

A command imports what it runs inside its function (the runtime, the spec models, the
simulator), so ``quartfaas --help`` and the client commands start without the control
code, numba or the simulator: ``--help`` in 0.13-0.15 s on this 2-vCPU host against
0.65-0.93 s when ``simulate.py`` imported the simulator to list its names (2026-12-05, six
runs each, interleaved; ``sim/choices.py`` has the names now);
``tests/unit/test_cli_imports.py`` keeps it so.
"""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from quartfaas import __version__
from quartfaas.cli import client, jobs, serving, specs
from quartfaas.cli.common import ENV, fail, help_width, out
from quartfaas.cli.simulate import register as register_simulator
from quartfaas.errors import SpecError

app = typer.Typer(
    help="Serve large models as pipelines of serverless functions inside a latency SLO.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain click help (no box drawing, no <bool> tags on flags), as wide as
    # TERMINAL_WIDTH / COLUMNS say when set.
    rich_markup_mode=None,
    context_settings=help_width(ENV),
)


def _version(value: bool) -> None:
    if value:
        out.print(f"quartfaas {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """Serve large models as pipelines of serverless functions inside a latency SLO."""


app.command()(serving.serve)
app.command()(client.invoke)
app.command()(client.functions)
app.command()(client.scale)
app.command("make-weights")(specs.make_weights_cmd)
app.command("check-spec")(specs.check_spec)
app.command()(jobs.run)
app.command()(client.load)
app.command()(serving.control)
register_simulator(app)

bench_app = typer.Typer(help="Benchmarks (figures for the README and the issues).")
app.add_typer(bench_app, name="bench")
bench_app.command("scaleup")(jobs.bench_scaleup)

app.command("train-smoother")(jobs.train_smoother_cmd)


def main() -> None:
    try:
        app()
    except SpecError as exc:  # raised outside a command's own handler
        try:
            fail(str(exc))
        except typer.Exit as done:
            sys.exit(done.exit_code)


__all__ = ["app", "main"]

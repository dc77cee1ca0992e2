"""Commands about a spec file: ``check-spec`` (validate, print the stages) and
``make-weights`` (write each stage's safetensors file)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.table import Table

from quartfaas.cli.common import ProgressOpt, SpecArg, console, friendly, load_pipeline, out


def make_weights_cmd(
    spec: SpecArg,
    force: Annotated[bool, typer.Option(help="rewrite files that already match")] = False,
    show_progress: ProgressOpt = True,
) -> None:
    """Write each stage's safetensors file (and the manifest) for a spec; prints the paths."""
    from rich.progress import BarColumn, DownloadColumn, Progress, TimeRemainingColumn

    with friendly():
        pipeline = load_pipeline(spec)
        from quartfaas.models import make_weights

        with Progress(
            "[progress.description]{task.description}",
            BarColumn(),
            DownloadColumn(),
            TimeRemainingColumn(),
            console=console,
            disable=not show_progress,
        ) as bar:
            tasks: dict[str, Any] = {}

            def progress(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = bar.add_task(stage, total=total)
                bar.update(tasks[stage], completed=done, total=total)

            paths = make_weights(pipeline, force=force, progress=progress)
        if not paths:
            console.print(
                f"{pipeline.name}: model kind {pipeline.model.kind!r} has no weights",
                highlight=False,
            )
        for p in paths:
            out.print(str(p))


def check_spec(spec: SpecArg) -> None:
    """Validate a spec and print its stages, layers and timeouts."""
    with friendly():
        pipeline = load_pipeline(spec)
    table = Table("stage", "layers", "timeout_s", "replicas", "concurrency", "cpu")
    for i, s in enumerate(pipeline.stages):
        layers = "-" if pipeline.model.kind == "synthetic" else str(list(pipeline.stage_layers(i)))
        table.add_row(
            s.name, layers, f"{pipeline.stage_timeout_s(i):.2f}",
            f"{s.min_replicas}..{s.max_replicas}", str(s.max_concurrency), str(s.cpu),
        )  # fmt: skip
    out.print(table)

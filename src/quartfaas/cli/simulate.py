"""``quartfaas simulate`` and ``quartfaas sweep``: the simulator experiments on the command line.

A typer sub-application; the CLI (``cli/__init__.py``) mounts it with ``app.add_typer(sim_app)``
(typer adds the commands of a nameless sub-app to the parent) or calls ``register(app)``.
Each command parses, calls one function of ``sim/experiments.py`` and prints its table with
rich. The rich table is rendered without colour at a fixed width, so two runs with the same
seed print byte-identical tables (``tests/sim/test_experiments.py`` checks it).

``--out DIR`` writes ``table.txt``, ``table.csv``, ``table.json`` and PNG plots
(``latency_cdf.png``, ``replicas.png``; a sweep writes ``sweep.csv``/``sweep.png``).
Errors (unknown names, a cluster too small, a run too long) are one line and exit 2.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from quartfaas.cli.common import positive
from quartfaas.errors import QuartfaasError, SpecError
from quartfaas.sim.choices import INFRAS, MAX_VISITS, policy_names

if TYPE_CHECKING:  # the simulator is imported by the commands that run it, not by --help
    from quartfaas.sim import experiments as ex

sim_app = typer.Typer(
    help="Simulated experiments: compare scaling policies and placers, sweep CV and load.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)
TABLE_WIDTH = 200  # fixed, so the printed table does not depend on the terminal

ClusterOpt = Annotated[str, typer.Option("--cluster", help="cluster preset: paper, small")]
PipelineOpt = Annotated[
    str, typer.Option("--pipeline", help="pipeline preset, e.g. bert-21b-me-21")
]
SeedOpt = Annotated[int, typer.Option("--seed", help="seed of arrivals and service times")]
SloOpt = Annotated[
    float | None,
    typer.Option("--slo-ms", help="end-to-end p99 SLO (default: the pipeline's, 5 x service)"),
]
OutOpt = Annotated[
    Path | None, typer.Option("--out", help="directory for table (txt/csv/json) and plots")
]
ProgressOpt = Annotated[
    bool, typer.Option("--progress/--no-progress", help="show progress on stderr")
]
MaxVisitsOpt = Annotated[
    int, typer.Option("--max-visits", help="refuse runs over this many stage visits")
]


@contextlib.contextmanager
def _friendly() -> Iterator[None]:
    try:
        yield
    except QuartfaasError as exc:
        err.print(f"[red]error:[/red] {exc}", highlight=False)
        raise typer.Exit(2) from None


def render(table: ex.Comparison, console: Console) -> None:
    """Print ``table`` (title, rich table, notes)."""
    console.print(table.title, highlight=False, soft_wrap=True)
    t = Table(box=box.SIMPLE_HEAD, show_edge=False, header_style="bold", pad_edge=False)
    for name, _ in table.columns:
        t.add_column(name, justify="left" if name in ("policy", "placer", "starts") else "right")
    for row in table.cells():
        t.add_row(*row)
    console.print(t)
    for n in table.notes:
        console.print(f"note: {n}", highlight=False, soft_wrap=True)


def table_console() -> Console:
    # No colour, no terminal probing: the same bytes on any terminal (and in a pipe).
    return Console(width=TABLE_WIDTH, color_system=None, highlight=False, force_terminal=False)


@contextlib.contextmanager
def _progress(show: bool) -> Iterator[ex.ProgressFn | None]:
    if not show:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    cols = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
            TimeElapsedColumn())  # fmt: skip
    with Progress(*cols, console=err, transient=True) as bar:
        runs = bar.add_task("runs", total=None)
        current: dict[str, Any] = {}

        def update(ev: ex.ProgressEvent) -> None:
            bar.update(runs, total=ev.runs, completed=ev.run)
            task = current.get(ev.label)
            if task is None:
                for old in current.values():
                    bar.remove_task(old)
                current.clear()
                task = current[ev.label] = bar.add_task(ev.label, total=ev.total)
            bar.update(task, completed=ev.done)

        yield update


def _write(table: ex.Comparison, out: Path, plots: bool = True) -> None:
    from quartfaas.sim.report import plot_latency_cdf, plot_replicas

    out.mkdir(parents=True, exist_ok=True)
    (out / "table.txt").write_text(table.text(), encoding="utf-8")
    (out / "table.csv").write_text(table.csv(), encoding="utf-8")
    (out / "table.json").write_text(table.json(), encoding="utf-8")
    if plots:
        plot_latency_cdf(table.results, out / "latency_cdf.png")
        plot_replicas(table.results, out / "replicas.png")


@sim_app.command("simulate")
def simulate_cmd(
    cluster: ClusterOpt = "paper",
    pipeline: PipelineOpt = "bert-21b-me-21",
    workload: Annotated[
        str,
        typer.Option(
            "--workload",
            "--trace",
            help="azure-code, azure-conv, or mmpp:rate=R,cv=C / poisson:rate=R / gamma:...",
        ),
    ] = "azure-code",
    rate: Annotated[
        float | None,
        typer.Option("--rate", help="mean requests/s (a trace: thinned at its own time scale)"),
    ] = None,
    duration: Annotated[
        float | None, typer.Option("--duration", help="seconds of arrivals (trace: a window of it)")
    ] = 300.0,
    policies: Annotated[
        str | None,
        typer.Option(
            "--policies",
            help=f"comma list of {', '.join(policy_names())}; each may take "
            f"+{'|+'.join(INFRAS)} (infrastructure: e.g. hpa+cache, quart+k8s)",
        ),
    ] = None,
    placement: Annotated[
        str | None,
        typer.Option(
            "--placement",
            help="placer for every policy (default: each policy's platform), or a comma "
            "list to compare placers (one policy)",
        ),
    ] = None,
    seed: SeedOpt = 0,
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            help="independent realisations per policy (mean and 95% interval); 1: one run "
            "with per-run detail",
        ),
    ] = 5,
    slo_ms: SloOpt = None,
    out: OutOpt = None,
    progress: ProgressOpt = True,
    max_visits: MaxVisitsOpt = MAX_VISITS,
) -> None:
    """Run policies (or placers) on one workload and print the comparison table.

    With ``--seeds N`` (default 5) each policy runs on N independent realisations of the
    workload (seeds derived from ``--seed``) and the table gives the mean and a 95%
    interval; ``--out`` then also writes ``attainment_vs_gpu.png`` (one point per run).
    """
    from quartfaas.sim import experiments as ex
    from quartfaas.sim.cluster import cluster_preset
    from quartfaas.sim.experiments.replicate import plot_attainment_vs_gpu, replicate_policies
    from quartfaas.sim.pipelines import pipeline_preset

    positive(duration, "--duration")  # errors name the option, not duration_s (#16)
    positive(rate, "--rate")
    with _friendly():
        pipe = pipeline_preset(pipeline)
        cl = cluster_preset(cluster)
        w = ex.make_workload(workload, rate=rate, seed=seed)
        placers = ex.parse_list(placement, ex.placement_names(), "placers") if placement else []
        if len(placers) <= 1 and seeds != 1:
            with _progress(progress) as bar:
                rep = replicate_policies(
                    pipe, cl, workload, policies or ",".join(ex.POLICIES), rate=rate, seed=seed,
                    n_seeds=seeds, duration_s=duration, slo_ms=slo_ms, placement=placement,
                    progress=bar, max_visits=max_visits,
                )  # fmt: skip
            render(rep.table, table_console())
            if out is not None:
                out.mkdir(parents=True, exist_ok=True)
                for name, text in (("table.txt", rep.table.text()), ("table.csv", rep.table.csv()),
                                   ("table.json", rep.table.json())):  # fmt: skip
                    (out / name).write_text(text, encoding="utf-8")
                fig = plot_attainment_vs_gpu(rep, out / "attainment_vs_gpu.png")
                err.print(f"wrote {out}/table.txt, table.csv, table.json, {fig.name}")
            return
        with _progress(progress) as bar:
            if len(placers) > 1:
                pols = ex.parse_policies(policies or "quart")
                if len(pols) != 1:
                    raise SpecError(
                        f"comparing placers ({','.join(placers)}) runs one policy; "
                        f"got --policies {','.join(pols)}"
                    )
                table = ex.compare_placements(
                    pipe, cl, w, placers, policy=pols[0], seed=seed, duration_s=duration,
                    slo_ms=slo_ms, progress=bar, max_visits=max_visits,
                )  # fmt: skip
            else:
                table = ex.compare_policies(
                    pipe, cl, w, policies or ",".join(ex.POLICIES), seed=seed,
                    duration_s=duration, slo_ms=slo_ms, placement=placement, progress=bar,
                    max_visits=max_visits,
                )  # fmt: skip
        render(table, table_console())
        if out is not None:
            _write(table, out)
            err.print(
                f"wrote {out}/table.txt, table.csv, table.json, latency_cdf.png, replicas.png"
            )


def _floats(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SpecError(f"{what} must be a comma list of numbers, got {text!r}") from None


@sim_app.command("sweep")
def sweep_cmd(
    cvs: Annotated[str, typer.Option("--cvs", help="inter-arrival CVs, comma list")] = "1,2,4,8",
    loads: Annotated[str, typer.Option("--loads", help="mean requests/s, comma list")] = "100,200",
    policies: Annotated[
        str, typer.Option("--policies", help="comma list of policies")
    ] = "quart,knative,hpa,static",
    cluster: ClusterOpt = "paper",
    pipeline: PipelineOpt = "bert-21b-me-21",
    duration: Annotated[float, typer.Option("--duration", help="seconds per cell")] = 120.0,
    placement: Annotated[
        str | None,
        typer.Option("--placement", help="placer for every run (default: each policy's)"),
    ] = None,
    seed: SeedOpt = 0,
    slo_ms: SloOpt = None,
    out: Annotated[Path, typer.Option("--out", help="directory for sweep.csv/png")] = Path(
        "sweep-out"
    ),
    progress: ProgressOpt = True,
    max_visits: MaxVisitsOpt = MAX_VISITS,
) -> None:
    """SLO attainment and GPU-seconds against CV and load, one line per policy."""
    from quartfaas.sim import sweep as sweep_mod
    from quartfaas.sim.cluster import cluster_preset
    from quartfaas.sim.pipelines import pipeline_preset

    with _friendly():
        pipe = pipeline_preset(pipeline)
        cl = cluster_preset(cluster)
        with _progress(progress) as bar:
            res = sweep_mod.sweep(
                pipe, cl, _floats(cvs, "--cvs"), _floats(loads, "--loads"), policies.split(","),
                seed=seed, duration_s=duration, slo_ms=slo_ms, placement=placement,
                out_dir=out, progress=bar, max_visits=max_visits,
            )  # fmt: skip
        render(res.table, table_console())
        err.print(f"wrote {res.csv_path} and {res.figure_path}")


def register(app: typer.Typer) -> None:
    """Add ``simulate`` and ``sweep`` to ``app`` as top-level commands."""
    app.command("simulate")(simulate_cmd)
    app.command("sweep")(sweep_cmd)

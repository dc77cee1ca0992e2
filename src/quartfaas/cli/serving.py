"""Commands that run parts of the system here: ``serve`` (gateway and workers) and
``control`` (the controller alone, against a remote gateway and its Prometheus)."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Annotated, Any

import typer

from quartfaas.cli.common import (
    DEFAULT_GATEWAY,
    ENV,
    GatewayOpt,
    PasswordOpt,
    SpecArg,
    UserOpt,
    basic_auth,
    console,
    friendly,
    load_pipeline,
    run_async,
    setup_logging,
)


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
    setup_logging(verbose)
    with friendly():
        pipeline = load_pipeline(spec)
        from quartfaas.dataplane.runtime import EmbeddedRuntime

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

        run_async(main)


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
    setup_logging(verbose)
    with friendly():
        pipeline = load_pipeline(spec)
        from quartfaas.backends.gateway import GatewayBackend
        from quartfaas.clock import MonotonicClock
        from quartfaas.control.loop import ControlLoop, run_live
        from quartfaas.control.registry import make_policy
        from quartfaas.control.sinks import HoldLogger, JsonlDecisionLog
        from quartfaas.metrics.prometheus import PrometheusCollector

        cfg = pipeline.controller
        backend = GatewayBackend(gateway, auth=basic_auth(user, password))
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

        run_async(controller)

"""Commands that run parts of the system here: ``serve`` (gateway and workers) and
``control`` (the controller alone, against a remote gateway and its Prometheus)."""

from __future__ import annotations

import asyncio
import logging
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
    VerboseOpt,
    basic_auth,
    console,
    friendly,
    load_pipeline,
    run_async,
    setup_logging,
)


class ScalingLog:
    """A decision sink: one INFO line per scaling action of ``serve``'s controller, with why."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self.log = logger or logging.getLogger("quartfaas.controller")

    def record(self, snapshot: Any, decision: Any, applied: Any) -> None:
        for d in decision.stages:
            if d.replicas == d.current:
                continue
            self.log.info(
                "scale %s %d -> %d (%s, policy %s): %s",
                d.stage, d.current, d.replicas, "up" if d.replicas > d.current else "down",
                decision.policy, d.reason,
            )  # fmt: skip
        for stage, why in getattr(applied, "errors", {}).items():
            self.log.warning("scaling %s failed: %s", stage, why)


def serve(
    spec: SpecArg,
    host: Annotated[str | None, typer.Option(help="bind address (default: the spec's)")] = None,
    port: Annotated[
        int | None, typer.Option(help="bind port (default: the spec's; 0: any free port)")
    ] = None,
    controller: Annotated[
        bool | None,
        typer.Option(
            "--controller/--no-controller",
            help="run the autoscaler (default: the spec's controller.enabled); with it on, "
            "`quartfaas scale` is a hint it may undo",
        ),
    ] = None,
    decision_log: Annotated[
        Path | None, typer.Option(help="append each controller decision to FILE (JSONL)")
    ] = None,
    verbose: VerboseOpt = False,
    backend: Annotated[
        str, typer.Option(help="local (worker processes here) or ray (actors on a Ray cluster)")
    ] = "local",
    address: Annotated[
        str | None,
        typer.Option(help="--backend ray: the cluster to attach to (default: start one here)"),
    ] = None,
) -> None:
    """Serve a pipeline: gateway + stage workers on this machine, until Ctrl-C."""
    setup_logging(verbose)
    with friendly():
        pipeline = load_pipeline(spec)
        if backend == "ray":
            serve_on_ray(pipeline, host, port, controller, address, decision_log)
            return
        if backend != "local" or address is not None:
            raise typer.BadParameter("--backend is local or ray; --address needs --backend ray")
        from quartfaas.runtime import EmbeddedRuntime

        async def main() -> None:
            rt = EmbeddedRuntime(pipeline, host=host, port=port, controller=controller,
                                 environ=ENV, decision_log=decision_log)  # fmt: skip

            def listening(url: str) -> None:
                console.print(
                    f"listening on {url}; starting replicas (/readyz: 200 when ready)",
                    highlight=False,
                )

            try:
                await rt.start(on_listening=listening)
            except OSError:  # the port is taken: nothing may stay behind
                await rt.stop()
                raise
            if rt.loop is not None:
                rt.loop.sinks.append(ScalingLog())
                rt.gateway.status.scale_note = (
                    "the controller is on: it may undo this on its next decisions "
                    "(serve --no-controller to scale by hand)"
                )
            console.print(
                f"[green]ready: serving[/green] {pipeline.name} at {rt.url} "
                f"(functions: {', '.join(rt.gateway.function_names())}); Ctrl-C stops",
                highlight=False,
            )
            if rt.controller_enabled:
                cfg = pipeline.controller
                console.print(
                    f"controller on (policy {cfg.policy}, every {cfg.interval_s:g} s): it logs "
                    "each scaling action with its reason; `quartfaas scale` is a hint it may "
                    "undo (--no-controller to scale by hand)",
                    highlight=False,
                )
            else:
                console.print("controller off: replicas change only by `quartfaas scale`")
            console.print(rt.cpu.report.describe(), highlight=False)
            await rt.serve_forever()

        run_async(main)


def serve_on_ray(
    pipeline: Any,
    host: str | None,
    port: int | None,
    controller: bool | None,
    address: str | None,
    decision_log: Path | None = None,
) -> None:
    """``serve --backend ray``: the same gateway and controller, replicas as Ray actors."""
    from quartfaas.backends.ray.runtime import RayRuntime, connect

    async def main() -> None:
        conn, accel = connect(pipeline, address)
        try:
            rt = RayRuntime(pipeline, host=host, port=port, controller=controller, environ=ENV,
                            decision_log=decision_log, accelerator_resource=accel,
                            connection=conn)  # fmt: skip
        except BaseException:
            conn.close()
            raise
        await rt.start()  # stops (and closes the connection) if it fails
        console.print(
            f"[green]serving[/green] {pipeline.name} at {rt.url} on {conn.describe()} "
            f"(functions: {', '.join(rt.gateway.function_names())}); Ctrl-C stops"
        )
        await rt.serve_forever()

    run_async(main)


def control(
    spec: SpecArg,
    gateway: GatewayOpt = DEFAULT_GATEWAY,
    prometheus: Annotated[
        str, typer.Option(help="Prometheus base URL (it scrapes the gateway)")
    ] = "http://127.0.0.1:9090",
    decision_log: Annotated[
        Path | None, typer.Option(help="append each decision to FILE (JSONL)")
    ] = None,
    user: UserOpt = "admin",
    password: PasswordOpt = None,
    verbose: VerboseOpt = False,
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
        from quartfaas.control.warm import warm_up
        from quartfaas.metrics.prometheus import PrometheusCollector

        cfg = pipeline.controller
        backend = GatewayBackend(gateway, auth=basic_auth(user, password))
        sinks: list[Any] = [HoldLogger(), ScalingLog()]
        if decision_log is not None:
            sinks.append(JsonlDecisionLog(decision_log))
        policy = make_policy(cfg.policy, cfg)
        # Compile (or load) the policy's kernels now, so the first real tick is on time
        # (control/warm.py).
        spent = warm_up(policy)
        loop = ControlLoop(policy, backend, sinks)
        collector = PrometheusCollector(prometheus, pipeline)

        async def controller() -> None:
            stop = asyncio.Event()
            ev = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                ev.add_signal_handler(sig, stop.set)
            console.print(
                f"controlling {pipeline.name} at {gateway} from {prometheus} "
                f"(policy {cfg.policy}, warmed up in {spent:.2f} s)"
            )
            try:
                await run_live(loop, collector.collect, MonotonicClock(), cfg.interval_s, stop)
            finally:
                await collector.aclose()
                backend.close()

        run_async(controller)

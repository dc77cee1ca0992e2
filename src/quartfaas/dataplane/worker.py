"""The stage worker: one replica of one stage, an HTTP server on loopback.

Endpoints (the same worker later runs as a Kubernetes pod):

- ``POST /invoke``: a tensor frame in (``dataplane/framing.py``), a frame out; the
  compute time is returned in the ``X-Quartfaas-Service-Ms`` header. 400 for bad input.
- ``GET /ready`` (alias ``/loaded``, as the prototype's probe): 200 once the weights are
  loaded and one warm-up forward pass ran, else 503.
- ``GET /healthz``: 200 while the process serves.
- ``GET /metrics``: Prometheus exposition of this worker's own registry.
- ``POST /control/threads``: ``{"threads": n}`` changes intra-op threads in place
  (the CPU compensator's lever where cgroups are not writable).

Started cold by ``python -m quartfaas.dataplane.worker`` (``dataplane/launch.py``) or forked
from a stage template (``dataplane/forkserver.py``); both end in ``serve``. The parent
learns the port and readiness from JSON lines on an event fd (``{"event": "listening",
"port": N}``, ``{"event": "ready"}``); a *lifeline* fd whose other end the gateway holds
makes the worker exit when the gateway dies, so no orphan processes remain.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from quartfaas.dataplane.runners import StageRunner, SyntheticRunner, TorchRunner
from quartfaas.errors import FramingError, ModelInputError, QuartfaasError
from quartfaas.spec import PipelineSpec, parse_spec

log = logging.getLogger("quartfaas.worker")

SERVICE_HEADER = "X-Quartfaas-Service-Ms"
_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class WorkerState:
    """What one worker process serves, and its own metrics."""

    def __init__(self, stage: str, replica_id: str, max_concurrency: int) -> None:
        self.stage = stage
        self.replica_id = replica_id
        self.runner: StageRunner | None = None
        self.ready = asyncio.Event()
        self.inflight = 0
        self.limit = asyncio.Semaphore(max_concurrency)
        self.registry = CollectorRegistry()
        labels = {"stage": stage, "replica": replica_id}
        self.m_service = Histogram(
            "quartfaas_worker_service_seconds", "Compute time per request", list(labels),
            registry=self.registry, buckets=_BUCKETS,
        ).labels(**labels)  # fmt: skip
        self.m_requests = Counter(
            "quartfaas_worker_requests", "Requests by status", [*labels, "code"],
            registry=self.registry,
        )  # fmt: skip
        self.m_inflight = Gauge(
            "quartfaas_worker_inflight", "Requests being computed", list(labels),
            registry=self.registry,
        ).labels(**labels)  # fmt: skip
        self.m_threads = Gauge(
            "quartfaas_worker_threads", "Intra-op threads", list(labels), registry=self.registry
        ).labels(**labels)
        self.labels = labels

    def count(self, code: int) -> None:
        self.m_requests.labels(**self.labels, code=str(code)).inc()


def _json_error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def make_app(state: WorkerState) -> web.Application:
    async def invoke(request: web.Request) -> web.StreamResponse:
        if state.runner is None or not state.ready.is_set():
            state.count(503)
            return _json_error(503, f"replica {state.replica_id} of {state.stage} is not ready")
        body = await request.read()
        async with state.limit:
            state.inflight += 1
            state.m_inflight.inc()
            try:
                out, service_s = await state.runner(body)
            except (FramingError, ModelInputError) as exc:
                state.count(400)
                return _json_error(400, f"stage {state.stage}: {exc}")
            except Exception as exc:
                log.exception("stage %s failed", state.stage)
                state.count(500)
                return _json_error(500, f"stage {state.stage} failed: {type(exc).__name__}: {exc}")
            finally:
                state.inflight -= 1
                state.m_inflight.dec()
        state.m_service.observe(service_s)
        state.count(200)
        return web.Response(
            body=out,
            content_type="application/octet-stream",
            headers={SERVICE_HEADER: f"{service_s * 1000.0:.3f}"},
        )

    async def ready(_: web.Request) -> web.Response:
        if state.ready.is_set():
            return web.json_response({"result": True, "stage": state.stage})
        return web.json_response({"result": False, "stage": state.stage}, status=503)

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(state.registry), content_type="text/plain")

    async def threads(request: web.Request) -> web.Response:
        try:
            data = await request.json()
            n = int(data["threads"])
            if n < 1:
                raise ValueError
        except (ValueError, KeyError, TypeError, json.JSONDecodeError):
            return _json_error(400, 'expected JSON {"threads": <int >= 1>}')
        if state.runner is None:
            return _json_error(503, "not loaded yet")
        previous = state.runner.set_threads(n)
        state.m_threads.set(n)
        return web.json_response({"threads": n, "previous": previous})

    app = web.Application(client_max_size=2**31)
    app.router.add_post("/invoke", invoke)
    app.router.add_get("/ready", ready)
    app.router.add_get("/loaded", ready)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/control/threads", threads)
    return app


def emit(event_fd: int | None, **event: Any) -> None:
    """Tell the parent something (one JSON line). Silently gone if the parent is."""
    if event_fd is None:
        return
    with contextlib.suppress(OSError):
        os.write(event_fd, (json.dumps(event) + "\n").encode())


def build_runner(
    spec: PipelineSpec, index: int, *, weights_mode: str = "mmap", verify: bool = True
) -> StageRunner:
    """Load a stage (weights + one warm-up pass) into a runner."""
    if spec.model.kind == "synthetic":
        return SyntheticRunner(spec, index)
    import torch

    from quartfaas.models import build_stage

    threads = spec.stages[index].torch_threads
    torch.set_num_threads(threads)
    model = build_stage(spec, index, weights=weights_mode, verify=verify)  # type: ignore[arg-type]
    runner = TorchRunner(model, spec, index, threads)
    runner.warmup()
    return runner


async def serve(
    state: WorkerState,
    sock: socket.socket,
    *,
    event_fd: int | None = None,
    lifeline_fd: int | None = None,
    load: Any = None,
) -> None:
    """Serve on ``sock`` until SIGTERM/SIGINT or the lifeline closes.

    ``load`` (optional) is a blocking callable returning the runner; it runs in a thread
    after the server is listening, so /ready answers 503 while weights load.
    """
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if lifeline_fd is not None:

        def on_lifeline() -> None:  # readable means EOF: the gateway is gone
            loop.remove_reader(lifeline_fd)
            stop.set()

        loop.add_reader(lifeline_fd, on_lifeline)

    app_runner = web.AppRunner(make_app(state), access_log=None, handle_signals=False)
    await app_runner.setup()
    await web.SockSite(app_runner, sock, shutdown_timeout=5.0).start()
    emit(event_fd, event="listening", port=sock.getsockname()[1], pid=os.getpid())
    try:
        if state.runner is None and load is not None:
            t0 = time.perf_counter()
            try:
                state.runner = await asyncio.to_thread(load)
            except QuartfaasError as exc:
                emit(event_fd, event="failed", message=str(exc))
                raise
            emit(event_fd, event="loaded", seconds=time.perf_counter() - t0)
        if state.runner is not None:
            state.m_threads.set(state.runner.threads)
            state.ready.set()
            emit(event_fd, event="ready", pid=os.getpid())
        await stop.wait()
    finally:
        await app_runner.cleanup()
        if state.runner is not None:
            state.runner.close()


def bind_loopback(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(512)
    sock.setblocking(False)
    return sock


def _install_loop_policy() -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="quartfaas stage worker (one replica)")
    parser.add_argument("--spec-json", required=True, type=Path, help="resolved spec, as JSON")
    parser.add_argument("--stage", required=True, help="stage name")
    parser.add_argument("--replica-id", default=None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--event-fd", type=int, default=None)
    parser.add_argument("--lifeline-fd", type=int, default=None)
    parser.add_argument("--weights-mode", choices=["mmap", "copy"], default="mmap")
    parser.add_argument("--no-verify", action="store_true", help="skip the weights checksum")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s worker %(message)s"
    )
    spec = parse_spec(json.loads(args.spec_json.read_text()), source=str(args.spec_json))
    index = spec.stage_index(args.stage)
    stage = spec.stages[index]
    state = WorkerState(stage.name, args.replica_id or f"{stage.name}-{os.getpid()}",
                        stage.max_concurrency)  # fmt: skip
    sock = bind_loopback(args.host, args.port)

    def load() -> StageRunner:
        return build_runner(spec, index, weights_mode=args.weights_mode, verify=not args.no_verify)

    _install_loop_policy()
    try:
        asyncio.run(serve(state, sock, event_fd=args.event_fd, lifeline_fd=args.lifeline_fd,
                          load=load))  # fmt: skip
    except QuartfaasError as exc:
        print(f"worker for stage {stage.name} failed: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())

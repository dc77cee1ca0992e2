"""``Gateway``: builds the gateway's parts (package docstring) and wires them to routes.

It owns the stage pools (``replicas``) and the metrics, and is what the runtime, the
in-process collector (``metrics.collector.GatewayView``) and the CLI hold on to. The
backend is attached after construction (``gateway.backend = ...``); the local backend's
replica events go to ``gateway.replicas``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from aiohttp import web
from prometheus_client import generate_latest

from quartfaas.clock import Clock, MonotonicClock
from quartfaas.control.backend import Backend
from quartfaas.dataplane.dispatch import StagePool
from quartfaas.dataplane.gateway.auth import BasicAuth
from quartfaas.dataplane.gateway.inputs import InputEncoder
from quartfaas.dataplane.gateway.pipeline import Pipeline
from quartfaas.dataplane.gateway.replicas import StageReplicas
from quartfaas.dataplane.gateway.routes import Handlers, function_names, make_app
from quartfaas.dataplane.gateway.status import StatusApi
from quartfaas.metrics.gateway_metrics import GatewayMetrics, StageGauges
from quartfaas.spec import PipelineSpec


class Gateway:
    """Routes requests to stage replicas; owns the stage pools and the metrics."""

    def __init__(
        self,
        spec: PipelineSpec,
        *,
        clock: Clock | None = None,
        environ: Mapping[str, str] | None = None,
    ) -> None:
        self.spec = spec
        self.clock = clock or MonotonicClock()
        self.metrics = GatewayMetrics(
            spec.name,
            [s.name for s in spec.stages],
            window_s=spec.controller.window_s,
            now=self.clock.now(),
            read_gauges=self.gauges,
        )
        self.replicas = StageReplicas(spec, self.metrics)
        self.pools: dict[str, StagePool] = self.replicas.pools
        self.order: list[StagePool] = self.replicas.order
        self.auth = BasicAuth.from_spec(spec, environ)
        self.inputs = InputEncoder(spec)
        self.pipeline = Pipeline(spec, self.clock, self.replicas, self.metrics, self.inputs)
        self.status = StatusApi(spec, self.replicas, self.metrics)

    @property
    def backend(self) -> Backend | None:
        return self.replicas.backend

    @backend.setter
    def backend(self, backend: Backend | None) -> None:
        self.replicas.backend = backend

    @property
    def on_failed_replica(self) -> Callable[[str, str], None] | None:
        """Told when a replica fails a request (the runtime kills it if it lives on)."""
        return self.replicas.on_failed_replica

    @on_failed_replica.setter
    def on_failed_replica(self, callback: Callable[[str, str], None] | None) -> None:
        self.replicas.on_failed_replica = callback

    def gauges(self) -> dict[str, StageGauges]:
        return self.replicas.gauges()

    def function_names(self) -> list[str]:
        return function_names(self.spec)

    def app(self) -> web.Application:
        handlers = Handlers(
            function=self.pipeline.handle_function,
            functions=self.status.handle_functions,
            function_status=self.status.handle_function_status,
            scale=self.status.handle_scale,
            metrics=self.handle_metrics,
        )
        return make_app(handlers, max_body_bytes=self.spec.gateway.max_body_bytes, auth=self.auth)

    async def handle_metrics(self, _: web.Request) -> web.Response:
        self.metrics.set_now(self.clock.now())
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")

    async def close(self) -> None:
        self.inputs.close()
        await self.replicas.close()

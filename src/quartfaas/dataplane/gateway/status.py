"""The OpenFaaS status and scale API (``/system/...``).

Routes: ``GET /system/functions``, ``GET /system/function/{name}``,
``POST /system/scale-function/{name}``.

Each stage is an OpenFaaS function (name, image, replicas, availableReplicas,
invocationCount, labels incl. ``com.openfaas.scale.min/max``); the pipeline is listed
as a function too, with the minimum over its stages. Scaling goes through the attached
backend (``control.backend.reconcile``) and answers 202 with what it started and stops.
Auth for these routes is applied by the route table (``routes.py``).
"""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from quartfaas import __version__
from quartfaas.control.backend import ReplicaState, reconcile
from quartfaas.dataplane.gateway.inputs import parse_json, read_body
from quartfaas.dataplane.gateway.replicas import StageReplicas
from quartfaas.dataplane.gateway.routes import function_names, unknown_function
from quartfaas.errors import BadRequest, UpstreamFailed
from quartfaas.metrics.gateway_metrics import GatewayMetrics
from quartfaas.spec import PipelineSpec

NAMESPACE = "quartfaas"


class StatusApi:
    """Function status from the pools, the backend and the metrics; scaling via the backend."""

    def __init__(
        self, spec: PipelineSpec, replicas: StageReplicas, metrics: GatewayMetrics
    ) -> None:
        self.spec = spec
        self.replicas = replicas
        self.pools = replicas.pools
        self.metrics = metrics
        self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def function_status(self, name: str) -> dict[str, Any]:
        if name == self.spec.name:
            per_stage = [self.function_status(s) for s in self.pools]
            return {
                "name": name,
                "image": f"quartfaas/pipeline:{__version__}",
                "namespace": NAMESPACE,
                "invocationCount": self.metrics.e2e.invocations,
                "replicas": min(s["replicas"] for s in per_stage),
                "availableReplicas": min(s["availableReplicas"] for s in per_stage),
                "envProcess": "",
                "labels": {
                    "quartfaas.kind": "pipeline",
                    "quartfaas.stages": ",".join(self.pools),
                    "com.openfaas.scale.min": str(min(s.min_replicas for s in self.spec.stages)),
                    "com.openfaas.scale.max": str(min(s.max_replicas for s in self.spec.stages)),
                },
                "annotations": {},
                "createdAt": self.created_at,
            }
        if name not in self.pools:
            raise unknown_function(self.spec, name)
        idx = self.spec.stage_index(name)
        stage = self.spec.stages[idx]
        reps = self.replicas.list(name)
        live = [r for r in reps if r.state in (ReplicaState.STARTING, ReplicaState.READY)]
        return {
            "name": name,
            "image": stage.image or f"quartfaas/{self.spec.model.kind}-stage:{__version__}",
            "namespace": NAMESPACE,
            "invocationCount": self.metrics.stages[name].invocations,
            "replicas": len(live),
            "availableReplicas": self.pools[name].ready_replicas,
            "envProcess": "",
            "labels": {
                **stage.labels,
                "quartfaas.kind": "stage",
                "quartfaas.pipeline": self.spec.name,
                "quartfaas.stage.index": str(idx),
                "com.openfaas.scale.min": str(stage.min_replicas),
                "com.openfaas.scale.max": str(stage.max_replicas),
            },
            "annotations": {},
            "createdAt": self.created_at,
        }

    async def handle_functions(self, _: web.Request) -> web.Response:
        return web.json_response([self.function_status(n) for n in function_names(self.spec)])

    async def handle_function_status(self, request: web.Request) -> web.Response:
        return web.json_response(self.function_status(request.match_info["name"]))

    async def handle_scale(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name == self.spec.name:
            raise BadRequest(
                f"{name!r} is the pipeline; scale its stages one by one: {list(self.pools)}"
            )
        if name not in self.pools:
            raise unknown_function(self.spec, name)
        data = parse_json(await read_body(request, self.spec.gateway.max_body_bytes))
        if not isinstance(data, dict):
            raise BadRequest('expected {"serviceName": "<name>", "replicas": <int>}')
        service = data.get("serviceName", name)
        if service != name:
            raise BadRequest(f"serviceName {service!r} does not match the path's function {name!r}")
        n = data.get("replicas")
        if not isinstance(n, int) or isinstance(n, bool):
            raise BadRequest(f'"replicas" must be an integer, got {n!r}')
        stage = self.spec.stages[self.spec.stage_index(name)]
        if not stage.min_replicas <= n <= stage.max_replicas:
            raise BadRequest(
                f"replicas {n} is outside [{stage.min_replicas}, {stage.max_replicas}] "
                f"(com.openfaas.scale.min/max of {name})"
            )
        backend = self.replicas.backend
        if backend is None:
            raise UpstreamFailed("no backend is attached to this gateway")
        plan = reconcile(backend, name, n)
        return web.json_response(
            {"serviceName": name, "replicas": n, "started": plan.start, "stopping": len(plan.stop)},
            status=202,
        )

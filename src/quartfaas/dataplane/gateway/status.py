"""The OpenFaaS status and scale API (``/system/...``).

Routes: ``GET /system/functions``, ``GET /system/function/{name}`` (both take
``?namespace=``; another namespace is a 400, as faas-netes), ``GET /system/info``,
``GET /system/namespaces``, ``POST /system/scale-function/{name}``.

Each stage is an OpenFaaS function (name, image, replicas, availableReplicas,
invocationCount, labels incl. ``com.openfaas.scale.min/max``); the pipeline is listed
as a function too, with the minimum over its stages. ``replicas`` is the desired count
(starting and ready), which ``gateway_service_count`` exports; ``invocationCount`` is
the calls from outside (``gateway_function_invocation_total`` summed over codes).
Scaling goes through the attached backend (``control.backend.reconcile``) and answers
202: a stage to any count within its bounds (0 where ``min_replicas: 0``), the pipeline
by scaling its stages in proportion (``dataplane/openfaas_scale.py``), or 400 naming the
bound that forbids it. Auth for these routes is applied by the route table
(``routes.py``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from quartfaas import __version__
from quartfaas.control.backend import ReplicaState, reconcile
from quartfaas.dataplane.gateway.inputs import parse_json, read_body
from quartfaas.dataplane.gateway.replicas import StageReplicas
from quartfaas.dataplane.gateway.routes import function_names, unknown_function
from quartfaas.dataplane.openfaas import Namespaces, system_info
from quartfaas.dataplane.openfaas_scale import (
    StageBounds,
    parse_scale_request,
    pipeline_targets,
    stage_target,
)
from quartfaas.errors import UpstreamFailed
from quartfaas.spec import PipelineSpec


class StatusApi:
    """Function status from the pools, the backend and the metrics; scaling via the backend."""

    def __init__(
        self,
        spec: PipelineSpec,
        replicas: StageReplicas,
        namespaces: Namespaces,
        invocation_count: Callable[[str], int],
        *,
        orchestration: str = "quartfaas-embedded",
    ) -> None:
        self.spec = spec
        self.replicas = replicas
        self.pools = replicas.pools
        self.namespaces = namespaces
        self.invocation_count = invocation_count
        self.orchestration = orchestration
        #: Said with every scale answer, e.g. that a controller may undo it (``serve``).
        self.scale_note = ""
        self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())

    def desired_replicas(self) -> dict[str, int]:
        """``replicas`` of every function (what ``gateway_service_count`` exports)."""
        stages = {name: self._live(name) for name in self.pools}
        return {self.spec.name: min(stages.values(), default=0), **stages}

    def _live(self, name: str) -> int:
        live = (ReplicaState.STARTING, ReplicaState.READY)
        return sum(1 for r in self.replicas.list(name) if r.state in live)

    def function_status(self, name: str) -> dict[str, Any]:
        if name == self.spec.name:
            per_stage = [self.function_status(s) for s in self.pools]
            return {
                "name": name,
                "image": f"quartfaas/pipeline:{__version__}",
                "namespace": self.namespaces.namespace,
                "invocationCount": self.invocation_count(name),
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
        return {
            "name": name,
            "image": stage.image or f"quartfaas/{self.spec.model.kind}-stage:{__version__}",
            "namespace": self.namespaces.namespace,
            "invocationCount": self.invocation_count(name),
            "replicas": self._live(name),
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

    async def handle_functions(self, request: web.Request) -> web.Response:
        self.namespaces.check(request.query.get("namespace"))
        return web.json_response([self.function_status(n) for n in function_names(self.spec)])

    async def handle_function_status(self, request: web.Request) -> web.Response:
        self.namespaces.check(request.query.get("namespace"))
        return web.json_response(self.function_status(request.match_info["name"]))

    async def handle_info(self, _: web.Request) -> web.Response:
        return web.json_response(system_info(orchestration=self.orchestration))

    async def handle_namespaces(self, _: web.Request) -> web.Response:
        return web.json_response(self.namespaces.listed())

    async def handle_scale(self, request: web.Request) -> web.Response:
        name, _ = self.namespaces.split(request.match_info["name"], function_names(self.spec))
        if name not in function_names(self.spec):
            raise unknown_function(self.spec, name)
        body = parse_json(await read_body(request, self.spec.gateway.max_body_bytes))
        req = parse_scale_request(body, name)
        self.namespaces.check(req.namespace)
        if name == self.spec.name:
            bounds = [
                StageBounds(s.name, s.min_replicas, s.max_replicas, self._live(s.name))
                for s in self.spec.stages
            ]
            targets = pipeline_targets(bounds, req.replicas)
        else:
            stage = self.spec.stages[self.spec.stage_index(name)]
            bound = StageBounds(name, stage.min_replicas, stage.max_replicas, self._live(name))
            targets = {name: stage_target(bound, req.replicas)}
        backend = self.replicas.backend
        if backend is None:
            raise UpstreamFailed("no backend is attached to this gateway")
        started, stopping = 0, 0
        for stage_name, n in targets.items():
            plan = reconcile(backend, stage_name, n)
            started += plan.start
            stopping += len(plan.stop)
        return web.json_response(
            {
                "serviceName": name,
                "namespace": self.namespaces.namespace,
                "replicas": req.replicas,
                "stages": targets,
                "started": started,
                "stopping": stopping,
                **({"note": self.scale_note} if self.scale_note else {}),
            },
            status=202,
        )

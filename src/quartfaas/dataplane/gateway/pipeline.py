"""Pipeline orchestration: request -> stage 0 -> ... -> last stage -> response.

``Pipeline.run`` takes and releases a slot on one replica of each stage in turn
(``dataplane/dispatch.py``), never holding an early stage while later ones run, and
records each stage's arrival, latency, service and queueing time. ``call_stage`` is one
hop: a replica that fails at the connection level is taken out of rotation and the
request is retried once on another replica. ``POST /function/{name}`` lands here: the
pipeline by its name (JSON in, a JSON summary of the last stage's output out), or one
stage by its name (a tensor frame in and out).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import numpy as np
from aiohttp import web

from quartfaas.clock import Clock
from quartfaas.dataplane import framing
from quartfaas.dataplane.dispatch import StagePool
from quartfaas.dataplane.gateway.inputs import InputEncoder, parse_json, read_body
from quartfaas.dataplane.gateway.replicas import StageReplicas
from quartfaas.dataplane.gateway.routes import unknown_function
from quartfaas.dataplane.httpclient import WorkerConnectionError
from quartfaas.dataplane.worker import SERVICE_HEADER
from quartfaas.errors import (
    BadRequest,
    GatewayError,
    QuartfaasError,
    StageTimeout,
    UpstreamFailed,
)
from quartfaas.metrics.gateway_metrics import GatewayMetrics
from quartfaas.spec import PipelineSpec

_FRAME_HEADERS = {"Content-Type": framing.CONTENT_TYPE}
SERVICE_HEADER_LC = SERVICE_HEADER.lower()


class Pipeline:
    """Runs requests through the stages' pools; serves ``POST /function/{name}``."""

    def __init__(
        self,
        spec: PipelineSpec,
        clock: Clock,
        replicas: StageReplicas,
        metrics: GatewayMetrics,
        inputs: InputEncoder,
    ) -> None:
        self.spec = spec
        self.clock = clock
        self.pools = replicas.pools
        self.order = replicas.order
        self.metrics = metrics
        self.inputs = inputs
        self.timeouts = {s.name: spec.stage_timeout_s(i) for i, s in enumerate(spec.stages)}
        self._ids = itertools.count(1)

    async def call_stage(self, pool: StagePool, body: bytes) -> tuple[bytes, float, float]:
        """One stage: slot -> POST /invoke -> release. Returns (frame, service_s, queue_s).

        A replica that fails at the connection level (crashed) is taken out of rotation
        and the request is retried once on another replica of the stage.
        """
        loop = asyncio.get_running_loop()
        timeout_s = self.timeouts[pool.name]
        start = loop.time()
        deadline = start + timeout_s
        retried = False
        while True:
            ep = await pool.acquire(deadline)
            queued = loop.time() - start
            try:
                status, headers, data = await ep.client.post(body, _FRAME_HEADERS, deadline)
            except TimeoutError:
                pool.release(ep)
                raise StageTimeout(
                    f"stage {pool.name} did not answer within its timeout of {timeout_s:.2f} s"
                ) from None
            except WorkerConnectionError as exc:
                pool.release(ep)
                pool.mark_failed(ep, str(exc))
                if retried or not pool.has_prospect():
                    raise UpstreamFailed(
                        f"stage {pool.name}: replica {ep.replica_id} failed ({exc})"
                        + (" and the retry failed too" if retried else " and no other replica")
                    ) from None
                retried = True
                continue
            service_ms = headers.get(SERVICE_HEADER_LC)
            pool.release(ep)
            if status == 200:
                return data, float(service_ms or 0.0) / 1000.0, queued
            message = _error_text(data)
            if status == 503 and not retried:  # not ready (should not be routed): retry once
                retried = True
                continue
            if status in (400, 413, 422):
                raise BadRequest(message)
            raise UpstreamFailed(
                f"stage {pool.name}: replica {ep.replica_id} answered {status}: {message}"
            )

    async def run(self, body: bytes) -> tuple[bytes, list[dict[str, Any]]]:
        timings: list[dict[str, Any]] = []
        now = self.clock.now
        for pool in self.order:
            sm = self.metrics.stages[pool.name]
            t_arr = now()
            sm.arrival(t_arr)
            try:
                body, service_s, queue_s = await self.call_stage(pool, body)
            except GatewayError as exc:
                sm.failed(exc.status, now() - t_arr)
                raise
            t_done = now()
            latency = t_done - t_arr
            sm.done(t_done, latency, service_s, queue_s)
            timings.append(
                {
                    "stage": pool.name,
                    "queue_ms": round(queue_s * 1000.0, 3),
                    "service_ms": round(service_s * 1000.0, 3),
                    "hop_ms": round(max(0.0, latency - queue_s - service_s) * 1000.0, 3),
                }
            )
        return body, timings

    # -- handlers -------------------------------------------------------------------

    async def handle_function(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == self.spec.name:
            return await self._invoke_pipeline(request)
        if name in self.pools:
            return await self._invoke_stage(request, self.pools[name])
        raise unknown_function(self.spec, name)

    async def _invoke_pipeline(self, request: web.Request) -> web.StreamResponse:
        m = self.metrics.e2e
        t0 = self.clock.now()
        m.arrival(t0)
        rid = request.headers.get("X-Call-Id") or f"{self.spec.name}-{next(self._ids)}"
        try:
            raw = await read_body(request, self.spec.gateway.max_body_bytes)
            # No body (`faas-cli invoke -m GET`): the "expected {"inputs": ...}" 400 (#16).
            body, timings = await self.run(self.inputs.encode(parse_json(raw) if raw else None))
            result = summarise(body)
        except web.HTTPRequestEntityTooLarge:
            m.failed(413, self.clock.now() - t0)
            raise
        except GatewayError as exc:
            m.failed(exc.status, self.clock.now() - t0)
            raise
        total = self.clock.now() - t0
        m.done(self.clock.now(), total)
        return web.json_response(
            {
                "pipeline": self.spec.name,
                "request_id": rid,
                "output": result,
                "timings_ms": {"total": round(total * 1000.0, 3), "stages": timings},
            },
            headers={"X-Call-Id": rid, "X-Duration-Seconds": f"{total:.6f}"},
        )

    async def _invoke_stage(self, request: web.Request, pool: StagePool) -> web.StreamResponse:
        sm = self.metrics.stages[pool.name]
        t0 = self.clock.now()
        sm.arrival(t0)
        try:
            raw = await read_body(request, self.spec.gateway.max_body_bytes)
            if request.content_type == "application/json":
                if pool is not self.order[0]:
                    raise BadRequest(
                        f"stage {pool.name} takes a tensor frame ({framing.CONTENT_TYPE}); "
                        "only the first stage accepts JSON inputs"
                    )
                raw = self.inputs.encode(parse_json(raw))
            else:
                framing.parse_header(raw, self.spec.gateway.max_body_bytes)
            out, service_s, _ = await self.call_stage(pool, raw)
        except QuartfaasError as exc:
            err = exc if isinstance(exc, GatewayError) else BadRequest(str(exc))
            sm.failed(err.status, self.clock.now() - t0)
            raise err from None
        t1 = self.clock.now()
        sm.done(t1, t1 - t0, service_s)
        return web.Response(
            body=out,
            content_type=framing.CONTENT_TYPE,
            headers={SERVICE_HEADER: f"{service_s * 1000.0:.3f}"},
        )


def summarise(body: bytes) -> dict[str, Any]:
    """The last stage's output as JSON: dtype and shape per tensor, norms and a head."""
    out: dict[str, Any] = {}
    try:
        tensors = framing.decode_numpy(body)
    except QuartfaasError as exc:
        raise UpstreamFailed(f"the last stage returned an undecodable frame: {exc}") from None
    for name, arr in tensors.items():
        item: dict[str, Any] = {"dtype": str(arr.dtype), "shape": list(arr.shape)}
        if arr.ndim == 2 and arr.dtype.kind == "f":
            item["norm"] = [round(float(x), 6) for x in np.linalg.norm(arr, axis=1)]
            item["head"] = [round(float(x), 6) for x in arr[0, :8]]
        out[name] = item
    return out


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", data[:500].decode(errors="replace")))
    except (ValueError, AttributeError):
        return data[:500].decode(errors="replace")

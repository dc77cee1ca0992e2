"""Pipeline orchestration: request -> stage 0 -> ... -> last stage -> response.

``Pipeline.run`` takes and releases a slot on one replica of each stage in turn
(``dataplane/dispatch.py``), never holding an early stage while later ones run, and
records each stage's arrival, latency, service and queueing time. ``call_stage`` is one
hop: a replica that fails at the connection level is taken out of rotation and the
request is retried once on another replica. ``POST /function/{name}`` lands here: the
pipeline by its name (JSON in, a JSON summary of the last stage's output out), or one
stage by its name (a tensor frame in and out).

A stage's output passes to the next stage as the endpoint client returned it: bytes from
an HTTP worker, or an awaitable of bytes (the Ray backend's object references, which stay
in the object store between stages); only the last one is fetched (``materialise``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
from typing import Any

import numpy as np
from aiohttp import web

from quartfaas.clock import Clock
from quartfaas.dataplane import framing, strict_json
from quartfaas.dataplane.dispatch import StagePool
from quartfaas.dataplane.gateway.admission import Admission
from quartfaas.dataplane.gateway.inputs import InputEncoder, check_frame, read_body
from quartfaas.dataplane.gateway.replicas import StageReplicas
from quartfaas.dataplane.gateway.routes import internal_error, unknown_function
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
        self._body_s = spec.gateway.body_timeout_s
        self.timeouts = {s.name: spec.stage_timeout_s(i) for i, s in enumerate(spec.stages)}
        self._ids = itertools.count(1)
        # Requests being handled; ``idle`` is set when there are none (graceful drain).
        self.active = 0
        self.idle = asyncio.Event()
        self.idle.set()
        self.admission = Admission(spec, self.pools)

    async def call_stage(self, pool: StagePool, body: Any) -> tuple[Any, float, float]:
        """One stage: slot -> POST /invoke -> release. Returns (frame, service_s, queue_s).

        A call that fails with no answer (the replica crashed, or was ejected as an
        outlier while the call was in flight) is retried once on another replica of the
        stage: stages are idempotent, and the retry waits for the replacement if there
        is no other. Each outcome feeds the replica's outlier health.
        """
        loop = asyncio.get_running_loop()
        timeout_s = self.timeouts[pool.name]
        start = loop.time()
        deadline = start + timeout_s
        retried = False
        task = asyncio.current_task()
        while True:
            cold = pool.waiting_for_start()
            ep = await pool.acquire(deadline)
            now = loop.time()
            queued = now - start
            if cold or now >= deadline:  # waited for a replica to start: a full call now
                deadline = max(deadline, now + timeout_s)
            ejected = False
            if task is not None:
                ep.calls.add(task)
            try:
                status, headers, data = await ep.client.post(body, _FRAME_HEADERS, deadline)
            except TimeoutError:
                pool.release(ep)  # not an outlier failure: overload times out healthy ones
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
            except asyncio.CancelledError:
                if task is None or task not in ep.ejected_calls:
                    pool.release(ep)
                    raise
                task.uncancel()  # cancelled by the ejection of ep, not by our caller
                ep.ejected_calls.discard(task)
                pool.release(ep)
                ejected = True
            finally:
                if task is not None:
                    ep.calls.discard(task)
            if ejected:
                if retried:
                    raise UpstreamFailed(
                        f"stage {pool.name}: replica {ep.replica_id} stopped answering "
                        f"({ep.health.reason}) and the retry failed too"
                    )
                retried = True
                continue
            service_ms = headers.get(SERVICE_HEADER_LC)
            pool.release(ep)
            pool.record(ep, status < 500, loop.time(), f"answered {status}")
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
        frame: Any = body
        now = self.clock.now
        for pool in self.order:
            sm = self.metrics.stages[pool.name]
            t_arr = now()
            sm.arrival(t_arr)
            try:
                with self.admission.stage(pool, _nbytes(frame), self.timeouts[pool.name]):
                    frame, service_s, queue_s = await self.call_stage(pool, frame)
            except GatewayError as exc:
                sm.failed(exc.status, now() - t_arr)
                raise
            t_done = now()
            latency = t_done - t_arr
            self.admission.observe(pool.name, latency - queue_s)
            sm.done(t_done, latency, service_s, queue_s)
            timings.append(
                {
                    "stage": pool.name,
                    "queue_ms": round(queue_s * 1000.0, 3),
                    "service_ms": round(service_s * 1000.0, 3),
                    "hop_ms": round(max(0.0, latency - queue_s - service_s) * 1000.0, 3),
                }
            )
        return await materialise(frame), timings

    # -- handlers -------------------------------------------------------------------

    async def handle_function(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        self.active += 1
        self.idle.clear()
        try:
            if name == self.spec.name:
                return await self._invoke_pipeline(request)
            if name in self.pools:
                return await self._invoke_stage(request, self.pools[name])
            raise unknown_function(self.spec, name)
        finally:
            self.active -= 1
            if self.active == 0:
                self.idle.set()

    async def _invoke_pipeline(self, request: web.Request) -> web.StreamResponse:
        m = self.metrics.e2e
        t0 = self.clock.now()
        m.arrival(t0)
        rid = request.headers.get("X-Call-Id") or f"{self.spec.name}-{next(self._ids)}"
        try:
            with self.admission.request(request.content_length):
                raw = await read_body(request, self.spec.gateway.max_body_bytes, self._body_s)
                # No body (`faas-cli invoke -m GET`): the "expected {"inputs": ...}" 400 (#16).
                frame = await self.inputs.encode_body(raw) if raw else self.inputs.encode(None)
                body, timings = await self.run(frame)
            result = summarise(body, self.order[-1].name)
        except web.HTTPRequestEntityTooLarge:
            m.failed(413, self.clock.now() - t0)
            raise
        except GatewayError as exc:
            m.failed(exc.status, self.clock.now() - t0)
            raise
        except Exception as exc:  # a defect: still answered as JSON and counted
            m.failed(500, self.clock.now() - t0)
            raise internal_error(exc) from exc
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
            dumps=strict_json.dumps,
        )

    async def _invoke_stage(self, request: web.Request, pool: StagePool) -> web.StreamResponse:
        sm = self.metrics.stages[pool.name]
        t0 = self.clock.now()
        sm.arrival(t0)
        try:
            with self.admission.request(request.content_length):
                raw = await read_body(request, self.spec.gateway.max_body_bytes, self._body_s)
                if request.content_type == "application/json":
                    if pool is not self.order[0]:
                        raise BadRequest(
                            f"stage {pool.name} takes a tensor frame ({framing.CONTENT_TYPE}); "
                            "only the first stage accepts JSON inputs"
                        )
                    raw = await self.inputs.encode_body(raw)
                else:
                    check_frame(raw, self.spec.gateway.max_body_bytes, self.spec.gateway.max_batch)
                with self.admission.stage(pool, len(raw), self.timeouts[pool.name]):
                    out, service_s, _ = await self.call_stage(pool, raw)
                out = await materialise(out)
        except QuartfaasError as exc:
            err = exc if isinstance(exc, GatewayError) else BadRequest(str(exc))
            sm.failed(err.status, self.clock.now() - t0)
            raise err from None
        except Exception as exc:  # a defect: still answered as JSON and counted
            sm.failed(500, self.clock.now() - t0)
            raise internal_error(exc) from exc
        t1 = self.clock.now()
        sm.done(t1, t1 - t0, service_s)
        return web.Response(
            body=out,
            content_type=framing.CONTENT_TYPE,
            headers={SERVICE_HEADER: f"{service_s * 1000.0:.3f}"},
        )


async def materialise(frame: Any) -> bytes:
    """A stage's output as bytes: as is, or fetched when it is an awaitable reference."""
    if isinstance(frame, bytes | bytearray | memoryview):
        return bytes(frame)
    try:
        return bytes(await frame)
    except Exception as exc:  # the backend's fetch error (e.g. the object's node died)
        raise UpstreamFailed(f"a stage's output could not be fetched: {exc}") from None


def summarise(body: bytes, stage: str = "last") -> dict[str, Any]:
    """The last stage's output as JSON: dtype and shape per tensor, norms and a head.

    NaN or an infinity there (corrupt weights) is a 502 naming where, never bare ``NaN``
    in the reply (``strict_json``)."""
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
    bad = strict_json.nonfinite_paths(out)
    if bad:
        raise UpstreamFailed(
            f"stage {stage}: output has non-finite values (NaN or Infinity) at "
            f"{', '.join(bad)}; its weights may be corrupt"
        )
    return out


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", data[:500].decode(errors="replace")))
    except (ValueError, AttributeError):
        return data[:500].decode(errors="replace")


def _nbytes(frame: Any) -> int:
    """Bytes a frame holds in the gateway (0 for a backend's reference, e.g. a Ray object)."""
    return len(frame) if isinstance(frame, bytes | bytearray | memoryview) else 0

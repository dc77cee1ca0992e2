"""The gateway: an OpenFaaS-compatible REST API in front of a pipeline's stages.

Routes (the subset of the OpenFaaS gateway API that tools expect):

- ``POST /function/{name}``: the pipeline by its name (JSON ``{"inputs": "<text>" |
  ["<text>", ...] | [[token ids]]}`` in, JSON summary with per-stage timings out), or one
  stage by its name (a tensor frame in and out, ``dataplane/framing.py``).
- ``GET /system/functions``, ``GET /system/function/{name}``: OpenFaaS function status
  (name, image, replicas, availableReplicas, invocationCount, labels incl.
  ``com.openfaas.scale.min/max``); the pipeline is listed as a function too.
- ``POST /system/scale-function/{name}``: ``{"serviceName": name, "replicas": N}``.
- ``GET /healthz``, ``GET /metrics``.

The gateway orchestrates the pipeline itself: request -> stage 0 -> ... -> last stage ->
response, taking and releasing a slot on one replica of each stage in turn
(``dataplane/dispatch.py``), never holding an early stage while later ones run.
``/system/*`` can require basic auth. Errors map to HTTP codes through
``errors.http_status`` and always answer JSON ``{"error": ..., "function": ...}``.

It is also the local backend's ``ReplicaListener``: replicas that become ready, fail or
stop change the dispatcher's membership here.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hmac
import itertools
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from aiohttp import web
from prometheus_client import generate_latest

from quartfaas import __version__
from quartfaas.backends.base import Backend, ReplicaInfo, ReplicaState, reconcile
from quartfaas.clock import Clock, MonotonicClock
from quartfaas.dataplane import framing
from quartfaas.dataplane.dispatch import StagePool
from quartfaas.dataplane.httpclient import WorkerConnectionError
from quartfaas.dataplane.worker import SERVICE_HEADER
from quartfaas.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    QuartfaasError,
    SpecError,
    StageTimeout,
    UnknownFunction,
    UpstreamFailed,
    http_status,
)
from quartfaas.metrics.gateway_metrics import GatewayMetrics, StageGauges
from quartfaas.spec import PipelineSpec

log = logging.getLogger("quartfaas.gateway")

NAMESPACE = "quartfaas"
MAX_BATCH = 64
_FRAME_HEADERS = {"Content-Type": framing.CONTENT_TYPE}
SERVICE_HEADER_LC = SERVICE_HEADER.lower()


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
        self.backend: Backend | None = None
        self.pools: dict[str, StagePool] = {}
        self.order: list[StagePool] = []
        for stage in spec.stages:
            pool = StagePool(
                stage.name,
                stage.max_concurrency,
                spec.gateway.max_queue_len,
                spec.gateway.retry_after_s,
                on_demand=self._scale_from_zero,
                on_failed=self._replica_failed,
            )
            self.pools[stage.name] = pool
            self.order.append(pool)
        self.timeouts = {s.name: spec.stage_timeout_s(i) for i, s in enumerate(spec.stages)}
        self._starting: dict[str, set[str]] = {s.name: set() for s in spec.stages}
        self.metrics = GatewayMetrics(
            spec.name,
            [s.name for s in spec.stages],
            window_s=spec.controller.window_s,
            now=self.clock.now(),
            read_gauges=self.gauges,
        )
        self._auth = self._load_auth(environ)
        self._tokenizer: Any = None
        self._contract: Any = None
        self._ids = itertools.count(1)
        self.created_at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        # Set by the runtime: told when a replica fails a request (kill it if it lives on).
        self.on_failed_replica: Callable[[str, str], None] | None = None

    # -- setup ----------------------------------------------------------------------

    def _load_auth(self, environ: Mapping[str, str] | None) -> tuple[str, str] | None:
        auth = self.spec.gateway.auth
        if not auth.enabled:
            return None
        password = (environ or {}).get(auth.password_env)
        if not password:
            raise SpecError(
                f"gateway.auth.enabled is true but the environment variable "
                f"{auth.password_env} (gateway.auth.password_env) is unset or empty"
            )
        return auth.username, password

    def input_contract(self) -> Any:
        """What the first stage accepts (vocabulary, sequence length); torch-free."""
        if self._contract is None:
            from quartfaas.models import input_contract

            self._contract = input_contract(self.spec, 0)
        return self._contract

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from quartfaas.models import tokenizer_for

            self._tokenizer = tokenizer_for(self.spec)
        return self._tokenizer

    async def close(self) -> None:
        for pool in self.pools.values():
            for ep in pool.endpoints.values():
                ep.client.close()

    def app(self) -> web.Application:
        app = web.Application(
            client_max_size=self.spec.gateway.max_body_bytes,
            middlewares=[self._errors_middleware],
        )
        app.router.add_post("/function/{name}", self.handle_function)
        app.router.add_get("/system/functions", self.handle_functions)
        app.router.add_get("/system/function/{name}", self.handle_function_status)
        app.router.add_post("/system/scale-function/{name}", self.handle_scale)
        app.router.add_get("/healthz", self.handle_healthz)
        app.router.add_get("/metrics", self.handle_metrics)
        return app

    # -- ReplicaListener ------------------------------------------------------------

    def _set_starting(self, stage: str) -> None:
        self.pools[stage].starting = len(self._starting[stage])

    def replica_starting(self, info: ReplicaInfo) -> None:
        self._starting[info.stage].add(info.replica_id)
        self._set_starting(info.stage)

    def replica_ready(self, info: ReplicaInfo) -> None:
        self._starting[info.stage].discard(info.replica_id)
        self._set_starting(info.stage)
        pool = self.pools[info.stage]
        pool.last_start_error = ""
        assert info.address is not None
        pool.add(info.replica_id, info.address + "/invoke")
        if info.start_seconds is not None and info.tier is not None:
            hit = info.tier.value in ("fork", "prefork")
            self.metrics.replica_started(info.stage, info.tier.value, info.start_seconds, hit)

    def replica_start_failed(self, info: ReplicaInfo) -> None:
        self._starting[info.stage].discard(info.replica_id)
        self._set_starting(info.stage)
        pool = self.pools[info.stage]
        pool.last_start_error = info.message
        pool.fail_waiters_if_hopeless()

    def replica_gone(self, info: ReplicaInfo) -> None:
        self._starting[info.stage].discard(info.replica_id)
        self._set_starting(info.stage)
        self.pools[info.stage].remove(info.replica_id)

    async def drain_replica(self, info: ReplicaInfo, timeout_s: float) -> bool:
        return await self.pools[info.stage].drain(info.replica_id, timeout_s)

    def _scale_from_zero(self, stage: str) -> None:
        if self.backend is not None and not self._starting[stage]:
            try:
                self.backend.start_replica(stage)
            except QuartfaasError as exc:
                self.pools[stage].last_start_error = str(exc)

    def _replica_failed(self, replica_id: str, why: str) -> None:
        log.warning("replica %s failed a request: %s", replica_id, why)
        if self.on_failed_replica is not None:
            self.on_failed_replica(replica_id, why)

    def gauges(self) -> dict[str, StageGauges]:
        return {
            name: StageGauges(p.queue_len, p.inflight, p.ready_replicas, p.starting)
            for name, p in self.pools.items()
        }

    # -- request path ---------------------------------------------------------------

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

    async def run_pipeline(self, body: bytes) -> tuple[bytes, list[dict[str, Any]]]:
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

    def encode_inputs(self, payload: Any) -> bytes:
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise BadRequest('expected a JSON object {"inputs": "<text>" | [[token ids]]}')
        inputs = payload["inputs"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest('"inputs" must be a non-empty string or list')
        if len(inputs) > MAX_BATCH:
            raise BadRequest(f'"inputs" holds {len(inputs)} items; at most {MAX_BATCH} per request')
        if all(isinstance(x, str) for x in inputs):
            if any(not x.strip() for x in inputs):
                raise BadRequest('"inputs" texts must not be empty')
            try:
                batch = self.tokenizer().encode(inputs)
                ids, mask = batch.input_ids, batch.attention_mask
            except QuartfaasError as exc:
                raise BadRequest(str(exc)) from None
        elif all(isinstance(x, list) for x in inputs):
            ids, mask = self._token_arrays(inputs)
        else:
            raise BadRequest('"inputs" must be a text, a list of texts, or [[token ids]]')
        return framing.encode_numpy({"input_ids": ids, "attention_mask": mask})

    def _token_arrays(self, rows: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise BadRequest(f"token id rows must have equal lengths, got {sorted(lengths)}")
        (length,) = lengths
        contract = self.input_contract()
        max_len = contract.max_seq_len
        if not 1 <= length <= max_len:
            raise BadRequest(f"token id rows have length {length}; allowed 1..{max_len}")
        if not all(isinstance(t, int) and not isinstance(t, bool) for r in rows for t in r):
            raise BadRequest("token ids must be integers")
        ids = np.asarray(rows, dtype=np.int64)
        vocab = contract.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            raise BadRequest(f"token ids must be in [0, {vocab}); got {ids.min()}..{ids.max()}")
        return ids, np.ones_like(ids)

    def summarise(self, body: bytes) -> dict[str, Any]:
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

    # -- handlers -------------------------------------------------------------------

    @web.middleware
    async def _errors_middleware(self, request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPRequestEntityTooLarge:
            limit = self.spec.gateway.max_body_bytes
            return _error(PayloadTooLarge(f"request body exceeds {limit} bytes (max_body_bytes)"),
                          request.match_info.get("name"))  # fmt: skip
        except GatewayError as exc:
            return _error(exc, request.match_info.get("name"))

    async def _read(self, request: web.Request) -> bytes:
        limit = self.spec.gateway.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
        return await request.read()

    async def handle_function(self, request: web.Request) -> web.StreamResponse:
        name = request.match_info["name"]
        if name == self.spec.name:
            return await self._invoke_pipeline(request)
        if name in self.pools:
            return await self._invoke_stage(request, self.pools[name])
        raise self._unknown(name)

    async def _invoke_pipeline(self, request: web.Request) -> web.StreamResponse:
        m = self.metrics.e2e
        t0 = self.clock.now()
        m.arrival(t0)
        rid = request.headers.get("X-Call-Id") or f"{self.spec.name}-{next(self._ids)}"
        try:
            raw = await self._read(request)
            try:
                payload = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise BadRequest(f"body is not valid JSON: {exc}") from None
            body, timings = await self.run_pipeline(self.encode_inputs(payload))
            result = self.summarise(body)
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
            raw = await self._read(request)
            if request.content_type == "application/json":
                if pool is not self.order[0]:
                    raise BadRequest(
                        f"stage {pool.name} takes a tensor frame ({framing.CONTENT_TYPE}); "
                        "only the first stage accepts JSON inputs"
                    )
                raw = self.encode_inputs(_json(raw))
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

    def function_names(self) -> list[str]:
        return [self.spec.name, *self.pools]

    def _unknown(self, name: str) -> UnknownFunction:
        return UnknownFunction(f"function {name!r} not found; functions: {self.function_names()}")

    def _check_auth(self, request: web.Request) -> None:
        if self._auth is None:
            return
        header = request.headers.get("Authorization", "")
        ok = False
        if header.startswith("Basic "):
            try:
                user, _, password = base64.b64decode(header[6:]).decode().partition(":")
                ok = hmac.compare_digest(user, self._auth[0]) and hmac.compare_digest(
                    password, self._auth[1]
                )
            except (binascii.Error, UnicodeDecodeError):
                ok = False
        if not ok:
            raise web.HTTPUnauthorized(
                text=json.dumps({"error": "basic auth required for /system/*"}),
                content_type="application/json",
                headers={"WWW-Authenticate": 'Basic realm="quartfaas"'},
            )

    def _replicas(self, stage: str) -> list[ReplicaInfo]:
        return self.backend.list_replicas(stage) if self.backend is not None else []

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
            raise UnknownFunction(
                f"function {name!r} not found; functions: {self.function_names()}"
            )
        idx = self.spec.stage_index(name)
        stage = self.spec.stages[idx]
        reps = self._replicas(name)
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

    async def handle_functions(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return web.json_response([self.function_status(n) for n in self.function_names()])

    async def handle_function_status(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        return web.json_response(self.function_status(request.match_info["name"]))

    async def handle_scale(self, request: web.Request) -> web.Response:
        self._check_auth(request)
        name = request.match_info["name"]
        if name == self.spec.name:
            raise BadRequest(
                f"{name!r} is the pipeline; scale its stages one by one: {list(self.pools)}"
            )
        if name not in self.pools:
            raise UnknownFunction(
                f"function {name!r} not found; functions: {self.function_names()}"
            )
        data = _json(await self._read(request))
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
        if self.backend is None:
            raise UpstreamFailed("no backend is attached to this gateway")
        plan = reconcile(self.backend, name, n)
        return web.json_response(
            {"serviceName": name, "replicas": n, "started": plan.start, "stopping": len(plan.stop)},
            status=202,
        )

    async def handle_healthz(self, _: web.Request) -> web.Response:
        return web.Response(text="OK")

    async def handle_metrics(self, _: web.Request) -> web.Response:
        self.metrics.set_now(self.clock.now())
        return web.Response(body=generate_latest(self.metrics.registry), content_type="text/plain")


def _json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


def _error_text(data: bytes) -> str:
    try:
        return str(json.loads(data).get("error", data[:500].decode(errors="replace")))
    except (ValueError, AttributeError):
        return data[:500].decode(errors="replace")


def _error(exc: GatewayError, function: str | None) -> web.Response:
    headers = {}
    if exc.retry_after_s is not None:
        headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return web.json_response(
        {"error": exc.message, "function": function, "code": http_status(exc)},
        status=http_status(exc),
        headers=headers,
    )

"""The data plane on Ray: call stage replica actors with tensor frames.

``RayStageClient`` is what the gateway's orchestration will call instead of HTTP
workers. It is a ``ReplicaListener`` (``backends/local.py``): the ``RayBackend`` tells it
which replicas are ready, draining or gone, and it routes each call to the ready replica
of the stage with the fewest calls in flight (as ``dataplane/dispatch.py`` does).

- ``call(stage, frame)``: one stage. ``frame`` is the gateway's safetensors bytes (never
  pickle: the gateway parses user input), sent as a ``uint8`` numpy array
  (``activations.to_object``), or the ``ObjectRef`` a previous stage returned.
  It awaits only the small ``meta`` result and returns ``StageResult(ref, service_s,
  replica_id)``: the output frame stays in the object store, so the next stage on the same
  node reads it in place (a read-only view on shared memory, no copy) and Ray moves it
  when the next stage is elsewhere.
- ``pipeline(frame)``: every stage in order; returns the last frame's bytes and the
  per-stage results.

Faults: a call whose replica dies (``RayActorError``: actor crash or node death) is sent
again to another ready replica of the stage, waiting up to the stage's timeout for one
(the backend starts replacements); only then ``NoReplicas`` (the gateway's 503). Inputs
are kept by the caller (its reference), so a retry needs nothing from the dead replica.
A bad input raises ``ModelInputError`` (400); any other stage failure ``UpstreamFailed``
(502).

``RayEndpointClient`` is the other way in, for the gateway's own dispatcher
(``dataplane/dispatch.py``: queues, slots, metrics): the same ``post(body, headers,
deadline) -> (status, headers, body)`` as ``dataplane/httpclient.EndpointClient``, on one
replica actor. A dead actor raises ``WorkerConnectionError`` (the dispatcher's "crashed
replica": retried elsewhere), the service time comes in the worker's header, and the
body returned is the output frame's ``ObjectRef`` (fetch the last stage's with
``await ref``: a ``uint8`` array; ``bytes(...)`` of it is the frame).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ray.exceptions import ObjectLostError, RayActorError, RayTaskError

from quartfaas.backends.ray.activations import to_object
from quartfaas.control.backend import ReplicaInfo
from quartfaas.dataplane.httpclient import WorkerConnectionError
from quartfaas.dataplane.worker import SERVICE_HEADER
from quartfaas.errors import FramingError, ModelInputError, NoReplicas, UpstreamFailed
from quartfaas.spec import PipelineSpec


@dataclass(frozen=True, slots=True)
class StageResult:
    ref: Any  # ObjectRef of the output frame (a uint8 array)
    service_s: float
    replica_id: str
    attempts: int = 1


@dataclass
class _Route:
    info: ReplicaInfo
    actor: Any
    inflight: int = 0
    idle: asyncio.Event = field(default_factory=asyncio.Event)


class RayStageClient:
    """Routes stage calls to Ray replica actors (a ``ReplicaListener``)."""

    def __init__(self, spec: PipelineSpec, actor_of: Callable[[str], Any] | None = None) -> None:
        self.spec = spec
        self.actor_of = actor_of  # replica_id -> actor handle (RayBackend.actor)
        self._ready: dict[str, dict[str, _Route]] = {s.name: {} for s in spec.stages}
        self._all: dict[str, _Route] = {}
        self._changed: dict[str, asyncio.Event] = {s.name: asyncio.Event() for s in spec.stages}
        self.retries = 0

    # -- ReplicaListener --------------------------------------------------------------

    def replica_starting(self, info: ReplicaInfo) -> None:
        return None

    def replica_ready(self, info: ReplicaInfo) -> None:
        if self.actor_of is None:
            raise RuntimeError("RayStageClient needs actor_of (RayBackend.actor)")
        route = _Route(info, self.actor_of(info.replica_id))
        route.idle.set()
        self._ready[info.stage][info.replica_id] = route
        self._all[info.replica_id] = route
        self._changed[info.stage].set()

    def replica_start_failed(self, info: ReplicaInfo) -> None:
        return None

    def replica_gone(self, info: ReplicaInfo) -> None:
        self._ready[info.stage].pop(info.replica_id, None)
        self._all.pop(info.replica_id, None)

    async def drain_replica(self, info: ReplicaInfo, timeout_s: float) -> bool:
        """Stop routing to the replica; True once its calls through us finished."""
        self._ready[info.stage].pop(info.replica_id, None)
        route = self._all.get(info.replica_id)
        if route is None:
            return True
        try:
            await asyncio.wait_for(route.idle.wait(), timeout_s)
        except TimeoutError:
            return False
        return True

    def ready_count(self, stage: str) -> int:
        return len(self._ready[stage])

    # -- calls ------------------------------------------------------------------------

    async def _pick(self, stage: str, deadline: float) -> _Route:
        while True:
            routes = self._ready[stage]
            if routes:
                return min(routes.values(), key=lambda r: r.inflight)
            left = deadline - time.monotonic()
            if left <= 0:
                raise NoReplicas(f"stage {stage} has no ready replica")
            ev = self._changed[stage]
            ev.clear()
            try:
                await asyncio.wait_for(ev.wait(), left)
            except TimeoutError:
                continue

    async def call(self, stage: str, frame: Any, timeout_s: float | None = None) -> StageResult:
        """Run one stage on ``frame`` (bytes, or the ObjectRef a stage returned)."""
        frame = _outgoing(frame)
        index = self.spec.stage_index(stage)
        budget = timeout_s if timeout_s is not None else self.spec.stage_timeout_s(index)
        deadline = time.monotonic() + budget
        attempts = 0
        while True:
            route = await self._pick(stage, deadline)
            attempts += 1
            route.inflight += 1
            route.idle.clear()
            try:
                meta_ref, out_ref = route.actor.invoke.options(num_returns=2).remote(frame)
                meta = await meta_ref
            except RayActorError:
                # The replica died with our call: forget it, try another (the backend
                # replaces it). The input is still ours, so nothing is lost.
                self._ready[stage].pop(route.info.replica_id, None)
                self.retries += 1
                continue
            except RayTaskError as exc:
                cause = exc.cause if hasattr(exc, "cause") else None
                if isinstance(cause, ModelInputError | FramingError):
                    raise ModelInputError(f"stage {stage}: {cause}") from None
                raise UpstreamFailed(f"stage {stage} failed: {exc}") from None
            finally:
                route.inflight -= 1
                if route.inflight == 0:
                    route.idle.set()
            return StageResult(out_ref, float(meta["service_s"]), route.info.replica_id, attempts)

    async def pipeline(
        self, frame: bytes, attempts: int = 3, timeout_s: float | None = None
    ) -> tuple[bytes, list[StageResult]]:
        """Every stage in order; the last stage's frame is fetched, the others are not.

        An activation lost with its node (``ObjectLostError``: it lived only in that
        node's object store) restarts the request from the first stage, up to
        ``attempts`` times; the request's own bytes are held here. ``timeout_s``: each
        stage's budget (``call``), default the spec's stage timeouts.
        """
        if timeout_s is not None and not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0 s, got {timeout_s}")
        for attempt in range(1, attempts + 1):
            results: list[StageResult] = []
            current: Any = frame
            try:
                for st in self.spec.stages:
                    res = await self.call(st.name, current, timeout_s)
                    results.append(res)
                    current = res.ref
                out = await current
            except ObjectLostError:
                if attempt == attempts:
                    raise UpstreamFailed(
                        f"an activation was lost with its node {attempts} times"
                    ) from None
                self.retries += 1
                continue
            return bytes(out), results
        raise AssertionError("unreachable")


class RayEndpointClient:
    """``EndpointClient.post`` on a Ray replica actor (for the gateway's dispatcher)."""

    def __init__(self, actor: Any) -> None:
        self.actor = actor

    async def post(
        self, body: Any, headers: Any, deadline: float
    ) -> tuple[int, dict[str, str], Any]:
        """``body``: frame bytes or a stage's ObjectRef; ``deadline``: loop time."""
        body = _outgoing(body)
        try:
            async with asyncio.timeout_at(deadline):
                meta_ref, out_ref = self.actor.invoke.options(num_returns=2).remote(body)
                meta = await meta_ref
        except RayActorError as exc:
            raise WorkerConnectionError(f"replica actor died: {type(exc).__name__}") from None
        except RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            status = 400 if isinstance(cause, ModelInputError | FramingError) else 500
            return status, {}, json.dumps({"error": str(cause or exc)}).encode()
        ms = float(meta["service_s"]) * 1000.0
        return 200, {SERVICE_HEADER.lower(): f"{ms:.3f}"}, out_ref

    def close(self) -> None:
        return None


def _outgoing(frame: Any) -> Any:
    """What crosses to an actor: a stage's ObjectRef as is; frame bytes as a ``uint8``
    array (read zero-copy from the object store by the actor; see ``activations.py``)."""
    if isinstance(frame, bytes | bytearray | memoryview):
        return to_object(frame)
    return frame

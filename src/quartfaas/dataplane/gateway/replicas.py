"""Replica callbacks: each stage's pool of replicas, kept in step with the backend.

``StageReplicas`` is what the backend tells about its replicas (the local backend's
``ReplicaListener``): a replica starting, ready (added to its stage's pool, its start
time and tier recorded), failed to start (waiters that cannot be served fail at once),
gone (removed), or to be drained. The other way round, a pool asks it for a replica
when a request finds its stage at zero (scale from zero), and reports a replica that
failed a request (``on_failed_replica``: the runtime kills it if it lives on).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from quartfaas.control.backend import Backend, ReplicaInfo
from quartfaas.dataplane.dispatch import StagePool
from quartfaas.errors import QuartfaasError
from quartfaas.metrics.gateway_metrics import GatewayMetrics, StageGauges
from quartfaas.spec import PipelineSpec

log = logging.getLogger("quartfaas.gateway")


class StageReplicas:
    """The stage pools the dispatcher routes to, fed by the backend's replica events."""

    def __init__(self, spec: PipelineSpec, metrics: GatewayMetrics) -> None:
        self.metrics = metrics
        self.backend: Backend | None = None
        # Set by the runtime: told when a replica fails a request (kill it if it lives on).
        self.on_failed_replica: Callable[[str, str], None] | None = None
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
        self._starting: dict[str, set[str]] = {s.name: set() for s in spec.stages}

    # -- ReplicaListener ------------------------------------------------------------

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

    def _set_starting(self, stage: str) -> None:
        self.pools[stage].starting = len(self._starting[stage])

    # -- from the pools -------------------------------------------------------------

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

    # -- reads ----------------------------------------------------------------------

    def list(self, stage: str) -> list[ReplicaInfo]:
        """The backend's replicas of ``stage`` (none while no backend is attached)."""
        return self.backend.list_replicas(stage) if self.backend is not None else []

    def gauges(self) -> dict[str, StageGauges]:
        return {
            name: StageGauges(p.queue_len, p.inflight, p.ready_replicas, p.starting)
            for name, p in self.pools.items()
        }

    async def close(self) -> None:
        for pool in self.pools.values():
            for ep in pool.endpoints.values():
                ep.client.close()

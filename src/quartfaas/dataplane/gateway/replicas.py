"""Replica callbacks: each stage's pool of replicas, kept in step with the backend.

``StageReplicas`` is what the backend tells about its replicas (the local backend's
``ReplicaListener``): a replica starting, ready (added to its stage's pool, its start
time and tier recorded), failed to start (waiters that cannot be served fail at once),
gone (removed), or to be drained. The other way round, a pool asks it for a replica
when a request finds its stage at zero (scale from zero), and reports a replica that
failed a request (``on_failed_replica``: the runtime kills it if it lives on).

``probe_forever`` is the outlier detector's active half (``dataplane/outlier.py``,
thresholds from the spec's ``gateway.outlier``): every ``probe_interval_s`` it asks each
replica's ``/healthz`` with a deadline; a silent replica is ejected (when the gateway itself
was listening: ``probe_round``), an ejected one
returns on its first answer; when every replica of a stage is ejected, a stand-in is
started (within ``max_replicas``). ``readiness`` says whether every stage has its
``min_replicas`` in rotation (the gateway's ``/readyz``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from quartfaas.control.backend import Backend, ReplicaInfo, ReplicaState
from quartfaas.dataplane.dispatch import Endpoint, StagePool
from quartfaas.dataplane.outlier import LoopWatch, OutlierPolicy, probe, silence_counts
from quartfaas.errors import BackendError, QuartfaasError
from quartfaas.metrics.gateway_metrics import GatewayMetrics, StageGauges
from quartfaas.spec import PipelineSpec

log = logging.getLogger("quartfaas.gateway")


class StageReplicas:
    """The stage pools the dispatcher routes to, fed by the backend's replica events."""

    def __init__(
        self, spec: PipelineSpec, metrics: GatewayMetrics, outlier: OutlierPolicy | None = None
    ) -> None:
        self.spec = spec
        self.metrics = metrics
        self.outlier = outlier or OutlierPolicy.from_spec(spec.gateway.outlier)
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
                outlier=self.outlier,
                start_wait_s=spec.gateway.replica_start_timeout_s,
                on_all_ejected=self._stand_in,
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
            hit = info.tier.value in ("fork", "prefork", "object-store")
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
        if self.backend is None or self._starting[stage]:
            return
        live = (ReplicaState.STARTING, ReplicaState.READY)
        if any(r.state in live for r in self.backend.list_replicas(stage)):
            return  # the backend already has one coming (e.g. a crash's replacement)
        try:
            self.backend.start_replica(stage)
        except QuartfaasError as exc:
            self.pools[stage].last_start_error = str(exc)

    def _stand_in(self, stage: str) -> None:
        """Every replica of ``stage`` is ejected (hung): start one more, within
        ``max_replicas``, so the queued requests need not wait for a hung one to return."""
        if self.backend is None or self._starting[stage]:
            return
        most = self.spec.stages[self.spec.stage_index(stage)].max_replicas
        if len(self.backend.list_replicas(stage)) >= most:
            return
        log.warning("stage %s: every replica is ejected; starting a stand-in", stage)
        try:
            self.backend.start_replica(stage)
        except QuartfaasError as exc:
            self.pools[stage].last_start_error = str(exc)

    def _replica_failed(self, replica_id: str, why: str) -> None:
        log.warning("replica %s failed a request: %s", replica_id, why)
        if self.on_failed_replica is not None:
            self.on_failed_replica(replica_id, why)

    # -- outlier probes ---------------------------------------------------------------

    async def probe_forever(self) -> None:
        """Probe every replica's ``/healthz`` each ``probe_interval_s``, concurrently."""
        while True:
            await self.probe_round()
            await asyncio.sleep(self.outlier.probe_interval_s)

    async def probe_round(self) -> float:
        """One probe of every replica in rotation or ejected. An answer returns an ejected
        replica at once; silences are judged when the round is over, and count only if
        the gateway's loop listened for most of the deadline (``silence_counts``).
        Returns the seconds the loop was deaf during the round."""
        targets = [
            (pool, ep)
            for pool in self.order
            for ep in list(pool.endpoints.values())
            if not ep.failed and not ep.draining
        ]
        if not targets:
            return 0.0
        timeout = self.outlier.probe_timeout_s
        async with LoopWatch(timeout / 10.0) as watch:
            silent = await asyncio.gather(*(self._probe(pool, ep) for pool, ep in targets))
        if not any(silent):
            return watch.deaf_s
        if not silence_counts(watch.deaf_s, self.outlier):
            log.warning("health probes void: the gateway's event loop was deaf for %.2f s of "
                        "their %.1f s deadline (CPU starvation or a backlog), so a silence "
                        "says nothing of the replicas", watch.deaf_s, timeout)  # fmt: skip
            return watch.deaf_s
        now = asyncio.get_running_loop().time()
        for (pool, ep), quiet in zip(targets, silent, strict=True):
            if quiet and pool.endpoints.get(ep.replica_id) is ep and not ep.failed:
                pool.record(ep, False, now, f"probe: no answer within {timeout:.1f} s")
        return watch.deaf_s

    async def _probe(self, pool: StagePool, ep: Endpoint) -> bool:
        """Probe one replica and act on an answer or a refusal; True if it was silent."""
        ok = await probe(ep.url.rsplit("/invoke", 1)[0], self.outlier.probe_timeout_s)
        if pool.endpoints.get(ep.replica_id) is not ep or ep.failed:
            return False  # gone or failed meanwhile
        if ok is None:  # refused: the process is gone; the backend replaces it
            pool.mark_failed(ep, "health probe: connection refused")
        elif ok and ep.health.ejected:
            pool.record(ep, True, asyncio.get_running_loop().time())
        return ok is False

    # -- reads ----------------------------------------------------------------------

    def readiness(self) -> tuple[bool, dict[str, str]]:
        """Whether every stage has its ``min_replicas`` in rotation, and each stage's
        ``ready/min``: what ``/readyz`` answers (``/healthz`` is liveness only)."""
        stages: dict[str, str] = {}
        ready = True
        for stage in self.spec.stages:
            n = self.pools[stage.name].ready_replicas
            stages[stage.name] = f"{n}/{stage.min_replicas}"
            ready = ready and n >= stage.min_replicas
        return ready, stages

    async def wait_ready(self, timeout_s: float) -> None:
        """Until every stage has ``min_replicas`` ready (``readiness``); a start failure
        raises at once, and so does the deadline, naming the stages still short."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            missing = []
            for stage in self.spec.stages:
                pool = self.pools[stage.name]
                if pool.ready_replicas < stage.min_replicas:
                    if pool.last_start_error:
                        raise BackendError(pool.last_start_error)
                    missing.append(f"{stage.name} ({pool.ready_replicas}/{stage.min_replicas})")
            if not missing:
                return
            if loop.time() > deadline:
                raise BackendError(f"stages not ready after {timeout_s:.0f} s: {missing}")
            await asyncio.sleep(0.01)

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

"""The discrete-event engine: a pipeline of per-stage FCFS multi-server queues.

The engine knows requests, stages and service slots, nothing about GPUs or policies.
``sim/backend.py`` adds and drains replicas (groups of ``max_concurrency`` slots, each
with a service-time multiplier from its GPU and CPU); ``sim/run.py`` calls ``advance(t)``
at every control tick; ``sim/collector.py`` reads the records to build snapshots.

Time moves in tick intervals (see ``sim/kernel.py`` for why this is exact): requests whose
start would fall at or after the interval's end stay queued, so a replica added at a tick
serves from its ready time on and a drained replica takes no new work but finishes what it
started. Work per visit is fixed up front (seconds on a reference GPU), so a run is a pure
function of arrivals, work and the replica actions: same inputs, same records.

Per-request records: ``start``/``finish`` per stage (NaN until it happens), ``rejected_at``
(the stage whose queue bound turned it away, or -1), ``served_by`` (replica handle per
visit, when ``record_servers``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from quartfaas.errors import SimulationError
from quartfaas.sim import kernel

SLOT_FREE, SLOT_SERVING, SLOT_DRAINING = 0, 1, 2


@dataclass(frozen=True, slots=True)
class EngineReplica:
    """A replica as the engine sees it: its stage, slots and times."""

    handle: int
    stage: int
    slots: tuple[int, ...]
    ready_at: float
    drained_at: float | None = None
    leaves_at: float | None = None


class Engine:
    """Per-stage FCFS queues with replica counts that change only at ``advance`` boundaries."""

    def __init__(
        self,
        arrivals: np.ndarray,
        work: np.ndarray,
        queue_bounds: Sequence[int],
        *,
        record_servers: bool = False,
        slot_capacity: int = 8,
    ) -> None:
        arr = np.ascontiguousarray(arrivals, dtype=np.float64)
        wk = np.ascontiguousarray(work, dtype=np.float64)
        if arr.ndim != 1:
            raise SimulationError(f"arrivals must be a 1-D array of times, got shape {arr.shape}")
        if wk.ndim != 2 or wk.shape[1] != arr.shape[0] or wk.shape[0] < 1:
            raise SimulationError(
                f"work must have shape (stages, requests) = (K, {arr.shape[0]}), got {wk.shape}"
            )
        if arr.size and (not np.all(np.isfinite(arr)) or arr[0] < 0):
            raise SimulationError("arrival times must be finite and >= 0")
        if arr.size > 1 and np.any(np.diff(arr) < 0):
            raise SimulationError("arrival times must be sorted in ascending order")
        if not np.all(np.isfinite(wk)) or np.any(wk < 0):
            raise SimulationError("service work must be finite and >= 0")
        if len(queue_bounds) != wk.shape[0] or any(b < 1 for b in queue_bounds):
            raise SimulationError(
                f"need one queue bound >= 1 per stage ({wk.shape[0]}), got {list(queue_bounds)}"
            )
        n_stages, n = wk.shape
        self.arrivals = arr
        self.work = wk
        self.n_stages = n_stages
        self.n_requests = n
        self.now = 0.0
        self.record_servers = record_servers
        self.start = np.full((n_stages, n), np.nan)
        self.finish = np.full((n_stages, n), np.nan)
        self.served_by = np.full((n_stages, n if record_servers else 1), -1, dtype=np.int32)
        self.seq = np.zeros((n_stages + 1, n), dtype=np.int32)
        self.cnt = np.zeros(n_stages + 1, dtype=np.int64)
        self.rejected_at = np.full(n, -1, dtype=np.int32)
        self.queue_bound = np.asarray(queue_bounds, dtype=np.int64)
        self._next_arrival = np.zeros(1, dtype=np.int64)
        self._head = np.zeros(n_stages, dtype=np.int64)
        self._qpos = np.zeros(n_stages, dtype=np.int64)
        self.n_accepted = np.zeros(n_stages, dtype=np.int64)
        self._n_left_queue = np.zeros(n_stages, dtype=np.int64)
        self.n_started = np.zeros(n_stages, dtype=np.int64)
        self._inflight_n = np.zeros(n_stages, dtype=np.int64)
        self.slot_free = np.zeros((n_stages, 0))
        self.slot_mult = np.ones((n_stages, 0))
        self.slot_state = np.zeros((n_stages, 0), dtype=np.int8)
        self.slot_replica = np.full((n_stages, 0), -1, dtype=np.int32)
        self._inflight = np.zeros((n_stages, 0), dtype=np.int64)
        self._heap = np.zeros(0, dtype=np.int64)
        self._alloc_slots(max(1, slot_capacity))
        self._replicas: dict[int, EngineReplica] = {}
        self._next_handle = 0
        self.visits_started = 0

    # -- slots ------------------------------------------------------------------------

    def _alloc_slots(self, cap: int) -> None:
        k = self.n_stages
        w = self.slot_free.shape[1]
        free = np.zeros((k, cap))
        mult = np.ones((k, cap))
        state = np.zeros((k, cap), dtype=np.int8)
        rep = np.full((k, cap), -1, dtype=np.int32)
        inflight = np.zeros((k, cap), dtype=np.int64)
        free[:, :w] = self.slot_free
        mult[:, :w] = self.slot_mult
        state[:, :w] = self.slot_state
        rep[:, :w] = self.slot_replica
        inflight[:, :w] = self._inflight
        self.slot_free, self.slot_mult, self.slot_state = free, mult, state
        self.slot_replica, self._inflight = rep, inflight
        self._heap = np.zeros(cap, dtype=np.int64)

    def _release_finished_slots(self) -> None:
        # A draining slot is reusable once its last visit has been delivered (finish < now;
        # one finishing exactly at ``now`` is still in the in-flight buffer, which has one
        # entry per slot at most).
        done = (self.slot_state == SLOT_DRAINING) & (self.slot_free < self.now)
        self.slot_state[done] = SLOT_FREE
        self.slot_replica[done] = -1

    def _take_slots(self, stage: int, n: int) -> list[int]:
        self._release_finished_slots()
        free = np.flatnonzero(self.slot_state[stage] == SLOT_FREE)
        if free.size < n:
            need = int(np.count_nonzero(self.slot_state[stage] != SLOT_FREE)) + n
            self._alloc_slots(max(2 * self.slot_free.shape[1], need))
            free = np.flatnonzero(self.slot_state[stage] == SLOT_FREE)
        return [int(s) for s in free[:n]]

    # -- replicas (called by the backend at tick times) ---------------------------------

    def add_replica(self, stage: int, slots: int, ready_at: float, multiplier: float) -> int:
        """Add a replica of ``slots`` concurrent slots that serves from ``ready_at`` on."""
        if not 0 <= stage < self.n_stages:
            raise SimulationError(f"stage index {stage} outside 0..{self.n_stages - 1}")
        if slots < 1 or multiplier <= 0 or ready_at < self.now:
            raise SimulationError(
                f"bad replica: slots={slots} (>= 1), multiplier={multiplier} (> 0), "
                f"ready_at={ready_at} (>= now {self.now})"
            )
        handle = self._next_handle
        self._next_handle += 1
        taken = self._take_slots(stage, slots)
        for s in taken:
            self.slot_free[stage, s] = ready_at
            self.slot_mult[stage, s] = multiplier
            self.slot_state[stage, s] = SLOT_SERVING
            self.slot_replica[stage, s] = handle
        self._replicas[handle] = EngineReplica(handle, stage, tuple(taken), ready_at)
        return handle

    def set_multiplier(self, handle: int, multiplier: float) -> None:
        """Change a replica's service-time multiplier for visits that start from now on."""
        if multiplier <= 0:
            raise SimulationError(f"multiplier must be > 0, got {multiplier}")
        rep = self._replicas[handle]
        for s in rep.slots:
            self.slot_mult[rep.stage, s] = multiplier

    def drain_replica(self, handle: int) -> float:
        """Stop giving the replica work; returns when its last started visit finishes."""
        rep = self._replicas[handle]
        if rep.leaves_at is not None:
            return rep.leaves_at
        if rep.ready_at > self.now:
            leaves = self.now  # never served: it leaves at once
        else:
            leaves = max(self.now, *(float(self.slot_free[rep.stage, s]) for s in rep.slots))
        for s in rep.slots:
            self.slot_state[rep.stage, s] = SLOT_DRAINING
            if rep.ready_at > self.now:
                self.slot_free[rep.stage, s] = -np.inf  # nothing to finish: free for reuse
        self._replicas[handle] = EngineReplica(
            handle, rep.stage, rep.slots, rep.ready_at, self.now, leaves
        )
        return leaves

    def replica(self, handle: int) -> EngineReplica:
        return self._replicas[handle]

    # -- time ---------------------------------------------------------------------------

    def advance(self, t1: float) -> int:
        """Process every stage up to ``t1``; returns the visits started in the interval."""
        if t1 < self.now:
            raise SimulationError(f"cannot advance backwards (from {self.now} to {t1})")
        started = kernel.advance(
            float(t1),
            self.arrivals,
            self._next_arrival,
            self.work,
            self.start,
            self.finish,
            self.served_by,
            self.record_servers,
            self.seq,
            self.cnt,
            self.rejected_at,
            self.queue_bound,
            self._head,
            self._qpos,
            self.n_accepted,
            self._n_left_queue,
            self.n_started,
            self.slot_free,
            self.slot_mult,
            self.slot_state,
            self.slot_replica,
            self._inflight,
            self._inflight_n,
            self._heap,
        )
        if started < 0:
            raise SimulationError(
                f"engine invariant broken at t={t1}: more visits in flight than slots "
                "(a bug in quartfaas.sim; please report it with the seed)"
            )
        self.now = float(t1)
        self.visits_started += int(started)
        return int(started)

    # -- state at ``now`` -----------------------------------------------------------------

    def queue_len(self, stage: int) -> int:
        """Accepted requests waiting at ``stage`` (arrived, not started) at ``now``."""
        return int(self.n_accepted[stage] - self.n_started[stage])

    def in_flight(self, stage: int) -> int:
        """Visits of ``stage`` started before ``now`` that finish at or after it."""
        return int(self._inflight_n[stage])

    @property
    def arrived(self) -> int:
        return int(self.cnt[0])

    @property
    def completed(self) -> int:
        return int(self.cnt[self.n_stages])

    @property
    def rejected(self) -> int:
        return int(np.count_nonzero(self.rejected_at >= 0))

    @property
    def idle(self) -> bool:
        """True when every request has arrived and completed or been rejected."""
        return self.arrived == self.n_requests and self.completed + self.rejected == self.n_requests

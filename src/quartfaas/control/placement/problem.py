"""The request every placer searches over, validated and indexed once.

``Problem`` sorts servers by name and GPUs by id, so that ties break the same way whatever
the input order, and precomputes what the objective reads (memory needs, target shares).
``Work`` (``work.py``) holds the counters a search changes.
"""

from __future__ import annotations

import math

from quartfaas.control.placement.keys_manager import CacheEntry
from quartfaas.control.placement.model import (
    GPU,
    PlacementConfig,
    PlacementRequest,
    StageReq,
    StartSource,
)

EPS = 1e-9


class Problem:
    """A validated, indexed ``PlacementRequest`` (read-only after construction)."""

    def __init__(self, request: PlacementRequest, config: PlacementConfig) -> None:
        self.request = request
        self.config = config
        names = [s.name for s in request.servers]
        if len(set(names)) != len(names):
            raise ValueError(f"server names must be unique, got {sorted(names)}")
        self.servers = sorted(request.servers, key=lambda s: s.name)
        self.sidx = {s.name: j for j, s in enumerate(self.servers)}
        self.gpus: list[list[GPU]] = [sorted(s.gpus, key=lambda g: g.gpu_id) for s in self.servers]
        self.gidx = [{g.gpu_id: i for i, g in enumerate(gs)} for gs in self.gpus]
        self.stages: dict[str, StageReq] = {}
        for st in request.stages:
            if st.key in self.stages:
                raise ValueError(f"stage {st.key!r} is listed twice")
            if st.size_bytes < 0:
                raise ValueError(f"stage {st.key!r}: size_bytes must be >= 0")
            self.stages[st.key] = st
        for what, counts in (("start", request.start), ("stop", request.stop)):
            for key, n in counts.items():
                if key not in self.stages:
                    raise ValueError(f"{what} names stage {key!r}, which is not in stages")
                if n < 0:
                    raise ValueError(f"{what}[{key!r}] = {n}: must be >= 0")
        for r in request.replicas:
            j = self.sidx.get(r.server)
            if j is None or r.gpu not in self.gidx[j]:
                raise ValueError(f"replica of {r.stage!r} is on unknown {r.server}/{r.gpu}")
        self.req = {k: self.gpu_req(st) for k, st in self.stages.items()}
        self.touched = sorted(
            k for k in self.stages if request.start.get(k, 0) or request.stop.get(k, 0)
        )
        self.cache_keys = [s.cache.keys for s in self.servers]
        self.entries: list[tuple[CacheEntry, ...]] = [s.cache.entries for s in self.servers]
        self.cap = [s.cache.capacity_bytes for s in self.servers]
        self.used0 = [s.cache.used_bytes for s in self.servers]
        self.host_free = [s.host_free_bytes for s in self.servers]
        self.log_q = self._log_target()
        self._source: dict[tuple[str, int], StartSource] = {}
        self._starts: dict[str, list[float]] = {}

    def gpu_req(self, st: StageReq) -> int:
        if st.gpu_memory_bytes is not None:
            return st.gpu_memory_bytes
        c = self.config
        return min(math.ceil(st.size_bytes * c.gpu_memory_factor), c.gpu_memory_cap_bytes)

    def _log_target(self) -> list[float]:
        speed = self.config.target == "speed"
        caps = [
            sum(
                (g.speed if speed else 1.0) * g.free_bytes / g.total_bytes
                for g in gs
                if g.total_bytes
            )
            for gs in self.gpus
        ]
        total, n = sum(caps), len(caps)
        if n == 0:
            return []
        if total <= 0:
            return [-math.log(n)] * n
        eps = self.config.target_smoothing * total / n
        norm = total + eps * n
        return [math.log((c + eps) / norm) for c in caps]

    def source(self, key: str, j: int) -> StartSource:
        got = self._source.get((key, j))
        if got is None:
            disk = self.servers[j].disk_keys
            if key in self.cache_keys[j]:
                got = StartSource.FORK
            elif disk is None or key in disk:
                got = StartSource.DISK
            else:
                got = StartSource.REMOTE
            self._source[(key, j)] = got
        return got

    def start_list(self, key: str) -> list[float]:
        """``start_s(key, j)`` for every server ``j``."""
        got = self._starts.get(key)
        if got is None:
            cost, size = self.config.cost, self.stages[key].size_bytes
            by_source = {src: cost.seconds(src, size) for src in StartSource}
            got = self._starts[key] = [
                by_source[self.source(key, j)] for j in range(len(self.servers))
            ]
        return got

    def start_s(self, key: str, j: int) -> float:
        return self.start_list(key)[j]

    def new_replicas(self) -> list[str]:
        """Replicas to place, canonical order: critical, largest GPU need, then key."""
        order = sorted(
            (k for k, n in self.request.start.items() if n > 0),
            key=lambda k: (not self.stages[k].critical, -self.req[k], k),
        )
        return [k for k in order for _ in range(self.request.start[k])]

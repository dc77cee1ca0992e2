"""The simulator's model of the stage templates' pre-fork pools (``dataplane/forkserver.py``).

Live, each stage template keeps ``depth`` warmed children; a start hands one over in
milliseconds (tier PREFORK), takes one still warming (it is ready when its warm-up ends,
tier FORK), or forks a new one (FORK: fork + warm-up). After a handover the template
forks replacements at once. The depth per stage is decided by
``control/placement/prefork.py`` and applied by the ``ControlLoop`` through
``SimBackend.set_pool`` (the ``PoolScalable`` seam), as live.

Here a pool is a list of the times its idle children are warm, one list per (server,
stage): a server's template exists once the stage is in that server's cache, so the pool
is made with the replica that brings the stage there (an initial or cold start; children
fork when it is up). Costs:

- handing over a warm child: ``handover_s`` (4 ms: ``benchmarks/scaleup.py`` measured the
  prefork tier's call-to-ready p50 at 4.0 ms for a 1 GiB stage) plus the host-to-device
  copy (children warm up on the host, like the live template's CPU pages);
- a child forked at ``t`` is warm at ``t + fork start - h2d`` (the fork tier's delay
  without the copy, ``StartDelays.seconds(FORK, ...)``).

Not modelled: CPU contention between children warming together and the live refill's
wait on a saturated host (the simulated servers' CPUs are not a shared run queue), and
the host memory the children take (the live decision bounds it by measured memory;
``pool_status`` reports none here, so only the stage bound applies).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from quartfaas.control.backend import PoolStatus, StartTier
from quartfaas.sim.cluster import GpuType, StartDelays

HANDOVER_S = 0.004


@dataclass
class PreforkPools:
    """Pools of warmed children per (server, stage); depth per stage."""

    floor: int = 1
    max_depth: int = 16
    handover_s: float = HANDOVER_S
    depth: dict[str, int] = field(default_factory=dict)
    _pools: dict[tuple[int, str], list[float]] = field(default_factory=dict)
    _child_s: dict[tuple[int, str], float] = field(default_factory=dict)
    handovers: int = 0  # starts served by a warm child (for reports and tests)

    def depth_of(self, stage: str) -> int:
        return self.depth.get(stage, self.floor)

    def on_start(
        self, stage: str, server: int, now: float, *, tier: StartTier | None, delay_s: float,
        delays: StartDelays, size_gib: float, gpu: GpuType, warmup_s: float,
    ) -> tuple[StartTier | None, float]:  # fmt: skip
        """SimBackend's hook: a start on a server whose cache holds the stage's template.

        A cold or initial start brings the template up (its pool forks once the template
        is ready); a fork start takes a child from the pool. Starts that the cluster's
        delays charge a fork like a cold start (the no-cache ablation) get no pool.
        """
        fork_s = delays.seconds(StartTier.FORK, size_gib, gpu, warmup_s)
        if fork_s >= delays.seconds(StartTier.COLD, size_gib, gpu, 0.0):
            return tier, delay_s
        h2d = size_gib / gpu.h2d_gib_per_s
        if tier is StartTier.FORK:
            return self.take(stage, server, now, fork_s, h2d)
        key = (server, stage)
        if key not in self._pools:
            self._child_s[key] = max(0.0, fork_s - h2d)
            self._pools[key] = []
            self._refill(key, now + delay_s)  # children fork when the template is up
        return tier, delay_s

    def take(
        self, stage: str, server: int, now: float, fork_delay_s: float, h2d_s: float
    ) -> tuple[StartTier, float]:
        """The tier and delay of a start that hits ``server``'s template of ``stage``."""
        key = (server, stage)
        child_s = max(0.0, fork_delay_s - h2d_s)
        self._child_s[key] = child_s
        pool = self._pools.setdefault(key, [])
        tier, delay = StartTier.FORK, fork_delay_s
        if pool:
            pool.sort()
            warm_at = pool.pop(0)
            if warm_at <= now:
                tier, delay = StartTier.PREFORK, self.handover_s + h2d_s
                self.handovers += 1
            else:  # still warming: ready when its warm-up ends, sooner than a new fork
                delay = min(fork_delay_s, warm_at - now + self.handover_s + h2d_s)
        self._refill(key, now)
        return tier, delay

    def set_depth(self, stage: str, depth: int, now: float) -> None:
        self.depth[stage] = max(0, min(depth, self.max_depth))
        for key in [k for k in self._pools if k[1] == stage]:
            pool = sorted(self._pools[key])
            del pool[self.depth[stage] :]  # retire the latest-warming surplus first
            self._pools[key] = pool
            self._refill(key, now)

    def status(self, stage: str, now: float) -> PoolStatus:
        children = [t for (_, s), pool in self._pools.items() if s == stage for t in pool]
        return PoolStatus(
            stage,
            self.depth_of(stage),
            idle=len(children),
            warm=sum(1 for t in children if t <= now),
            floor=self.floor,
            max_depth=self.max_depth,
        )

    def _refill(self, key: tuple[int, str], now: float) -> None:
        pool = self._pools[key]
        missing = self.depth_of(key[1]) - len(pool)
        pool.extend([now + self._child_s.get(key, 0.0)] * max(0, missing))

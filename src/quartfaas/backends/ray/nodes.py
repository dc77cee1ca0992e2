"""Ray nodes as the placer's servers, and the placement decision for one new replica.

``cluster_nodes`` reads ``ray.nodes()`` (alive nodes, their resources); ``choose_node``
turns them, the live replicas and the object-store cache views into a
``PlacementRequest`` for a ``Placer`` from ``control/placement/`` and returns the node
the plan chose (applied by the backend with ``NodeAffinitySchedulingStrategy``).

Accelerators: a node's ``GPU`` resource, or on CPU-only test clusters a custom resource
(``accelerator_resource``, e.g. ``accel``), counts as that many accelerator slots of
``accelerator_memory_bytes`` each; a stage without accelerators gets one slot per whole
CPU. ``placer="ray"`` means no decision here: Ray's own scheduler places the actor (the
baseline).

Suspected nodes (``placement_rounds``): a replica that died without being stopped may
have died with its node, which Ray still lists as alive until its health check gives up
(Ray's defaults: a probe every 3 s, 5 misses, 10 s per probe). A replacement placed there
in that window fails with the node, and its stage backs off before it tries again, so
recovery took the detection window, a failed start and the back-off before a start on a
good node. The backend marks the dead replica's node suspect for ``SUSPECT_S`` and places
on the other nodes first; the suspect node is used only when no other node fits.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import ray

from quartfaas.control.placement import (
    GPU,
    PlacementRequest,
    Placer,
    Replica,
    ServerState,
    StageReq,
)
from quartfaas.control.placement.keys_manager import GIB, CacheView, KeysManager


@dataclass(frozen=True, slots=True)
class NodeInfo:
    node_id: str
    address: str
    resources: Mapping[str, float]

    @property
    def object_store_bytes(self) -> int:
        return int(self.resources.get("object_store_memory", 0))


def cluster_nodes() -> list[NodeInfo]:
    """Alive nodes of the connected cluster, sorted by id."""
    out = [
        NodeInfo(str(n["NodeID"]), str(n.get("NodeManagerAddress", "")), dict(n["Resources"]))
        for n in ray.nodes()
        if n.get("Alive")
    ]
    return sorted(out, key=lambda n: n.node_id)


# How long a node stays suspect after a replica on it died unasked: Ray's default
# detection of a dead node (health_check_period_ms 3000 x failure_threshold 5, plus
# health_check_timeout_ms 10000 for the last probe) is up to ~25 s.
SUSPECT_S = 30.0


def placement_rounds(
    nodes: Sequence[NodeInfo], suspect_until: Mapping[str, float], now: float
) -> list[list[NodeInfo]]:
    """The node sets to try, in order, for a new replica: the nodes under no suspicion
    at ``now`` (``suspect_until``: node id -> when its suspicion ends), then all of
    ``nodes``. One round (all nodes) when none or every node is suspect."""
    trusted = [n for n in nodes if suspect_until.get(n.node_id, -math.inf) <= now]
    if not trusted or len(trusted) == len(nodes):
        return [list(nodes)]
    return [trusted, list(nodes)]


@dataclass(frozen=True, slots=True)
class LiveReplica:
    stage: str
    node_id: str
    slot: str
    cpu: float
    replica_id: str


def slots_of(node: NodeInfo, accelerator: str | None) -> int:
    if accelerator is not None:
        return int(node.resources.get(accelerator, 0))
    return int(node.resources.get("CPU", 0))


def choose_node(
    placer: Placer,
    *,
    stage: StageReq,
    stages: Sequence[StageReq],
    nodes: Sequence[NodeInfo],
    replicas: Sequence[LiveReplica],
    caches: Mapping[str, CacheView],
    accelerator: str | None,
    accelerator_memory_bytes: int = 16 * GIB,
) -> tuple[str, str, str] | str:
    """``(node_id, slot, reason)`` for one new replica of ``stage`` on one of ``nodes``,
    or why none fits. Replicas on other nodes (a node left out of this round, or one
    that died before its replicas were marked failed) are not the placer's to see."""
    ids = {n.node_id for n in nodes}
    replicas = [r for r in replicas if r.node_id in ids]
    servers = []
    need = {s.key: s for s in stages}
    for node in nodes:
        used = {r.slot: 0 for r in replicas if r.node_id == node.node_id}
        for r in replicas:
            if r.node_id == node.node_id:
                used[r.slot] += int(need[r.stage].size_bytes * 1.4) if r.stage in need else 0
        gpus = tuple(
            GPU(
                f"slot{i}",
                accelerator_memory_bytes,
                max(0, accelerator_memory_bytes - used.get(f"slot{i}", 0)),
            )
            for i in range(slots_of(node, accelerator))
        )
        cpu_used = sum(r.cpu for r in replicas if r.node_id == node.node_id)
        cache = caches.get(node.node_id) or KeysManager(max(1, node.object_store_bytes)).view()
        servers.append(
            ServerState(
                name=node.node_id,
                gpus=gpus,
                cache=cache,
                host_free_bytes=max(0, cache.capacity_bytes - cache.used_bytes),
                cpu_free_cores=max(0.0, node.resources.get("CPU", 0.0) - cpu_used),
            )
        )
    request = PlacementRequest(
        servers=tuple(servers),
        stages=tuple(stages),
        replicas=tuple(Replica(r.stage, r.node_id, r.slot, r.replica_id) for r in replicas),
        start={stage.key: 1},
    )
    plan = placer.place(request)
    if not plan.placements:
        why = "; ".join(i.reason for i in plan.infeasible) or "no feasible node"
        return f"placer {placer.name} found no node for {stage.key}: {why}"
    p = plan.placements[0]
    return p.server, p.gpu, f"{placer.name}: {p.reason}"

"""Small random placement instances, for comparing the greedy solver with the exact one.

One family shared by the benchmark (``benchmarks/placement_time.py``, which reports the
optimality gap) and the property tests (``tests/property/test_placement_props.py``, which
assert bounds on it), so both speak of the same instances: 1-4 stages of 1-6 GiB, 2-4
servers of 1-3 GPUs with 8-32 GiB, some stages cached or already running, 1-6 starts.
"""

from __future__ import annotations

import random

from quartfaas.control.placement.keys_manager import GIB
from quartfaas.control.placement.model import (
    GPU,
    PlacementRequest,
    Replica,
    StageReq,
    make_server,
)


def small_instance(rng: random.Random) -> PlacementRequest:
    """One instance drawn from ``rng`` (deterministic for a seeded ``Random``)."""
    stages = [
        StageReq(
            f"s{i}",
            int(rng.uniform(1, 6) * GIB),
            pipeline="p" if rng.random() < 0.7 else "",
            critical=rng.random() < 0.3,
        )
        for i in range(rng.randint(1, 4))
    ]
    servers = []
    for j in range(rng.randint(2, 4)):
        mem = rng.choice([8, 12, 24, 32]) * GIB
        gpus = tuple(
            GPU(f"g{g}", mem, int(mem * rng.uniform(0.3, 1.0)), rng.choice([0.7, 1.0, 1.4]))
            for g in range(rng.randint(1, 3))
        )
        host = rng.choice([8, 16, 32]) * GIB
        cached: dict[str, int] = {}
        for s in stages:
            if rng.random() < 0.3 and sum(cached.values()) + s.size_bytes <= 0.85 * host:
                cached[s.key] = s.size_bytes
        servers.append(make_server(f"n{j}", gpus=gpus, host_memory_bytes=host, cached=cached))
    replicas = []
    for s in stages:
        if rng.random() < 0.4:
            srv = rng.choice(servers)
            replicas.append(Replica(s.key, srv.name, rng.choice(srv.gpus).gpu_id))
    start: dict[str, int] = {}
    for _ in range(rng.randint(1, 6)):
        k = rng.choice(stages).key
        start[k] = start.get(k, 0) + 1
    return PlacementRequest(tuple(servers), tuple(stages), tuple(replicas), start=start)

"""The simulator's pre-fork pool model (sim/prefork_pool.py) and its hook in SimBackend."""

from __future__ import annotations

import numpy as np
import pytest

from quartfaas.clock import FakeClock
from quartfaas.control.backend import PoolScalable, StartTier, set_pool
from quartfaas.sim.backend import SimBackend
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.engine import Engine
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.prefork_pool import HANDOVER_S, PreforkPools


def test_pool_hands_over_warm_children_then_forks() -> None:
    p = PreforkPools(floor=1)
    tier, d = p.take("s", 0, 0.0, fork_delay_s=0.3, h2d_s=0.1)
    assert tier is StartTier.FORK and d == 0.3  # the first start makes the pool
    p.set_depth("s", 3, 1.0)  # the floor's child (forked at 0) and two more at 1.0
    assert p.status("s", 1.1).warm == 1 and p.status("s", 1.3).warm == 3
    got = [p.take("s", 0, 2.0, 0.3, 0.1) for _ in range(4)]
    assert [t for t, _ in got[:3]] == [StartTier.PREFORK] * 3
    assert got[0][1] == pytest.approx(HANDOVER_S + 0.1)
    # The fourth takes a refill child still warming: sooner than (or as soon as) a fork.
    assert got[3][0] is StartTier.FORK and got[3][1] <= 0.3
    p.set_depth("s", 1, 5.0)
    assert p.status("s", 5.0).idle == 1


def test_sim_backend_takes_starts_from_the_pool() -> None:
    pipe = pipeline_preset("llama-7b-me-5")
    n = 10
    engine = Engine(np.linspace(0.0, 50.0, n), np.full((pipe.num_stages, n), 0.01),
                    [100] * pipe.num_stages)  # fmt: skip
    clock = FakeClock()
    b = SimBackend(cluster_preset("small"), pipe, engine, clock)
    assert isinstance(b, PoolScalable)
    stage = pipe.stages[0].name
    b.start_replica(stage)  # cold: caches the stage on a server
    fork = b.start_replica(stage)
    assert fork.tier is StartTier.FORK
    assert set_pool(b, stage, 2)
    clock.set(30.0)
    engine.advance(30.0)
    st = b.pool_status(stage)
    assert st is not None and st.warm >= 2
    fast = b.start_replica(stage)
    assert fast.tier is StartTier.PREFORK  # placed on the server holding the template
    fork_s = next(e.seconds for e in b.events if e.replica_id == fork.replica_id)
    assert b.events[-1].seconds < fork_s  # no fork, no warm-up: only the h2d copy

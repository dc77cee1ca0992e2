"""The pre-fork pool with real processes: a pool of depth k hands over k children at once.

Deadlines come from speed measured in the same test (a fresh fork's start), never from a
fixed figure: the machine may be busy.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from helpers import tiny_bert_spec
from quartfaas.control.backend import PoolScalable, ReplicaState, set_pool
from quartfaas.runtime import EmbeddedRuntime

pytestmark = pytest.mark.timeout(240)


async def until(cond: Any, timeout_s: float) -> float:
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout_s:
            raise AssertionError(f"condition not met within {timeout_s:.1f} s")
        await asyncio.sleep(0.005)
    return time.monotonic() - t0


def test_pool_of_depth_k_hands_over_k_children_at_once(
    tmp_path: Any, kill_leftovers: list[str]
) -> None:
    from quartfaas.models import make_weights

    k = 3
    spec = tiny_bert_spec(tmp_path, name="pool", stages=1)
    spec = spec.model_copy(
        update={
            "stages": (spec.stages[0].model_copy(update={"max_replicas": 1 + 2 * k}),),
            "cache": spec.cache.model_copy(
                update={"prefork": 0, "prefork_refill_max_load_per_core": 0.0}
            ),
        }
    )
    make_weights(spec)

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt:
            kill_leftovers.append(str(rt.files.dir))
            stage = spec.stages[0].name
            backend = rt.backend
            assert isinstance(backend, PoolScalable)

            def ready() -> list[Any]:
                return [r for r in backend.list_replicas(stage) if r.state is ReplicaState.READY]

            # Speed of this machine now: one fresh fork (depth 0: nothing pre-forked).
            t_fork = time.monotonic()
            backend.start_replica(stage)
            await until(lambda: len(ready()) == 2, 60)
            t_fork = time.monotonic() - t_fork
            fresh = [r for r in ready() if r.tier is not None and r.tier.value == "fork"]
            assert fresh, [r.tier for r in ready()]

            assert set_pool(backend, stage, k)
            await until(
                lambda: (s := backend.pool_status(stage)) is not None and s.warm == k,
                60 + 20 * k * t_fork,
            )
            st = backend.pool_status(stage)
            assert st is not None and st.depth == k and st.idle == k
            assert st.child_private_bytes is not None and st.child_private_bytes > 0

            t0 = time.monotonic()
            for _ in range(k):
                backend.start_replica(stage)
            # k handovers together must beat k fresh forks one after another.
            took = await until(lambda: len(ready()) == 2 + k, 60)
            new = sorted(ready(), key=lambda r: r.requested_at)[2:]
            assert [r.tier.value for r in new if r.tier] == ["prefork"] * k
            assert took < max(k * t_fork, 0.05) + 0.5, (took, t_fork)
            assert time.monotonic() - t0 >= took
            # The pool refills to k at once (saturation is off here: 0 per core).
            await until(
                lambda: (s := backend.pool_status(stage)) is not None and s.warm == k,
                60 + 20 * k * t_fork,
            )
            # Shrinking retires the surplus idle children.
            set_pool(backend, stage, 1)
            await until(lambda: (s := backend.pool_status(stage)) is not None and s.idle == 1, 30)

    asyncio.run(main())

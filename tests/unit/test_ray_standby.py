"""The warm-standby rule (``backends/ray/standby.py``): pure, no Ray needed to decide."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from quartfaas.backends.ray.standby import StandbyStage, plan_standbys
from quartfaas.control.placement.prefork import PoolConfig, PoolInput, PoolState, decide_pool


def test_one_standing_standby_where_the_weights_are():
    plan = plan_standbys([StandbyStage("s0", live=1, max_replicas=4, holders=("B",))],
                         {"A": 3, "B": 2})  # fmt: skip
    assert [(a.stage, a.node_id, a.count) for a in plan.actions] == [("s0", "B", 1)]
    assert "holds the weights" in plan.actions[0].reason


def test_the_pool_depth_sets_how_many_up_to_the_headroom():
    s = StandbyStage("s0", live=2, max_replicas=4, depth=3, why="forecast",
                     holders=("A", "B"))  # fmt: skip
    plan = plan_standbys([s], {"A": 1, "B": 3})
    assert sum(a.count for a in plan.actions) == 2  # depth 3, capped at 2 = headroom
    assert plan.actions[0].node_id == "B"  # most free slots first
    assert "pool depth 3 (forecast)" in plan.actions[0].reason
    full = StandbyStage("s0", live=4, max_replicas=4, holders=("A",), waiting={"A": 1})
    retire = plan_standbys([full], {"A": 3}).actions
    assert [(a.node_id, a.count) for a in retire] == [("A", -1)]
    assert "max_replicas" in retire[0].reason
    # the pool shrank (depth 0): its standby is retired
    shrunk = StandbyStage("s0", live=1, max_replicas=4, depth=0, holders=("A",),
                          waiting={"A": 1})  # fmt: skip
    assert [(a.node_id, a.count) for a in plan_standbys([shrunk], {"A": 3}).actions] == [("A", -1)]


def test_the_depth_comes_from_the_prefork_pool_decision():
    """The number the keeper asks for is ``control/placement/prefork.decide_pool``'s."""
    cfg = PoolConfig(floor=1, max_depth=2)
    # the controller just stepped s0 from 1 to 2 replicas: the next step is expected too
    step = PoolInput("s0", target=2, current=1, max_replicas=8)
    (d,), _ = decide_pool([step], PoolState(), 0.0, cfg)
    s = StandbyStage("s0", live=2, max_replicas=8, depth=d.depth, why=d.reason,
                     holders=("A",))  # fmt: skip
    plan = plan_standbys([s], {"A": 4, "B": 4})
    assert d.depth == 1 and [(a.node_id, a.count) for a in plan.actions] == [("A", 1)]
    # a forecast of 4 over a target of 2: the decision asks 2 (its cap), the keeper too
    ahead = PoolInput("s0", target=2, current=2, max_replicas=8, forecast=4)
    (d2,), _ = decide_pool([ahead], PoolState(), 0.0, cfg)
    s2 = StandbyStage("s0", live=2, max_replicas=8, depth=d2.depth, holders=("A",))
    assert d2.depth == 2 and sum(a.count for a in plan_standbys([s2], {"A": 4}).actions) == 2


def test_no_standby_without_cached_weights_or_room():
    cold = plan_standbys([StandbyStage("s0", live=0, max_replicas=4)], {"A": 4})
    assert not cold.actions and "cold" in cold.notes[0]
    # the last free slot of the cluster stays for real replicas (keep_free=1)
    tight = plan_standbys([StandbyStage("s0", live=1, max_replicas=4, holders=("A",))],
                          {"A": 1, "B": 0})  # fmt: skip
    assert not tight.actions and "no holder has a free slot" in tight.notes[0]
    # already waiting: nothing to do
    have = StandbyStage("s0", live=1, max_replicas=4, holders=("A",), waiting={"A": 1})
    assert not plan_standbys([have], {"A": 3}).actions


def test_a_suspect_node_takes_no_standby_and_its_standbys_do_not_count():
    """A node under suspicion (a replica died there unasked) may be dying: new standbys go
    to another holder, and the ones waiting there are neither counted nor retired."""
    s = StandbyStage("s0", live=1, max_replicas=4, depth=1, holders=("A", "B"),
                     waiting={"A": 1})  # fmt: skip
    assert not plan_standbys([s], {"A": 3, "B": 3}).actions  # A's standby counts
    plan = plan_standbys([s], {"A": 3, "B": 3}, suspect={"A"})
    assert [(a.node_id, a.count) for a in plan.actions] == [("B", 1)]
    # the only holder is suspect: none placed, and the note names it
    only = StandbyStage("s0", live=1, max_replicas=4, holders=("A",))
    held = plan_standbys([only], {"A": 3, "B": 3}, suspect={"A"})
    assert not held.actions and "suspect: A" in held.notes[0]
    # a pool that shrank retires only what counts: not the standby on the suspect node
    shrunk = StandbyStage("s0", live=1, max_replicas=4, depth=0, holders=("A", "B"),
                          waiting={"A": 1, "B": 1})  # fmt: skip
    retire = plan_standbys([shrunk], {"A": 3, "B": 3}, suspect={"A"}).actions
    assert [(a.node_id, a.count) for a in retire] == [("B", -1)]


def test_the_keeper_hands_the_backends_suspect_nodes_to_the_rule():
    """``runtime.StandbyKeeper.tick`` with a fake runtime: the suspect node's standby does
    not count, so the keeper prewarms one on the other holder, not on the suspect node."""
    import asyncio
    from types import SimpleNamespace

    from helpers import synthetic_spec
    from quartfaas.backends.ray.runtime import StandbyKeeper

    spec = synthetic_spec(1, name="k")
    started: list[tuple[str, str, int]] = []

    class Backend:
        def __init__(self) -> None:
            self.pool_waiting: dict[str, str] = {}
            self.cache = SimpleNamespace(holders=lambda stage: ["A", "B"])

        def free_slots(self) -> dict[str, int]:
            return {"A": 3, "B": 3}

        def standbys(self) -> dict[tuple[str, str], int]:
            return {("k-s0", "A"): 1}

        def list_replicas(self, stage: str) -> list[object]:
            return []

        def pool_depth(self, stage: str) -> int:
            return 1

        def suspect_nodes(self) -> frozenset[str]:
            return frozenset(suspect)

        def retire_standby(self, stage: str, node: str, count: int) -> int:
            raise AssertionError("nothing to retire")

        async def prewarm(self, stage: str, node: str, count: int) -> int:
            started.append((stage, node, count))
            return count

    tasks: list[object] = []
    rt = SimpleNamespace(spec=spec, backend=Backend(), loop=None,
                         add_task=lambda coro, name: tasks.append(coro))  # fmt: skip
    suspect: set[str] = set()
    keeper = StandbyKeeper(rt)  # type: ignore[arg-type]
    keeper.tick()
    assert not tasks  # A's standby is the one wanted
    suspect.add("A")
    keeper.tick()
    assert len(tasks) == 1
    asyncio.run(tasks[0])  # type: ignore[arg-type]
    assert started == [("k-s0", "B", 1)]

"""The warm-standby rule (``backends/ray/standby.py``): pure, no Ray needed to decide."""

from __future__ import annotations

import pytest

pytest.importorskip("ray")

from quartfaas.backends.ray.standby import StandbyStage, plan_standbys


def test_one_standing_standby_where_the_weights_are():
    plan = plan_standbys([StandbyStage("s0", live=1, max_replicas=4, holders=("B",))],
                         {"A": 3, "B": 2})  # fmt: skip
    assert [(a.stage, a.node_id, a.count) for a in plan.actions] == [("s0", "B", 1)]
    assert "holds the weights" in plan.actions[0].reason


def test_controller_target_adds_standbys_up_to_the_cap_and_headroom():
    s = StandbyStage("s0", live=2, max_replicas=4, target=5, holders=("A", "B"))
    plan = plan_standbys([s], {"A": 1, "B": 3})
    assert sum(a.count for a in plan.actions) == 2  # 1 + 3 pending, capped at 2 = headroom
    assert plan.actions[0].node_id == "B"  # most free slots first
    full = StandbyStage("s0", live=4, max_replicas=4, holders=("A",), waiting={"A": 1})
    retire = plan_standbys([full], {"A": 3}).actions
    assert [(a.node_id, a.count) for a in retire] == [("A", -1)]
    assert "max_replicas" in retire[0].reason


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

"""Where warm standby actors wait (pure decision; applied by ``runtime.StandbyKeeper``).

A standby is a replica actor started ahead of demand (``RayBackend.prewarm``): its process
is up and torch imported, it holds the stage's resources, and it has no weights. A start
placed on its node takes it, so only the weights' mapping and a warm-up remain (an
object-store hit in ~0.2 s instead of seconds).

*How many* standbys a stage keeps is the pool decision of issue #15
(``control/placement/prefork.py``, the same one that sizes the local backend's pre-fork
pools): the control loop decides a depth per stage from its forecast (the replicas the
load measured upstream will need, the step just taken while load ramps), bounded below by
the standbys' floor and above by ``max_replicas - target`` and the standbys' cap, and
hands it to ``RayBackend.set_pool``; without a controller the depth is the floor. This
module decides *where* they wait, because on Ray a standby costs a slot (an accelerator
or whole CPUs), not cache memory:

1. Wanted per stage: the pool depth, never more than the stage's headroom
   ``max_replicas - live`` (a start that cannot come needs no standby).
2. Where: on nodes whose object store already holds the stage's weights (the
   cache-aware placer sends the next replica there, and ``weights.ObjectStoreCache`` is
   what the ``KeysManager`` views follow), the node with the most free slots first. A
   stage whose weights no node holds yet gets none: its first start is cold anyway.
3. A node takes a standby only while it has a free slot (accelerator slots, or whole
   CPUs, minus live replicas and standbys; the placer counts standbys as taken too), and
   ``keep_free`` slots stay free in the cluster for real replicas of other stages (a
   start of this stage takes its standby's slot).
4. Standbys beyond the wanted number are retired (the pool shrank, or the stage hit its
   maximum).
5. A *suspect* node (``RayBackend.suspects``: one of its replicas died unasked while Ray
   still lists it alive; it may be dying) takes no new standby, and the standbys waiting
   there do not count as waiting (a start does not take them, ``RayBackend._any_standby``),
   so the stage's standbys are made again on a node under no suspicion. They are not
   retired either: they die with the node, or count again once the suspicion ends.

Every action carries its reason; what could not be placed is a note (the pool status's
``waiting``); nothing here talks to Ray.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StandbyStage:
    """What the rule needs to know about one stage."""

    stage: str
    live: int  # replicas ready or starting
    max_replicas: int
    depth: int = 1  # standbys the pool decision asks for (control/placement/prefork.py)
    why: str = ""  # where the depth came from
    holders: tuple[str, ...] = ()  # nodes whose object store holds the weights
    waiting: Mapping[str, int] = field(default_factory=dict)  # standbys per node now


@dataclass(frozen=True, slots=True)
class StandbyAction:
    stage: str
    node_id: str
    count: int  # > 0: start this many; < 0: retire this many
    reason: str


@dataclass(frozen=True, slots=True)
class StandbyPlan:
    actions: tuple[StandbyAction, ...]
    notes: tuple[str, ...]  # why a wanted standby was not placed


def wanted(s: StandbyStage) -> tuple[int, str]:
    headroom = max(0, s.max_replicas - s.live)
    if headroom == 0:
        return 0, f"{s.stage} is at max_replicas ({s.max_replicas}): no start can come"
    want = min(headroom, max(0, s.depth))
    why = f"pool depth {s.depth}" + (f" ({s.why})" if s.why else "")
    return want, f"{s.stage}: {want} wanted ({why}; headroom {headroom})"


def plan_standbys(
    stages: Sequence[StandbyStage],
    free_slots: Mapping[str, int],
    *,
    keep_free: int = 1,
    suspect: Collection[str] = (),
) -> StandbyPlan:
    """Standbys to start and retire, per (stage, node), with reasons (``suspect``: nodes
    that take none and whose standbys do not count, rule 5)."""
    free = {n: (0 if n in suspect else k) for n, k in free_slots.items()}
    actions: list[StandbyAction] = []
    notes: list[str] = []
    for s in stages:
        want, why = wanted(s)
        waiting = {n: k for n, k in s.waiting.items() if n not in suspect}
        have = sum(waiting.values())
        if have > want:
            extra = have - want
            for node, n in sorted(waiting.items(), key=lambda kv: kv[0] in s.holders):
                k = min(n, extra)
                if k > 0:
                    actions.append(StandbyAction(s.stage, node, -k, f"retire: {why}"))
                    free[node] = free.get(node, 0) + k
                    extra -= k
            continue
        missing = want - have
        if missing <= 0:
            continue
        if not s.holders:
            notes.append(f"{s.stage}: no node holds its weights yet (a start would be cold)")
            continue
        for node in sorted(s.holders, key=lambda n: -free.get(n, 0)):
            room = min(free.get(node, 0), sum(free.values()) - keep_free)
            k = min(missing, max(0, room))
            if k > 0:
                reason = f"{why}; node {node[:8]} holds the weights, {free.get(node, 0)} free"
                actions.append(StandbyAction(s.stage, node, k, reason))
                free[node] = free.get(node, 0) - k
                missing -= k
            if missing == 0:
                break
        if missing:
            doubt = sorted(n for n in s.holders if n in suspect)
            notes.append(
                f"{s.stage}: {missing} standby(s) wanted but no holder has a free slot"
                + (f" (suspect: {', '.join(n[:8] for n in doubt)})" if doubt else "")
            )
    return StandbyPlan(tuple(actions), tuple(notes))

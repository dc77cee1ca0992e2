"""Where warm standby actors wait (pure decision; applied by ``runtime.StandbyKeeper``).

A standby is a replica actor started ahead of demand (``RayBackend.prewarm``): its process
is up and torch imported, it holds the stage's resources, and it has no weights. A start
placed on its node takes it, so only the weights' mapping and a warm-up remain (an
object-store hit in ~0.2 s instead of seconds). Standbys cost a slot each, so this rule
keeps few, and only where they turn a start into an object-store hit:

1. Wanted per stage: ``per_stage`` standing standbys (the next start of a burst), plus
   the starts the controller has asked for and not yet got (``target - live``), at most
   ``max_per_stage``, and never more than the stage's headroom ``max_replicas - live``
   (a start that cannot come needs no standby).
2. Where: on nodes whose object store already holds the stage's weights (the
   cache-aware placer sends the next replica there, and ``weights.ObjectStoreCache`` is
   what the ``KeysManager`` views follow), the node with the most free slots first. A
   stage whose weights no node holds yet gets none: its first start is cold anyway.
3. A node takes a standby only while it has a free slot (accelerator slots, or whole
   CPUs, minus live replicas and standbys; the placer counts standbys as taken too), and
   ``keep_free`` slots stay free in the cluster for real replicas of other stages (a
   start of this stage takes its standby's slot).
4. Standbys beyond the wanted number are retired (the stage shrank, or hit its maximum).

Every action carries its reason; nothing here talks to Ray.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class StandbyStage:
    """What the rule needs to know about one stage."""

    stage: str
    live: int  # replicas ready or starting
    max_replicas: int
    target: int | None = None  # the controller's last target (None: no decision yet)
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


def wanted(s: StandbyStage, per_stage: int, max_per_stage: int) -> tuple[int, str]:
    headroom = max(0, s.max_replicas - s.live)
    pending = max(0, (s.target if s.target is not None else s.live) - s.live)
    want = min(headroom, max_per_stage, per_stage + pending)
    if headroom == 0:
        return 0, f"{s.stage} is at max_replicas ({s.max_replicas}): no start can come"
    why = f"{per_stage} standing"
    if pending:
        why += f" + {pending} the controller asked for (target {s.target}, live {s.live})"
    return want, f"{s.stage}: {want} wanted ({why}; cap {max_per_stage}, headroom {headroom})"


def plan_standbys(
    stages: Sequence[StandbyStage],
    free_slots: Mapping[str, int],
    *,
    per_stage: int = 1,
    max_per_stage: int = 2,
    keep_free: int = 1,
) -> StandbyPlan:
    """Standbys to start and retire, per (stage, node), with reasons."""
    free = dict(free_slots)
    actions: list[StandbyAction] = []
    notes: list[str] = []
    for s in stages:
        want, why = wanted(s, per_stage, max_per_stage)
        have = sum(s.waiting.values())
        if have > want:
            extra = have - want
            for node, n in sorted(s.waiting.items(), key=lambda kv: kv[0] in s.holders):
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
            notes.append(f"{s.stage}: {missing} standby(s) wanted but no holder has a free slot")
    return StandbyPlan(tuple(actions), tuple(notes))

"""CPU Compensator: give the survivors of a consolidation more CPU in place, step by step.

When a stage loses replicas (the Pipeline Smoother consolidates it) each survivor gets a
larger share of the load; when a replica is CPU-bound (utilisation near its quota while the
stage's tail latency is over budget) it is short of CPU. Either way the compensator raises
the CPU per replica *in place* (cgroup quota / thread count / pod resize, applied by
``backends/cpu.py`` through ``Backend.set_cpu``), never by restarting a replica.

Per stage it runs a small state machine across controller ticks (never a sleep):

    idle ──trigger──► raising ──settle_s elapsed──► evaluate ─┬─ raise again (increment/2)
      ▲                                                      ├─ hold (budget met, cap,
      │                                                      │        max_steps, converged)
      └───── give back (utilisation low for release_after_s) ┴─ stop: revert the step that
                             ◄── holding ◄────────────────────        gained < 5%

The first raise is ``max(min_increment, increment_ratio·(C_req − C_cur))`` with ``C_req``
from the demand model (``cpu_demand.py``, Quart Eq. 7-10); later raises halve it,
as the prototype's Algorithm 2. Unlike the prototype (see the reference notes, §1.3 and §6
items 10-14) it does not block, it reports exactly what it applied, and a step that did
not pay is taken back.

It does not credit the corrector's work to CPU: when a stage's replica count changes while
a raise is settling, the latency change mixes both, so the settle period restarts at the
new count and the raise is then judged against the budget only (its gain is not measured).
The cap is ``CompensatorConfig.cap_cpu``: ``max_cpu`` bounded by the host's cores, which
``QuartPolicy`` fills in (live: the machine's, ``quartfaas.hostcores``; simulated: the
server's).

``CpuCompensator.apply`` post-processes a policy's ``Decision``: it sets
``cpu_per_replica`` and appends reasons, and never changes a replica count. It reads
``StageSnapshot.cpu_utilisation`` as *cores used per replica / cpu_per_replica*.
Pure: no clock, no I/O; ``now`` comes from the snapshot.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import replace

from quartfaas.control.compensator.config import CompensatorConfig
from quartfaas.control.compensator.cpu_demand import DemandModel
from quartfaas.control.compensator.state import (
    CompensatorState,
    Phase,
    StageCpuState,
)
from quartfaas.control.policy import Decision, StageDecision
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot

__all__ = ["CpuCompensator", "compensate"]

_EPS = 1e-9


_IDLE = StageCpuState()  # frozen: one instance serves every idle stage


def _tail(stage: StageSnapshot, cfg: CompensatorConfig) -> float | None:
    if stage.latency.count < cfg.min_latency_samples:
        return None
    return stage.latency.quantile(cfg.percentile)


def _fmt(x: float | None, unit: str = "s") -> str:
    return "n/a" if x is None else f"{x:.3g}{unit}"


def _start(
    *,
    base: float,
    start_cpu: float,
    replicas_before: int,
    replicas_after: int,
    latency: float | None,
    comparable: bool,
    trigger: str,
    now: float,
    cfg: CompensatorConfig,
    model: DemandModel,
) -> tuple[float | None, str, StageCpuState]:
    lc = max(1.0, replicas_before / max(1, replicas_after))
    demand = model.demand(base, lc)
    episode = StageCpuState(
        phase=Phase.HOLDING,
        base_cpu=base,
        cpu=start_cpu,
        since=now,
        replicas_before=replicas_before,
        replicas_at_step=replicas_after,
        concentration=lc,
        demand_cpu=demand,
    )
    if start_cpu >= cfg.cap_cpu - _EPS:
        why = f"cpu: {trigger} but already at the cap ({cfg.cap_cpu:g} cores); add replicas"
        return start_cpu, why, replace(episode, outcome="at-cap")
    inc = max(cfg.min_increment, cfg.increment_ratio * (demand - start_cpu))
    proposed = cfg.clamp(start_cpu + inc)
    nxt = replace(
        episode,
        phase=Phase.RAISING,
        proposed_cpu=proposed,
        increment=inc,
        steps=1,
        latency_before_s=latency,
        comparable=comparable,
    )
    why = (
        f"cpu {start_cpu:.3g}->{proposed:.3g} cores/replica: {trigger}, λc={lc:.2f}, "
        f"demand {demand:.3g} ({model.source}); step 1/{cfg.max_steps}, "
        f"settle {cfg.settle_s:g}s"
    )
    return proposed, why, nxt


def _evaluate(
    st: StageCpuState,
    latency: float | None,
    budget: float | None,
    now: float,
    cfg: CompensatorConfig,
) -> tuple[float | None, str, StageCpuState]:
    assert st.proposed_cpu is not None
    alloc = st.proposed_cpu

    def hold(cpu: float, outcome: str, why: str) -> tuple[float, str, StageCpuState]:
        nxt = replace(st, phase=Phase.HOLDING, cpu=cpu, proposed_cpu=None, outcome=outcome)
        if cpu != alloc:
            nxt = replace(nxt, since=now)
        return cpu, why, nxt

    if latency is None:
        return hold(alloc, "no-data", f"cpu: holding {alloc:.3g} cores: no latency samples")
    tail = f"p{round(cfg.percentile * 100)} {_fmt(latency)}"
    if budget is not None and latency <= budget:
        return hold(alloc, "met-budget", f"cpu: holding {alloc:.3g} cores: {tail} <= {budget:g}s")
    before = st.latency_before_s
    if not st.comparable or before is None or before <= 0:
        # The first step after a consolidation is judged against the budget (or, without
        # one, against the latency before the consolidation): the replica count changed
        # too, so the latency change does not measure what the CPU bought.
        if budget is None and before is not None and latency <= before:
            why = f"cpu: holding {alloc:.3g} cores: {tail} no worse than before ({before:.3g}s)"
            return hold(alloc, "met-budget", why)
        gained = "n/a"
    else:
        improvement = (before - latency) / before
        if improvement < cfg.improvement_threshold:
            why = (
                f"cpu {alloc:.3g}->{st.cpu:.3g}: the last raise cut {tail} by "
                f"{improvement:.1%} < {cfg.improvement_threshold:.0%}; taken back, holding"
            )
            return hold(st.cpu, "no-gain", why)
        gained = f"{improvement:.1%}"
    inc = st.increment / 2.0
    if st.steps >= cfg.max_steps:
        return hold(alloc, "max-steps", f"cpu: holding {alloc:.3g} cores after {st.steps} steps")
    if alloc >= cfg.cap_cpu - _EPS:
        why = f"cpu: holding at the cap ({alloc:.3g} cores), {tail} over budget; add replicas"
        return hold(alloc, "at-cap", why)
    if inc < cfg.stop_increment:
        return hold(alloc, "converged", f"cpu: holding {alloc:.3g} cores: increment {inc:.3g}")
    proposed = cfg.clamp(alloc + inc)
    nxt = replace(
        st,
        cpu=alloc,
        proposed_cpu=proposed,
        increment=inc,
        steps=st.steps + 1,
        since=now,
        latency_before_s=latency,
        comparable=True,
    )
    why = (
        f"cpu {alloc:.3g}->{proposed:.3g} cores/replica: {tail} still over budget, last "
        f"raise gained {gained}; step {nxt.steps}/{cfg.max_steps}"
    )
    return proposed, why, nxt


def _holding(
    st: StageCpuState,
    *,
    stage: StageSnapshot,
    latency: float | None,
    budget: float | None,
    now: float,
    cfg: CompensatorConfig,
) -> tuple[float | None, str, StageCpuState]:
    alloc = st.cpu
    util = stage.cpu_utilisation
    calm = latency is None or budget is None or latency <= budget
    if util is None or util >= cfg.release_utilisation_frac or not calm:
        return alloc, "", st if st.low_since is None else replace(st, low_since=None)
    low_since = now if st.low_since is None else st.low_since
    # (the same state object when nothing changed: most stages, most ticks)
    kept = st if st.low_since == low_since else replace(st, low_since=low_since)
    if now - low_since < cfg.release_after_s:
        return alloc, "", kept
    used = util * stage.cpu_per_replica
    target = cfg.clamp(max(st.base_cpu, used / cfg.release_headroom_frac))
    why = (
        f"cpu {alloc:.3g}->{target:.3g} cores/replica: utilisation {util:.0%} < "
        f"{cfg.release_utilisation_frac:.0%} for {now - low_since:.0f}s; given back"
    )
    if target <= cfg.clamp(st.base_cpu) + _EPS:
        return target, why, StageCpuState()
    if alloc - target >= cfg.min_increment - _EPS:
        return target, why, replace(st, cpu=target, since=now, low_since=None)
    return alloc, "", kept


def compensate(  # noqa: PLR0917 - the positional order is the issue's contract
    stage: StageSnapshot,
    stage_budget_s: float | None,
    prev_replicas: int,
    state: StageCpuState,
    now: float,
    cfg: CompensatorConfig,
    model: DemandModel | None = None,
    *,
    new_replicas: int | None = None,
) -> tuple[float | None, str, StageCpuState]:
    """One tick of one stage: ``(target cores per replica or None, reason, next state)``.

    ``prev_replicas`` is the stage's replica count before this tick's decision and
    ``new_replicas`` the count after it (default ``stage.replicas``); fewer after than
    before is a consolidation. ``None`` means the compensator owns no allocation here.
    A non-empty reason accompanies every change of the returned target.
    """
    model = model or DemandModel.prototype()
    after = stage.replicas if new_replicas is None else new_replicas
    if after <= 0:
        if state.phase is Phase.IDLE:
            return None, "", state
        return None, "cpu: stage has no replicas; compensation reset", StageCpuState()
    util = stage.cpu_utilisation
    active = state.phase is not Phase.IDLE
    if not active and after >= prev_replicas and (util is None or util < cfg.busy_utilisation_frac):
        # Idle, no consolidation, not busy (so not CPU-bound): nothing to do, the answer of
        # the full path below (most stages on most ticks), without reading the tail.
        return None, "", state
    latency = _tail(stage, cfg)
    current = state.allocation if active else None
    start_cpu = cfg.clamp(current if current is not None else stage.cpu_per_replica)
    base = state.base_cpu if active else stage.cpu_per_replica

    if after < prev_replicas:
        before = state.replicas_before if active else prev_replicas
        lc = max(1.0, before / after)
        if util is not None and util * prev_replicas / after < cfg.busy_utilisation_frac:
            why = (
                f"cpu: consolidation {prev_replicas}->{after} leaves predicted CPU "
                f"utilisation {util * prev_replicas / after:.0%} < "
                f"{cfg.busy_utilisation_frac:.0%}; no raise"
            )
            return current, why, state
        return _start(
            base=base,
            start_cpu=start_cpu,
            replicas_before=before,
            replicas_after=after,
            latency=latency,
            comparable=False,
            trigger=f"consolidation {prev_replicas}->{after} (λc {lc:.2f})",
            now=now,
            cfg=cfg,
            model=model,
        )

    cpu_bound = (
        util is not None
        and util >= cfg.busy_utilisation_frac
        and latency is not None
        and stage_budget_s is not None
        and latency > stage_budget_s
    )
    rearm = state.phase is Phase.HOLDING and now - state.since >= cfg.release_after_s
    if cpu_bound and (not active or rearm):
        return _start(
            base=base,
            start_cpu=start_cpu,
            replicas_before=after,
            replicas_after=after,
            latency=latency,
            comparable=True,
            trigger=f"CPU-bound (utilisation {util:.0%}, tail {_fmt(latency)} > "
            f"{stage_budget_s:g}s)",
            now=now,
            cfg=cfg,
            model=model,
        )
    if state.phase is Phase.IDLE:
        return None, "", state
    if state.phase is Phase.RAISING:
        if state.replicas_at_step and after != state.replicas_at_step:
            why = (
                f"cpu: replicas {state.replicas_at_step}->{after} while a raise settles: "
                f"the latency change is not the CPU's; settle restarts ({cfg.settle_s:g}s), "
                "gain not measured"
            )
            paused = replace(state, since=now, comparable=False, replicas_at_step=after)
            return current, why, paused
        if now < state.since + cfg.settle_s:
            return current, "", state
        target, why, nxt = _evaluate(state, latency, stage_budget_s, now, cfg)
        if nxt.phase is Phase.RAISING:
            nxt = replace(nxt, replicas_at_step=after)
        return target, why, nxt
    return _holding(state, stage=stage, latency=latency, budget=stage_budget_s, now=now, cfg=cfg)


def _join(a: str, b: str) -> str:
    return b if not a else f"{a}; {b}"


class CpuCompensator:
    """Post-processor of a policy's ``Decision``: CPU per replica, never replica counts."""

    name = "cpu-compensator"

    def __init__(
        self, cfg: CompensatorConfig | None = None, model: DemandModel | None = None
    ) -> None:
        self.cfg = cfg or CompensatorConfig()
        self.model = model or DemandModel.prototype()

    def initial_state(self, snapshot: PipelineSnapshot) -> CompensatorState:
        """Every stage idle: a restarted controller owns no allocation until it triggers."""
        return CompensatorState(tuple((s.name, StageCpuState()) for s in snapshot.stages))

    def apply(
        self,
        decision: Decision,
        snapshot: PipelineSnapshot,
        budgets: Mapping[str, float] | Sequence[float],
        state: CompensatorState,
    ) -> tuple[Decision, CompensatorState]:
        """``decision`` with ``cpu_per_replica`` set where compensating, and the next state.

        ``budgets`` are the stages' tail budgets in seconds, by name or in stage order (the
        budgets the corrector's joint plan derives, ``StageTarget.budget_s``); a stage
        without one is never judged CPU-bound, and its raises are judged by latency alone.

        A held decision is not applied by the loop, so the compensator does not advance
        either. A stage whose decision already carries a CPU target is left alone.
        """
        if decision.hold or not snapshot.has_data:
            return decision, state
        # A latency window that still holds samples from before a change would mix the
        # two allocations, so a change is judged no sooner than one window after it.
        cfg = self.cfg
        if snapshot.window_s > cfg.settle_s:
            cfg = cfg.model_copy(update={"settle_s": snapshot.window_s})
        by_name = {s.name: s for s in reversed(snapshot.stages)}  # the first of a name
        names = by_name.keys()
        if not isinstance(budgets, Mapping):
            budgets = {s.name: b for s, b in zip(snapshot.stages, budgets, strict=False)}
        out: list[StageDecision] = []
        states: dict[str, StageCpuState] = {n: st for n, st in state.stages if n in names}
        for d in decision.stages:
            if d.stage not in names or d.cpu_per_replica is not None:
                out.append(d)
                continue
            stage = by_name[d.stage]
            st = states.get(d.stage, _IDLE)
            target, why, st = compensate(
                stage,
                budgets.get(d.stage),
                d.current,
                st,
                snapshot.now,
                cfg,
                self.model,
                new_replicas=d.replicas,
            )
            states[d.stage] = st
            if target is not None and not math.isclose(target, stage.cpu_per_replica):
                why = why or f"cpu {target:.3g} cores/replica ({st.phase.value})"
            if target is None and not why:  # nothing to set (most stages, most ticks)
                out.append(d)
                continue
            out.append(d.with_cpu(target, _join(d.reason, why) if why else d.reason))
        return replace(decision, stages=tuple(out)), CompensatorState(tuple(states.items()))

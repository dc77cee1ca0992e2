"""The Replica Corrector: one joint replica plan for the pipeline, corrected by feedback.

Neighbours: implements the ``Policy`` protocol of ``policy.py`` on a ``PipelineSnapshot``
(``snapshot.py``) with a ``ControllerConfig`` (``config.py``). It reads each stage's inputs
(``inputs.py``), corrects them with what it learned (``feedback.py``), sizes the whole
pipeline at once (``planner.py`` on the end-to-end tail model of ``tailmodel.py``), turns the
plan into actions (``hysteresis.py``) and applies ``guards.py``. ``quart.py`` feeds it the
Pipeline Smoother's arrival forecast (``inputs.ArrivalForecast``) and hands its targets to
the CPU Compensator. Pure: no I/O, no clock; ``now`` is ``snapshot.now``.

Per tick (issue 12):

1. **inputs** per stage: measured rate λ, service mean and SCV (remembered over about
   ``service_memory_samples`` completions, ``servicememory.py``: one window of a
   low-rate stage holds too few), arrival SCV; the forecast
   (if given) raises λ and the burst factor for the horizon in which the burst now upstream
   reaches the stage. A stage with no known rate, or arrivals but no measured service
   time, is not planned: it keeps its count and its measured tail is taken off the SLO.
2. **feedback** (at most every ``feedback.min_dt_s``): on stages whose count has not
   changed for a window and that have no replica starting, the measured sojourn tail at the
   SLO's percentile (the stored quantile ``LatencyStats`` has: p50/p95/p99, labelled as
   read) is compared with the model's at the *same* quantile and the ready count; the
   learned service-time factor moves toward the ratio (filtered, bounded, ``feedback.py``).
   Stages without enough samples (fewer than ``1/(1-q)``) take the end-to-end error.
3. **plan**: ``plan_replicas`` finds the cheapest replica vector whose modelled
   end-to-end quantile at ``percentile`` meets the SLO, with the *measured* load's
   utilisation at most ``target_utilisation`` (``inputs.capacity_floor``) and the
   corrected load (service time times the learned factor) stable. The cap used to apply
   to the corrected load too; that margin on a margin added a replica on short peaks
   whose measured utilisation was well under the target: on the paper cluster
   (``benchmarks/policy_compare.py``, azure-conv at 100 req/s, 5 seeds) 6,717 GPU-seconds
   against 6,475 without it, SLO attainment 100% both. The per-stage budgets are an
   *output* (each stage's modelled sojourn quantile at the plan). When service times alone
   leave no room under the SLO the plan is made for 1.25x the service-only quantile
   instead, and the reason says so (more replicas cannot help a request that is slow on
   an idle replica).
4. **backlog**: a *growing* queue ``Q`` (arrivals outpace departures or capacity,
   ``budget.queue_growing``) must drain within one measurement window ``W`` on top of
   arrivals, so at least ``ceil((λ + Q/W)/(μ·max_concurrency))`` replicas (not while
   replicas are starting: they are already counted). This is the catch-up after an
   overload; the queues of steady load are the tail the model plans for (draining them
   within the stage budget instead flipped counts up and down at constant load).
5. **hysteresis** (``hysteresis.step``): up at once, down only after the plan has asked
   for fewer for ``downscale_delay_s`` (and then to the highest count asked for meanwhile);
   replicas already starting count. "Fewer" is judged against a second plan for
   ``1 + downscale_headroom_frac`` times the load (made only on ticks where some stage's
   plan is below its count; ``planner.plan_above_at``: the search resumed from this tick's
   plan on the planner's grid, so never below it, without a second reference check, which
   took a third of the tick): a Schmitt trigger in the load domain, so measurement noise at
   a boundary does not flip a count back and forth. The band is at least three standard
   errors of the measured load ``λ·E[S]`` over the window (``3·sqrt(2/N)`` for ``N``
   arrivals, rate and mean each contributing ``1/sqrt(N)``; ``N = λ·T``, ``T`` the time
   the measured rate covers, ``inputs.observed_s``: the window ``W``, or less while it is
   younger than ``W``, after a gateway or a simulation starts): 10 s of 20 req/s move it by
   ~10% a standard error, of 5 req/s by ~20% (``_DOWN_Z``: with two, the defaults moved a
   stage twice in 10 minutes at constant load). (A band in the SLO instead was too narrow
   near saturation, where the tail is steep in the load.) The upper threshold mirrors
   it: a scale-up is made at once only if a third plan, for the load *less* the noise band
   alone (two standard errors: rate and the arrival and service SCVs divided by
   ``1 + 2·sqrt(2/N)``), also asks for more, or
   the queue is growing, or the smoother forecasts a burst above the noise
   (``_forecast_above_noise``); an increase within the noise waits
   ``upscale_confirm_s`` (hysteresis; off by default). A rise clear at a stage is clear
   for the stages after it: a burst reaches them in order, and their own windows hold
   too few requests to call it clear (without this rule a live emulated pipeline's
   downstream stages waited 20 s into a burst: 72.6% of requests within the SLO against
   100% with the option off; with it 98.2%). At 5 req/s a stage flapped 2<->3 ten times
   in 30 minutes, driven by 10 s windows of ~50 service samples; the service memory
   (step 1) takes that share away, and the three-standard-error down band the arrival
   rate's (``benchmarks/flapping.py``: at most 1 move of a stage in 10 minutes by default
   and with ``upscale_confirm_s`` 10 s). The option stays opt-in because it delays
   scale-ups early in a burst (live emulated pipeline: 97.5-98.2% against 100%).
6. **guards**, in this order: rate limits (``max_step_up``/``max_step_down``), bounds,
   cooldowns (``up_cooldown_s``, and no scale-down within ``down_cooldown_s`` of a change).
   A scale-down cut short by ``max_step_down`` keeps its low period, so it continues on
   the next tick instead of waiting another delay.

Each stage's reason says the plan (quantile vs SLO), its inputs, the derived budget, the
learned factor and what hysteresis and the guards did. Missing data holds everything
(reason ``no-data``). A restarted corrector counts ``now`` as its last scale-down.

(Over 400 lines: a quarter is this description of the tick; the rest is the tick's
wiring and its reasons. The maths is in the modules named above.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import feedback as fb
from quartfaas.control.corrector.budget import assess_stage, queue_growing
from quartfaas.control.corrector.guards import (
    GuardLimits,
    GuardMemory,
    bounds,
    cooldown,
    note_action,
    rate_limit,
)
from quartfaas.control.corrector.hysteresis import HysteresisState
from quartfaas.control.corrector.hysteresis import step as hysteresis_step
from quartfaas.control.corrector.inputs import (
    NO_DATA,
    ArrivalForecast,
    PlanInputs,
    capacity_floor,
    finite,
    floor_at,
    read_inputs,
    read_tail,
    service_rate,
)
from quartfaas.control.corrector.planner import Plan, PlanOutcome, plan_above_at, plan_replicas
from quartfaas.control.corrector.servicememory import ServiceMemory, remember
from quartfaas.control.corrector.stagetails import stage_quantiles
from quartfaas.control.corrector.tailmodel import StageLoad, e2e_quantile
from quartfaas.control.corrector.targets import (
    CorrectorState,
    CorrectorTargets,
    StageState,
    StageTarget,
)
from quartfaas.control.policy import Decision
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot

SERVICE_FLOOR_MARGIN = 1.25  # plan for this times the service-only quantile when it > SLO
_FEEDBACK_GRID = 128  # grid of the per-stage modelled quantile the feedback compares


class ReplicaCorrector:
    """Quart's Replica Corrector as a pure ``Policy`` (name ``"quart-corrector"``)."""

    name = "quart-corrector"

    def __init__(self, config: ControllerConfig | None = None) -> None:
        self.cfg = config if config is not None else ControllerConfig.model_validate({})
        f = self.cfg.feedback
        self.fb_cfg = fb.FeedbackConfig(f.time_constant_s, f.min_dt_s, f.max_dt_s, f.max_rel)
        self._limits_cache: dict[tuple[int, int], GuardLimits] = {}

    # ------------------------------------------------------------------ helpers

    def hold_reason(self, snapshot: PipelineSnapshot) -> str | None:
        """Why this snapshot cannot be planned on (None: it can)."""
        if not snapshot.has_data:
            return f"{NO_DATA}: no measurements"
        age = snapshot.data_age_s
        if age is not None and age > self.cfg.stale_after_s:
            return f"{NO_DATA}: metrics {age:.1f}s old > stale_after_s {self.cfg.stale_after_s:g}s"
        if not snapshot.stages:
            return f"{NO_DATA}: no stages"
        if not snapshot.slo_p99_s > 0:  # a bad spec must not crash the loop every tick
            return f"hold: slo_p99_s must be > 0 s, got {snapshot.slo_p99_s}"
        return None

    def _aligned(self, snapshot: PipelineSnapshot, state: CorrectorState) -> list[StageState]:
        """State per snapshot stage (by name); stages new to the state start fresh."""
        stages = snapshot.stages
        old = state.stages
        if len(old) == len(stages) and all(
            o.name == s.name for o, s in zip(old, stages, strict=True)
        ):
            return list(old)
        by_name = {o.name: o for o in old}
        fresh = GuardMemory(last_down_s=snapshot.now)
        return [by_name.get(s.name) or StageState(s.name, guard=fresh) for s in stages]

    def _limits(self, s: StageSnapshot) -> GuardLimits:
        key = (s.min_replicas, s.max_replicas)
        limits = self._limits_cache.get(key)
        if limits is None:
            limits = GuardLimits.from_config(self.cfg, *key)
            self._limits_cache[key] = limits
        return limits

    def _remembered(
        self, snapshot: PipelineSnapshot, olds: Sequence[StageState]
    ) -> tuple[PipelineSnapshot, list[ServiceMemory | None]]:
        """The snapshot with each stage's service mean and SCV from its memory
        (``servicememory.py``), and the updated memories."""
        samples = self.cfg.service_memory_samples
        if samples <= 0:
            return snapshot, [None] * len(snapshot.stages)
        stages: list[StageSnapshot] = []
        memories: list[ServiceMemory | None] = []
        for s, st in zip(snapshot.stages, olds, strict=True):
            s2, mem = remember(
                s,
                st.service,
                snapshot.now,
                snapshot.window_s,
                samples=samples,
                max_age_s=self.cfg.service_memory_max_s,
            )
            stages.append(s2)
            memories.append(mem)
        if all(a is b for a, b in zip(stages, snapshot.stages, strict=True)):
            return snapshot, memories  # every window used as it is
        return replace(snapshot, stages=tuple(stages)), memories

    # ------------------------------------------------------------------ feedback

    def _feedback(
        self,
        snapshot: PipelineSnapshot,
        state: CorrectorState,
        olds: Sequence[StageState],
        inp: PlanInputs,
    ) -> tuple[fb.FeedbackState, str]:
        cfg = self.fb_cfg
        last = state.feedback.last_now
        now = snapshot.now
        if last is not None and now - last < cfg.min_dt_s:
            return state.feedback, ""
        corrected = fb.corrected(inp.measured, state.feedback)
        obs: list[fb.TailObservation] = []
        ready: list[int] = []
        label = ""
        asks: dict[float, list[tuple[int, float]]] = {}  # q -> (obs index, measured tail)
        for j, i in enumerate(inp.planned):
            s = snapshot.stages[i]
            ready.append(s.ready_replicas)
            tail, q_read = read_tail(s.latency, self.cfg.percentile)
            label = f"p{q_read * 100:g}"
            changed = olds[i].changed_s
            steady = (
                s.starting_replicas == 0
                and s.ready_replicas > 0
                and (changed is None or now - changed >= snapshot.window_s)
                and inp.measured[j].arrival_rate > 0
            )
            enough = s.latency.count >= math.ceil(1.0 / (1.0 - q_read) - 1e-9)
            if not (steady and enough and tail is not None):
                obs.append(fb.TailObservation(s.name, None, None))
                continue
            asks.setdefault(q_read, []).append((len(obs), tail))
            obs.append(fb.TailObservation(s.name, tail, None))
        for q_read, ask in asks.items():  # the modelled tails, one batch per quantile read
            at = [k for k, _ in ask]  # obs, ready and corrected share the index
            models = stage_quantiles(
                [corrected[k] for k in at], [ready[k] for k in at], q_read, grid=_FEEDBACK_GRID
            )
            for (k, tail), model in zip(ask, models, strict=True):
                finite_model = model if math.isfinite(model) else None
                obs[k] = fb.TailObservation(obs[k].name, tail, finite_model)
        e2e_meas = e2e_model = None
        missing = any(o.measured_s is None for o in obs)
        if missing and not inp.fixed and obs and all(c > 0 for c in ready):
            e2e, q_read = read_tail(snapshot.e2e, self.cfg.percentile)
            if e2e is not None and snapshot.e2e.count >= math.ceil(1.0 / (1.0 - q_read) - 1e-9):
                busy = all(s.starting_replicas == 0 for s in snapshot.stages)
                if busy:
                    e2e_meas = e2e
                    e2e_model = e2e_quantile(corrected, ready, q_read, grid=256)
                    if not math.isfinite(e2e_model):
                        e2e_meas = e2e_model = None
        fsnap = fb.FeedbackSnapshot(now, tuple(obs), e2e_meas, e2e_model)
        new, why = fb.update(state.feedback, fsnap, cfg)
        return new, f"{why} ({label or 'tail'} measured vs modelled)"

    # ------------------------------------------------------------------ plan

    def _plan(self, loads: Sequence[StageLoad], slo_s: float) -> tuple[Plan, str]:
        q = self.cfg.percentile
        # ``target_utilisation`` is already in ``loads``: ``capacity_floor`` raised each
        # stage's ``min_replicas`` so its *measured* load stays under it. The planner's own
        # start asks only for stability (utilisation 1) of these loads, whose service times
        # carry the learned factor: capping the factor-inflated load at the target again
        # counted the model's error twice (module docstring, step 3).
        util = 1.0
        plan = plan_replicas(loads, slo_s, q, max_util=util)
        if plan.outcome is not PlanOutcome.INFEASIBLE:
            return plan, ""
        overloaded = any(s.max_replicas * s.servers_per_replica <= s.offered_load for s in loads)
        if overloaded:
            return plan, ""
        idle = [replace(s, arrival_rate=0.0) for s in loads]
        floor_s = e2e_quantile(idle, [1] * len(loads), q, grid=256)
        relaxed = max(slo_s, SERVICE_FLOOR_MARGIN * floor_s)
        if relaxed <= slo_s:
            return plan, ""
        again = plan_replicas(loads, relaxed, q, max_util=util)
        note = (
            f"service alone has a p{q * 100:g} of {floor_s:.3g}s (SLO {slo_s:.3g}s): "
            f"planned for {relaxed:.3g}s"
        )
        return again, note

    def _banded_plan(
        self,
        snapshot: PipelineSnapshot,
        inp: PlanInputs,
        loads: Sequence[StageLoad],
        plan: Plan | None,
        fb_state: fb.FeedbackState,
        *,
        sign: int,
    ) -> tuple[int, ...] | None:
        """The replicas for the load moved by its noise band (``sign`` +1: up, the lower
        threshold of the Schmitt trigger, made when some stage's plan is below its count:
        ``_above_band``, ``planner.plan_above_at`` the plan; -1: down, the upper
        threshold, made when some stage's plan is above it: a plan of its own; step 5)."""
        frac = self.cfg.downscale_headroom_frac
        if plan is None or frac <= 0.0:
            return None
        counts = [snapshot.stages[i].replicas for i in inp.planned]
        if sign > 0:
            needed = any(p < c for p, c in zip(plan.replicas, counts, strict=True))
        else:
            needed = self.cfg.upscale_confirm_s > 0 and any(
                p > c for p, c in zip(plan.replicas, counts, strict=True)
            )
        if not needed:
            return None
        if sign > 0:
            return _above_band(inp.loads, loads, plan, inp.spans, frac=frac, cfg=self.cfg)
        factors = dict(fb_state.factors)  # fb.corrected, in the same pass
        moved = []
        for s, span in zip(inp.loads, inp.spans, strict=True):
            # the upper threshold: the measurement noise alone
            band = _band(0.0, s.arrival_rate * span, _UP_Z)
            scale = 1.0 / (1.0 + band)
            rate = s.arrival_rate * scale
            # the variabilities come from as few samples as the load
            load = replace(
                s,
                service_scv=s.service_scv * scale,
                arrival_scv=s.arrival_scv * scale,
                burst_factor=None if s.burst_factor is None else s.burst_factor * scale,
            )
            moved.append(
                floor_at(
                    load.with_load(rate, s.service_mean_s * factors.get(s.name, 1.0)),
                    rate * s.service_mean_s,
                    self.cfg.target_utilisation,
                )
            )
        banded, _ = self._plan(moved, plan.slo_s)
        return banded.replicas

    # ------------------------------------------------------------------ per stage

    def _stage(  # noqa: PLR0917 - one stage's whole tick, called in one place
        self,
        s: StageSnapshot,
        st: StageState,
        raw: int,
        head: str,
        budget: float | None,
        factor: float,
        model: int | None,
        now: float,
        snapshot_window: float,
        up_clear: bool,
        service: ServiceMemory | None,
    ) -> tuple[StageTarget, StageState]:
        cfg = self.cfg
        current = s.replicas
        parts = [head]
        backlog: int | None = None
        window = snapshot_window
        growing = queue_growing(s)
        mu = service_rate(s) if growing else None
        if mu is not None and s.starting_replicas == 0:
            lam = finite(s.arrival_rate) or 0.0
            spr = max(1, s.max_concurrency)
            backlog = math.ceil((lam + s.queue_len / window) / (mu * spr) - 1e-9)
            if backlog > raw:
                raw = backlog
                parts.append(f"queue {s.queue_len} needs {backlog} to drain in {window:g}s")
        if current == 0 and raw < 1 and ((finite(s.arrival_rate) or 0.0) > 0 or s.queue_len > 0):
            raw = 1
            parts.append("cold start: work waiting and no replicas")
        hyst, hstate = hysteresis_step(
            s.ready_replicas,
            s.starting_replicas,
            raw,
            now,
            st.hysteresis,
            cfg.downscale_delay_s,
            up_clear=up_clear or backlog == raw or current == 0,
            upscale_confirm_s=cfg.upscale_confirm_s,
        )
        parts.append(hyst.reason)
        limits = self._limits(s)
        value = hyst.target
        if value == current and limits.min_replicas <= current <= limits.max_replicas:
            target = current  # no change within the bounds: every guard passes it
        else:
            r = rate_limit(current, value, limits.max_step_up, limits.max_step_down)
            if r.reason:
                parts.append(r.reason)
                if value < current:  # a cut-short scale-down continues next tick
                    hstate = st.hysteresis
            r2 = bounds(r.value, limits.min_replicas, limits.max_replicas)
            if r2.reason:
                parts.append(r2.reason)
            r3 = cooldown(current, r2.value, now, st.guard, limits)
            if r3.reason:
                parts.append(r3.reason)
                hstate = st.hysteresis if r3.value == current else hstate
            target = r3.value
        health = assess_stage(
            s, budget if budget else 0.0, cfg.percentile, cfg.critical_score, growing
        )
        if health.critical:
            why = "queue growing" if health.queue_growing else f"score {health.score:.2f}"
            parts.append(f"critical ({why})")
        changed = now if target != current else st.changed_s
        out = StageTarget(
            s.name,
            current,
            target,
            raw,
            "; ".join(parts),
            model,
            backlog,
            factor,
            budget,
            health.tail_s,
            health.critical,
            health.score,
        )
        memory = note_action(st.guard, current, target, now)
        return out, StageState(s.name, hstate, memory, changed, service)

    # ------------------------------------------------------------------ Policy

    def _held(
        self, snapshot: PipelineSnapshot, state: CorrectorState, why: str
    ) -> tuple[CorrectorTargets, CorrectorState]:
        held = tuple(
            StageTarget(s.name, s.replicas, s.replicas, s.replicas, why) for s in snapshot.stages
        )
        # Unseen time cannot count as "the plan stayed low": a hold restarts every stage's
        # downscale delay. Everything else (cooldowns, learned factors) is kept.
        kept = tuple(replace(st, hysteresis=HysteresisState()) for st in state.stages)
        return CorrectorTargets(snapshot.now, held, hold=True, reason=why), replace(
            state, stages=kept
        )

    def targets(
        self,
        snapshot: PipelineSnapshot,
        state: CorrectorState,
        forecast: Sequence[ArrivalForecast] | None = None,
    ) -> tuple[CorrectorTargets, CorrectorState]:
        """Guarded per-stage targets with reasons, and the next state (the composition hook).

        ``forecast``: the Pipeline Smoother's per-stage arrivals over the planning horizon
        (``None``: plan on the measured arrivals alone).
        """
        now = snapshot.now
        why = self.hold_reason(snapshot)
        if why is not None:
            return self._held(snapshot, state, why)
        olds = self._aligned(snapshot, state)
        snapshot, memories = self._remembered(snapshot, olds)
        inp = read_inputs(snapshot, forecast, self.cfg.percentile)
        fb_state, fb_why = self._feedback(snapshot, state, olds, inp)
        slo = snapshot.slo_p99_s
        q = self.cfg.percentile
        plan: Plan | None = None
        loads: list[StageLoad] = []
        plan_note = head_all = ""
        if inp.planned:
            # The unplanned stages' measured tails come off the SLO. If they use all of it,
            # the planned stages are sized for their service floor (``_plan``) instead.
            room = max(slo - inp.fixed_tail_s, 1e-3 * slo)
            util = self.cfg.target_utilisation
            loads = [
                capacity_floor(c, m, util)
                for c, m in zip(fb.corrected(inp.loads, fb_state), inp.loads, strict=True)
            ]
            plan, plan_note = self._plan(loads, room)
            head_all = f"plan {plan.outcome}: {plan.reason}"
            if plan_note:
                head_all += f" ({plan_note})"
            if inp.fixed:
                head_all += f"; SLO less unplanned stages' tails {room:.3g}s"
        down_plan = self._banded_plan(snapshot, inp, loads, plan, fb_state, sign=+1)
        up_plan = self._banded_plan(snapshot, inp, loads, plan, fb_state, sign=-1)
        out: list[StageTarget] = []
        new: list[StageState] = []
        pos = {i: j for j, i in enumerate(inp.planned)}
        n = len(snapshot.stages)
        factors = dict(fb_state.factors)
        # A burst reaches the stages in order, so a rise that is clear at a stage is
        # clear for the stages after it: they need not wait for enough of their own
        # samples (``clear_from``: the first stage whose rise is clear).
        clear_from = n
        if up_plan is not None and plan is not None:
            for k, at in enumerate(inp.planned):
                have = snapshot.stages[at].replicas
                if plan.replicas[k] > have and (
                    _forecast_above_noise(inp.loads[k], inp.measured[k], inp.spans[k])
                    or up_plan[k] > have
                ):
                    clear_from = at
                    break
        plan_vs = (  # the part of every planned stage's reason that is the same for all
            ""
            if plan is None
            else f"(modelled p{q * 100:g} {plan.quantile_s:.3g}s vs SLO {plan.slo_s:.3g}s, "
            f"{plan.outcome})"
        )
        for i, (s, st) in enumerate(zip(snapshot.stages, olds, strict=True)):
            factor = factors.get(s.name, 1.0)
            j = pos.get(i)
            budget: float | None = slo / n
            model: int | None = None
            up_clear = True
            if i in inp.fixed:
                raw, head = inp.fixed[i]
                head = f"{head}: {raw}"
            else:
                assert j is not None and plan is not None
                raw = model = plan.replicas[j]
                budget = plan.budgets_s[j]
                if down_plan is not None and raw < s.replicas:
                    raw = min(s.replicas, max(raw, down_plan[j]))
                if up_plan is not None and raw > s.replicas:
                    # a forecast burst is on its way (the smoother raised the inputs): no
                    # time to confirm it; otherwise an increase must exceed the noise, here
                    # or at a stage upstream
                    up_clear = i >= clear_from
                head = f"joint plan {raw} {plan_vs}; {inp.texts[j]}; derived budget {budget:.3g}s"
                if factor != 1.0:
                    head += f"; service-time factor x{factor:.3g}"
                if plan_note:
                    head += f"; {plan_note}"
            t, ns = self._stage(
                s, st, raw, head, budget, factor, model, now, snapshot.window_s, up_clear,
                memories[i],
            )  # fmt: skip
            out.append(t)
            new.append(ns)
        ups = sum(1 for t in out if t.target > t.current)
        downs = sum(1 for t in out if t.target < t.current)
        crit = [t.stage for t in out if t.critical]
        reason = f"{ups} up, {downs} down, {len(out) - ups - downs} unchanged"
        if head_all:
            reason += f"; {head_all}"
        if fb_why:
            reason += f"; {fb_why}"
        if crit:
            reason += "; critical: " + ", ".join(crit)
        nxt = CorrectorState(tuple(new), now, fb_state)
        return CorrectorTargets(now, tuple(out), reason=reason), nxt

    def decide(
        self, snapshot: PipelineSnapshot, state: CorrectorState
    ) -> tuple[Decision, CorrectorState]:
        tick, nxt = self.targets(snapshot, state)
        return tick.decision(self.name), nxt

    def initial_state(self, snapshot: PipelineSnapshot) -> CorrectorState:
        """State for a (re)started corrector: nothing learned, no scale-down for
        ``down_cooldown_s`` (``now`` counts as the last scale-down)."""
        guard = GuardMemory(last_down_s=snapshot.now)
        return CorrectorState(tuple(StageState(s.name, guard=guard) for s in snapshot.stages))


BURST_SCV = 2.0


def _forecast_above_noise(planned: StageLoad, measured: StageLoad, span_s: float) -> bool:
    """True when the smoother's forecast raised the stage's arrival rate, or its burst
    factor, by more than the noise band of the measured one (a burst on its way, not a
    noisy window). A raised burst factor counts only above ``BURST_SCV`` (arrivals at
    least that much burstier than Poisson): below it, the forecast SCV is as noisy as the
    measured SCVs it comes from (at 5 req/s a QNA forecast of 1.4 against a measured
    0.85 flapped a stage)."""
    band = 1.0 + _band(0.0, measured.arrival_rate * span_s)
    if planned.arrival_rate > measured.arrival_rate * band:
        return True
    scv = planned.effective_arrival_scv
    return scv > BURST_SCV and scv > measured.effective_arrival_scv * band


# Standard errors of a measured load in the noise bands. Up (is a rise clear?): 2. Down
# (the load a scale-down must still carry): 3. With 2 on the down side as well, a stage
# scaled down with its load at the band's edge, and the next window 4 standard errors
# high (a 30-minute run at 5 req/s has a few) scaled it up again: 1->2->1 or 2->1->2
# within 10 minutes at constant Poisson load on 3 of 6 seeds of benchmarks/flapping.py
# (up to 2 moves of a stage in 10 minutes); with 3, at most 1 on every seed, at 5 and
# 20 req/s. It costs nothing at high rates, where the configured headroom is wider.
_UP_Z = 2.0
_DOWN_Z = 3.0


def _above_band(
    measured: Sequence[StageLoad],
    planned: Sequence[StageLoad],
    plan: Plan,
    spans: Sequence[float],
    *,
    frac: float,
    cfg: ControllerConfig,
) -> tuple[int, ...]:
    """The down-scale threshold: ``plan_above`` the plan, every stage's load raised by its
    band (at least the configured headroom ``frac``, else ``_DOWN_Z`` standard errors of
    its arrivals over ``spans``, the time each measured rate covers), its
    ``min_replicas`` floored at the target utilisation of that load with the measured
    service time (``floor_at``), and its service time the planned (feedback-corrected)
    one.

    ``measured``: the tick's loads (``PlanInputs.loads``); ``planned``: the plan's
    (``fb.corrected`` with ``capacity_floor``), whose services ``plan_above_at`` reads.
    Elementwise, this is ``_band``, ``StageLoad.with_load`` and ``floor_at`` per stage
    (``tests/unit/test_corrector.py`` compares with those)."""
    n = len(measured)
    lam = np.fromiter((s.arrival_rate for s in measured), np.float64, n)
    mean = np.fromiter((s.service_mean_s for s in measured), np.float64, n)
    ints = np.array(
        [(s.servers_per_replica, s.min_replicas, s.max_replicas) for s in measured],
        dtype=np.int64,
    ).reshape(n, 3)
    spr, lo, hi = ints.T
    arrivals = lam * np.fromiter(spans, np.float64, n)
    with np.errstate(divide="ignore"):
        noise = np.minimum(1.0, _DOWN_Z * np.sqrt(2.0 / arrivals))
    band = np.maximum(frac, np.where(arrivals < 8.0, 1.0, noise))
    rate = lam * (1.0 + band)
    util = cfg.target_utilisation
    if util > 0:
        need = np.ceil(rate * mean / (spr * util) - 1e-9).astype(np.int64)
    else:
        need = np.zeros(n, dtype=np.int64)
    floors = np.minimum(np.maximum(need, lo), hi)
    return plan_above_at(
        planned, plan.slo_s, plan.replicas, cfg.percentile, rates=rate, floors=floors
    )


def _band(frac: float, arrivals: float, z: float = _UP_Z) -> float:
    """A noise band: ``frac``, or ``z`` standard errors of a load measured from
    ``arrivals`` requests if that is wider (at most 1: twice the load)."""
    if arrivals < 8.0:  # a handful of arrivals: the widest band
        return max(frac, 1.0)
    return max(frac, min(1.0, z * math.sqrt(2.0 / arrivals)))


__all__ = ["NO_DATA", "ReplicaCorrector"]

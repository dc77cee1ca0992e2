"""The Replica Corrector: per-stage replica targets from a queueing model plus feedback.

Neighbours: implements the ``Policy`` protocol of ``policy.py`` on a ``PipelineSnapshot``
(``snapshot.py``) with a ``ControllerConfig`` (``config.py``); uses ``budget.py`` (stage
budgets, critical stages), ``queueing.py`` (feed-forward), ``pid.py`` (feedback) and
``guards.py`` (rate limits, bounds, cooldowns, downscale delay). The Pipeline Smoother
and CPU Compensator post-process ``ReplicaCorrector.targets`` (the hook); ``loop.py``
applies ``decide``'s result. Pure: no I/O, no clock; ``now`` is ``snapshot.now``.

Per stage and tick:

1. budget ``B`` = the stage's share of the end-to-end SLO; tail ``L`` = the measured
   latency at ``cfg.percentile``.
2. feed-forward: the fewest replicas whose modelled sojourn percentile fits ``B`` at
   utilisation ``<= cfg.target_utilisation`` (``replicas_for_slo``) from the *measured*
   λ, μ = 1/service_mean_s, ca² = arrival_cv², cs² = service_scv; a replica offers
   ``max_concurrency`` service slots. Unknown SCVs count as 1 (M/M/c); unknown μ gives
   no model estimate (the current count stands in) - μ is never assumed.
3. feedback: a PID on ``L/B - 1`` adds a correction in replicas (positive when too slow),
   bounded so the total stays in ``[min, max]`` and never below the utilisation floor
   ``ceil(λ/(μ·max_concurrency·target_utilisation))``: feedback may trim a latency-bound
   model estimate, but it cannot find the knee of the tail by overloading the stage.
   When the budget is below the service percentile itself (no count can meet it) the PID
   aims at that percentile instead, so it does not pile up replicas that cannot help; and
   feedback may add replicas only where requests wait for one (a queue, or utilisation
   at least half the target): a slow tail on idle servers is service time or CPU
   contention, which more replicas on a shared host make worse.
4. backlog: ``Q`` queued requests must drain within ``B`` on top of arrivals, so the stage
   needs at least ``ceil((λ + Q/B)/(μ·max_concurrency))`` replicas.
5. dead time: while replicas are starting, feedback and backlog (which still show the load
   from before those replicas were asked for) may not raise the target above
   ``max(current, model)``; only the model (a higher arrival rate) may.
6. guards (``guards.py``), then a reason a user can read, e.g.
   ``p99 0.84s > budget 0.3s; G/G/c needs 5 (λ=41/s, μ=11/s, ca²=1, cs²=0.05); PID +7.6;
   capped by max_step_up 8``.

The tail ``L`` comes from ``LatencyStats.quantile``, which stores p50/p95/p99 only: a
``percentile`` of 0.9 reads p95 (conservative) and one above 0.99 reads p99.

Missing data holds everything (reason ``no-data``); a stage with no arrivals in the window
goes toward ``min_replicas`` only after ``downscale_delay_s``. A restarted corrector
(``initial_state``) presets its PID integrals so that its first targets equal what is
running (bumpless transfer) and treats ``now`` as its last scale-down, so a restart does
not cause a burst of actions.
"""

from __future__ import annotations

import math
from dataclasses import replace

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector.budget import StageHealth, assess_stage, stage_budgets
from quartfaas.control.corrector.guards import GuardLimits, GuardMemory, apply_guards
from quartfaas.control.corrector.inputs import finite, model_text, service_rate, stage_scvs
from quartfaas.control.corrector.pid import PIDState, bumpless_state, pid_terms
from quartfaas.control.corrector.queueing import (
    PlanStatus,
    SLOPlan,
    replicas_for_slo,
    service_percentile,
)
from quartfaas.control.corrector.targets import (
    CorrectorState,
    CorrectorTargets,
    StageState,
    StageTarget,
)
from quartfaas.control.policy import Decision
from quartfaas.control.snapshot import PipelineSnapshot, StageSnapshot

NO_DATA = "no-data"
# Below this share of the target utilisation (and with no queue) a stage's requests do not
# wait for a replica, so feedback may not add replicas (see ``ReplicaCorrector._queueing``).
QUEUEING_UTILISATION = 0.5
WAIT_SHARE = 0.1  # a wait tail above this share of the stage budget is queueing


class ReplicaCorrector:
    """Quart's Replica Corrector as a pure ``Policy`` (name ``"quart-corrector"``)."""

    name = "quart-corrector"

    def __init__(self, config: ControllerConfig | None = None) -> None:
        self.cfg = config if config is not None else ControllerConfig.model_validate({})
        # Label the tail by the stored quantile LatencyStats.quantile actually returns.
        pct = self.cfg.percentile
        self._pct_label = "p50" if pct <= 0.5 else "p95" if pct <= 0.95 else "p99"
        # Build the Gamma-quantile table for this percentile now, not on the first tick.
        service_percentile(1.0, 0.5, pct)
        # GuardLimits depend only on config and the stage's bounds: build each once.
        self._limits_cache: dict[tuple[int, int], GuardLimits] = {}

    # ------------------------------------------------------------------ helpers

    def _hold_reason(self, snapshot: PipelineSnapshot) -> str | None:
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

    def _plan(
        self,
        s: StageSnapshot,
        lam: float,
        budget: float,
        mu: float | None,
        scvs: tuple[float, float],
    ) -> tuple[SLOPlan, int]:
        """Feed-forward plan and the replica count it stands for (current if no answer)."""
        plan = replicas_for_slo(
            lam,
            mu,
            scvs[0],
            scvs[1],
            budget,
            self.cfg.percentile,
            servers_per_replica=max(1, s.max_concurrency),
            max_util=self.cfg.target_utilisation,
            c_max=max(1, s.max_replicas),
            c_min=1,
        )
        return plan, (plan.replicas if plan.replicas is not None else s.replicas)

    def _queueing(self, s: StageSnapshot, budget: float) -> bool:
        """Evidence that requests wait for a replica: a queue now, a measured wait tail
        beyond a tenth of the budget, or (wait not measured) busy servers."""
        if s.queue_len > 0:
            return True
        wait = s.wait.quantile(self.cfg.percentile)
        if wait is not None:
            return wait > WAIT_SHARE * budget
        util = s.utilisation
        return util is None or util >= QUEUEING_UTILISATION * self.cfg.target_utilisation

    def _correction_bounds(
        self, s: StageSnapshot, lam: float, mu: float | None, ff: int
    ) -> tuple[float, float]:
        """Bounds of the PID correction around the model estimate ``ff``.

        Above: ``max_replicas``. Below: ``min_replicas`` and the utilisation floor
        ``ceil(λ/(μ·max_concurrency·target_utilisation))``; feedback may trim a latency-bound
        model estimate but never plans past the utilisation the model may plan for (the
        tail near saturation is too steep to find by feedback without overload).
        """
        hi = max(s.min_replicas, s.max_replicas)
        lo = s.min_replicas
        if mu is not None and lam > 0:
            spr = max(1, s.max_concurrency)
            floor = math.ceil(lam / (mu * spr * self.cfg.target_utilisation) - 1e-9)
            lo = min(max(lo, floor), hi)
        return float(lo - ff), float(hi - ff)

    # ------------------------------------------------------------------ per stage

    def _stage(
        self, s: StageSnapshot, budget: float, st: StageState, now: float
    ) -> tuple[StageTarget, StageState]:
        cfg = self.cfg
        current = s.replicas
        health: StageHealth = assess_stage(s, budget, cfg.percentile, cfg.critical_score)
        lam = finite(s.arrival_rate)
        if lam is None or lam < 0:
            reason = f"{NO_DATA}: arrival rate unknown; holding {current}"
            return StageTarget(s.name, current, current, current, reason, budget_s=budget), st
        tail = health.tail_s
        label = self._pct_label
        parts: list[str] = []
        if tail is None:
            parts.append(f"{label} n/a, budget {budget:.3g}s")
        else:
            rel = ">" if tail > budget else "<="
            parts.append(f"{label} {tail:.3g}s {rel} budget {budget:.3g}s")
        model: int | None = None
        backlog: int | None = None
        correction = 0.0
        pid = st.pid
        idle = lam == 0 and s.queue_len == 0 and s.in_flight == 0
        if idle:
            raw = s.min_replicas
            pid = PIDState()  # a stale integral must not greet the next burst
            parts.append(f"idle (no arrivals in the window): toward min_replicas {raw}")
        else:
            mu = service_rate(s)
            scvs = stage_scvs(s)
            plan, ff = self._plan(s, lam, budget, mu, scvs)
            model = plan.replicas
            parts.append(model_text(plan, lam, mu, scvs))
            out_min, out_max = self._correction_bounds(s, lam, mu, ff)
            if not self._queueing(s, budget):
                # A slow tail with idle servers and no queue comes from the service time
                # itself (or from CPU contention on the host): more replicas cannot help and,
                # on a shared host, more processes would slow every stage further.
                if out_max > 0 and tail is not None and tail > budget:
                    wait = s.wait.quantile(cfg.percentile)
                    waited = "" if wait is None else f", wait {wait:.3g}s"
                    parts.append(
                        f"no feedback up: no queue (utilisation {_pct(s.utilisation)}{waited})"
                    )
                out_max = max(out_min, min(out_max, 0.0))
            setpoint = budget
            if plan.status is PlanStatus.INFEASIBLE and plan.service_pct_s is not None:
                setpoint = plan.service_pct_s  # the best any replica count can do
            if tail is not None:
                terms, pid = pid_terms(
                    st.pid,
                    tail,
                    setpoint,
                    now,
                    cfg.pid,
                    out_min,
                    out_max,
                    freeze_integral=s.starting_replicas > 0 and tail > setpoint,
                    max_dt=cfg.window_s,
                )
                correction = terms.output
            else:
                # No latency samples: keep the integral, forget the last measurement so the
                # next sample is a first tick again (no derivative or integral over the gap).
                correction = min(max(st.pid.integral, out_min), out_max)
                pid = PIDState(st.pid.integral, None, None, correction)
            parts.append(f"PID {correction:+.1f}")
            raw = math.floor(ff + correction + 0.5)
            if s.queue_len > 0 and mu is not None:
                spr = max(1, s.max_concurrency)
                backlog = math.ceil((lam + s.queue_len / budget) / (mu * spr) - 1e-9)
                if backlog > raw:
                    raw = backlog
                    parts.append(f"queue {s.queue_len} needs {backlog} to drain in {budget:.3g}s")
            if s.starting_replicas > 0 and raw > max(current, ff):
                # Dead time: latency and queue still show the load from before the starting
                # replicas were asked for. Adding more on that evidence overshoots; only a
                # higher model estimate (a load rise) may add while capacity is on its way.
                raw = max(current, ff)
                parts.append(f"waiting for {s.starting_replicas} starting")
            if current == 0 and raw < 1:
                raw = 1
                parts.append("cold start: work waiting and no replicas")
        guarded, memory = apply_guards(current, raw, now, st.guard, self._limits(s))
        parts.extend(guarded.reasons)
        if health.critical:
            why = "queue growing" if health.queue_growing else f"score {health.score:.2f}"
            parts.append(f"critical ({why})")
        target = StageTarget(  # positional: this runs once per stage per tick
            s.name,
            current,
            guarded.value,
            raw,
            "; ".join(parts),
            model,
            backlog,
            correction,
            budget,
            tail,
            health.critical,
            health.score,
        )
        return target, StageState(s.name, pid, memory)

    # ------------------------------------------------------------------ Policy

    def targets(
        self, snapshot: PipelineSnapshot, state: CorrectorState
    ) -> tuple[CorrectorTargets, CorrectorState]:
        """Guarded per-stage targets with reasons, and the next state (the composition hook)."""
        now = snapshot.now
        why = self._hold_reason(snapshot)
        if why is not None:
            held = tuple(
                StageTarget(s.name, s.replicas, s.replicas, s.replicas, why)
                for s in snapshot.stages
            )
            # Unseen time cannot count as "load stayed low": a hold restarts every
            # stage's downscale delay. Everything else (PID, cooldowns) is kept.
            kept = tuple(
                st
                if st.guard.below_since_s is None
                else StageState(
                    st.name, st.pid, replace(st.guard, below_since_s=None, below_peak=None)
                )
                for st in state.stages
            )
            return CorrectorTargets(now, held, hold=True, reason=why), replace(state, stages=kept)
        budgets = stage_budgets(snapshot, self.cfg.stage_budget)
        olds = self._aligned(snapshot, state)
        out: list[StageTarget] = []
        new: list[StageState] = []
        for s, b, st in zip(snapshot.stages, budgets, olds, strict=True):
            t, ns = self._stage(s, b, st, now)
            out.append(t)
            new.append(ns)
        ups = sum(1 for t in out if t.target > t.current)
        downs = sum(1 for t in out if t.target < t.current)
        crit = [t.stage for t in out if t.critical]
        reason = f"{ups} up, {downs} down, {len(out) - ups - downs} unchanged"
        if crit:
            reason += "; critical: " + ", ".join(crit)
        return CorrectorTargets(now, tuple(out), reason=reason), CorrectorState(tuple(new), now)

    def decide(
        self, snapshot: PipelineSnapshot, state: CorrectorState
    ) -> tuple[Decision, CorrectorState]:
        tick, nxt = self.targets(snapshot, state)
        return tick.decision(self.name), nxt

    def initial_state(self, snapshot: PipelineSnapshot) -> CorrectorState:
        """State for a (re)started corrector: bumpless PID presets, no scale-down for
        ``down_cooldown_s`` (``now`` counts as the last scale-down)."""
        now = snapshot.now
        guard = GuardMemory(last_down_s=now)
        if self._hold_reason(snapshot) is not None:
            return CorrectorState(tuple(StageState(s.name, guard=guard) for s in snapshot.stages))
        budgets = stage_budgets(snapshot, self.cfg.stage_budget)
        out: list[StageState] = []
        for s, budget in zip(snapshot.stages, budgets, strict=True):
            lam = finite(s.arrival_rate)
            tail = assess_stage(s, budget, self.cfg.percentile, self.cfg.critical_score).tail_s
            if lam is None or lam < 0 or tail is None or (lam == 0 and s.queue_len == 0):
                out.append(StageState(s.name, guard=guard))
                continue
            mu = service_rate(s)
            plan, ff = self._plan(s, lam, budget, mu, stage_scvs(s))
            lo, hi = self._correction_bounds(s, lam, mu, ff)
            wanted = min(max(s.replicas - ff, lo), hi)
            setpoint = budget
            if plan.status is PlanStatus.INFEASIBLE and plan.service_pct_s is not None:
                setpoint = plan.service_pct_s
            pid = bumpless_state(
                tail,
                setpoint,
                now,
                self.cfg.pid,
                wanted_output=wanted,
                allow_negative=tail <= setpoint,
            )
            out.append(StageState(s.name, pid, guard))
        return CorrectorState(tuple(out), None)


__all__ = ["NO_DATA", "ReplicaCorrector"]


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.0%}"

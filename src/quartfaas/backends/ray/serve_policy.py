"""Quart as a Ray Serve application-level autoscaling policy.

For users who already deploy their pipeline as a Ray Serve application (one deployment
per stage): Serve 2.60 calls an application-level policy with every deployment's
``AutoscalingContext`` each tick and applies the replica counts it returns. This policy
turns those contexts into the ``PipelineSnapshot`` quartfaas's control code reads, asks
Quart's Replica Corrector (``control/corrector/corrector.py``) for a decision, and returns its
targets. Serve's own metrics give the replica counts, the requests queued at handles and
the requests running; the per-replica custom metrics of ``serve_app.StageDeployment``
(``record_autoscaling_stats``) give the arrival rate, service-time mean and SCV, and the
stage's latency tail (Serve does not measure those).

Turn it on in a Serve config (``docs/ray.md``)::

    applications:
      - name: my-pipeline
        import_path: quartfaas.backends.ray.serve_app:build_app
        args: {spec_path: pipeline.yaml}
        autoscaling_policy:
          policy_function: quartfaas.backends.ray.serve_policy:QuartServePolicy
          policy_kwargs: {stages: [s0, s1, s2], slo_p99_ms: 300}

Serve instantiates the class once (``policy_kwargs`` are its constructor's arguments)
and calls it every tick; the instance keeps the corrector's state between ticks (the
policy is the loop here; the decision itself stays pure). Serve still clamps each target
to the deployment's ``min_replicas``/``max_replicas`` and applies its own
``upscale_delay_s``/``downscale_delay_s``, so set those to 0 (``serve_app`` does) and
let Quart's cooldowns rule. Each decision with its reasons is logged, returned in
Serve's policy state (``quart_reason``), and, with ``decision_log`` naming a Ray actor
(``DecisionLog``), sent there.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import ray

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import CorrectorState, ReplicaCorrector
from quartfaas.control.policy import Decision
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, StageSnapshot

log = logging.getLogger("quartfaas.serve_policy")


@dataclass(frozen=True, slots=True)
class ServeStageMetrics:
    """What Serve tells the policy about one deployment (plain data, testable alone)."""

    name: str
    running_replicas: int
    target_replicas: int
    min_replicas: int
    max_replicas: int
    queued: float
    ongoing: float
    custom: Mapping[str, Mapping[Any, float]] = field(default_factory=dict)


def stage_snapshot(m: ServeStageMetrics, index: int, max_concurrency: int) -> StageSnapshot:
    """One deployment as a ``StageSnapshot``: counts from Serve, rates from the replicas."""
    rates = dict(m.custom.get("quart_arrival_rate", {}))
    lam = sum(rates.values()) if rates else None
    svc = m.custom.get("quart_service_mean_s", {})
    scv = m.custom.get("quart_service_scv", {})
    p99 = m.custom.get("quart_latency_p99_s", {})
    weights = {r: rates.get(r, 0.0) for r in svc}
    total = sum(weights.values())

    def weighted(values: Mapping[Any, float]) -> float | None:
        if not values:
            return None
        if total <= 0:
            return sum(values.values()) / len(values)
        return sum(v * weights.get(r, 0.0) for r, v in values.items()) / total

    tail = max(p99.values()) if p99 else None
    running = max(0.0, m.ongoing - m.queued)
    return StageSnapshot(
        name=m.name,
        index=index,
        min_replicas=m.min_replicas,
        max_replicas=m.max_replicas,
        max_concurrency=max_concurrency,
        ready_replicas=m.running_replicas,
        starting_replicas=max(0, m.target_replicas - m.running_replicas),
        queue_len=round(m.queued),
        in_flight=round(running),
        arrival_rate=lam,
        service_mean_s=weighted(svc),
        service_scv=weighted(scv),
        latency=LatencyStats(count=1, p99_s=tail) if tail is not None else LatencyStats(),
    )


def pipeline_snapshot(
    metrics: Sequence[ServeStageMetrics],
    *,
    now: float,
    pipeline: str,
    slo_p99_s: float,
    max_concurrency: Mapping[str, int],
    window_s: float,
) -> PipelineSnapshot:
    stages = tuple(
        stage_snapshot(m, i, max_concurrency.get(m.name, 1)) for i, m in enumerate(metrics)
    )
    return PipelineSnapshot(
        now=now, pipeline=pipeline, slo_p99_s=slo_p99_s, stages=stages,
        window_s=window_s, data_age_s=0.0, source="ray-serve",
    )  # fmt: skip


def metrics_of(ctx: Any) -> ServeStageMetrics:
    """A Serve ``AutoscalingContext`` as ``ServeStageMetrics``."""
    custom = ctx.aggregated_metrics or {}
    return ServeStageMetrics(
        name=ctx.deployment_name,
        running_replicas=ctx.current_num_replicas,
        target_replicas=ctx.target_num_replicas,
        min_replicas=ctx.capacity_adjusted_min_replicas,
        max_replicas=ctx.capacity_adjusted_max_replicas,
        queued=float(ctx.total_queued_requests or 0.0),
        ongoing=float(ctx.total_num_requests or 0.0),
        custom={k: dict(v) for k, v in custom.items()},
    )


class QuartServePolicy:
    """Serve application-level policy: every deployment's replicas from Quart's corrector.

    ``stages``: deployment names in pipeline order (deployments not listed are left to
    Serve). ``slo_p99_ms``: the end-to-end SLO. ``max_concurrency``: service slots per
    replica, per deployment (default 1). ``controller``: ``ControllerConfig`` fields
    (cooldowns, delays, percentile...). ``decision_log``: name of a ``DecisionLog`` actor.
    """

    def __init__(
        self,
        stages: Sequence[str],
        slo_p99_ms: float,
        *,
        max_concurrency: Mapping[str, int] | None = None,
        controller: Mapping[str, Any] | None = None,
        decision_log: str | None = None,
        pipeline: str = "serve-pipeline",
    ) -> None:
        if not stages:
            raise ValueError("stages must name the pipeline's deployments in order")
        if not slo_p99_ms > 0:
            raise ValueError(f"slo_p99_ms must be > 0, got {slo_p99_ms}")
        self.stages = list(stages)
        self.slo_p99_s = slo_p99_ms / 1000.0
        self.max_concurrency = dict(max_concurrency or {})
        self.cfg = ControllerConfig.model_validate(dict(controller or {}))
        self.corrector = ReplicaCorrector(self.cfg)
        self.state: CorrectorState | None = None
        self.pipeline = pipeline
        self.decision_log = decision_log
        self.last: Decision | None = None

    def decide(self, metrics: Sequence[ServeStageMetrics], now: float) -> Decision:
        """The pure part plus the corrector's state: one decision at ``now``."""
        snap = pipeline_snapshot(
            metrics, now=now, pipeline=self.pipeline, slo_p99_s=self.slo_p99_s,
            max_concurrency=self.max_concurrency, window_s=self.cfg.window_s,
        )  # fmt: skip
        if self.state is None:
            self.state = self.corrector.initial_state(snap)
        decision, self.state = self.corrector.decide(snap, self.state)
        self.last = decision
        return decision

    def __call__(self, contexts: Mapping[Any, Any]) -> tuple[dict[Any, int], dict[Any, dict]]:
        by_name = {ctx.deployment_name: (dep_id, ctx) for dep_id, ctx in contexts.items()}
        ordered = [by_name[n] for n in self.stages if n in by_name]
        if not ordered:
            return {}, {}
        now = max(float(ctx.current_time or 0.0) for _, ctx in ordered)
        decision = self.decide([metrics_of(ctx) for _, ctx in ordered], now)
        targets: dict[Any, int] = {}
        state: dict[Any, dict] = {}
        for (dep_id, _), d in zip(ordered, decision.stages, strict=True):
            targets[dep_id] = d.replicas
            state[dep_id] = {"quart_reason": d.reason}
            if d.replicas != d.current:
                log.info("quart: %s %d -> %d: %s", d.stage, d.current, d.replicas, d.reason)
        if self.decision_log is not None:
            try:
                ray.get_actor(self.decision_log).record.remote(decision.as_dict())
            except ValueError:
                log.warning("decision log actor %r not found", self.decision_log)
                self.decision_log = None
        return targets, state


class DecisionLog:
    """A Ray actor that keeps the policy's decisions (``ray.remote(DecisionLog)``)."""

    def __init__(self, keep: int = 10_000) -> None:
        self.keep = keep
        self.items: list[dict[str, Any]] = []

    def record(self, decision: dict[str, Any]) -> None:
        self.items.append(decision)
        del self.items[: -self.keep]

    def all(self) -> list[dict[str, Any]]:
        return list(self.items)

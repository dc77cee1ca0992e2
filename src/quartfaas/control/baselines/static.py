"""Static provisioning: a fixed replica count per stage that never changes.

Neighbours: shared helpers in ``_common.py``; registered as ``"static"`` in ``__init__.py``.
The prototype's static partitions (PARAM/TIME/LATENCY) pin every deployment at 1 replica
(``quart-prototype.md`` §5); the usual fair baseline is *peak provisioning*: enough
replicas per stage for the peak rate at a target utilisation, computed offline with
``peak_replicas`` and passed as ``replicas``.

``replicas`` may be a mapping stage -> count, one count for every stage, or ``None`` to pin
each stage at the count it had when the controller started. Counts are clamped to the
stage's bounds. The policy reads no measurement, so missing or stale data changes nothing.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import Field

from quartfaas.control.baselines._common import (
    BaselineParams,
    bounded,
    build_params,
    decision,
    hold,
    set_to,
)
from quartfaas.control.policy import Decision
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.errors import SpecError


class StaticParams(BaselineParams):
    replicas: dict[str, int] | int | None = Field(
        default=None, description="count per stage, one count for all, or None: counts at start"
    )


@dataclass(frozen=True, slots=True)
class StaticState:
    counts: tuple[tuple[str, int], ...]


class Static:
    """Fixed replicas per stage (peak provisioning)."""

    name: str = "static"

    def __init__(self, params: StaticParams | None = None) -> None:
        self.params = params or StaticParams()
        r = self.params.replicas
        bad = [v for v in (r.values() if isinstance(r, dict) else [r]) if v is not None and v < 0]
        if bad:
            raise SpecError(f"static replica counts must be >= 0, got {bad}")

    def initial_state(self, snapshot: PipelineSnapshot) -> StaticState:
        r = self.params.replicas
        counts: list[tuple[str, int]] = []
        for s in snapshot.stages:
            if r is None:
                counts.append((s.name, s.replicas))
            elif isinstance(r, int):
                counts.append((s.name, r))
            elif s.name in r:
                counts.append((s.name, r[s.name]))
        return StaticState(tuple(counts))

    def decide(
        self, snapshot: PipelineSnapshot, state: StaticState
    ) -> tuple[Decision, StaticState]:
        counts = dict(state.counts)
        stages = []
        for s in snapshot.stages:
            if s.name not in counts:
                stages.append(hold(s, "hold: no static count configured for this stage"))
                continue
            n, note = bounded(s, counts[s.name])
            stages.append(set_to(s, n, f"static: {counts[s.name]} replicas{note}"))
        acting = any(d.replicas != d.current for d in stages)
        return decision(snapshot, self.name, stages, "static provisioning", hold=not acting), state


def peak_replicas(
    rates: Mapping[str, float],
    service_means: Mapping[str, float],
    target_utilisation: float = 0.7,
    max_concurrency: Mapping[str, int] | int = 1,
) -> dict[str, int]:
    """Replicas per stage for its peak rate: ``ceil(rate x mean / (target x concurrency))``.

    ``rates`` are requests/s at the peak, ``service_means`` seconds per request (both per
    stage name); at least one replica per stage.
    """
    if not 0 < target_utilisation <= 1:
        raise SpecError(f"target_utilisation ({target_utilisation}) must be in (0, 1]")
    missing = sorted(set(rates) - set(service_means))
    if missing:
        raise SpecError(f"service_means lacks stages {missing} that rates has")
    out: dict[str, int] = {}
    for name, rate in rates.items():
        mean = service_means[name]
        c = max_concurrency if isinstance(max_concurrency, int) else max_concurrency.get(name, 1)
        if rate < 0 or mean < 0 or c < 1:
            raise SpecError(
                f"stage {name!r}: rate ({rate}) and service mean ({mean}) must be >= 0 "
                f"and max_concurrency ({c}) >= 1"
            )
        out[name] = max(1, math.ceil(rate * mean / (target_utilisation * c) - 1e-9))
    return out


def make(**overrides: Any) -> Static:
    return Static(build_params(StaticParams, Static.name, overrides))

"""``POST /system/scale-function/{name}``: the request, and what it means for a pipeline.

Upstream's ``ScaleServiceRequest`` is ``{"serviceName", "namespace", "replicas"}`` with
``replicas`` an integer ``>= 0`` (openfaas/faas ``api-docs/spec.openapi.yml`` lines
908-928); faas-cli and the go-sdk send it with the namespace in the body and accept 200,
201 or 202 (go-sdk ``client.go`` lines 672-731). Upstream CE clamps to [1, 5]
(``gateway/scaling/ranges.go`` lines 58-64) and faas-netes CE refuses 0 (its
``pkg/handlers/replica_updater.go`` lines 60-63); quartfaas instead honours the stage's
own bounds (``com.openfaas.scale.min/max``), so 0 is accepted where a stage may scale to
zero, and anything else is refused with the bound that forbids it.

The pipeline is a function too. Scaling it to ``n`` scales every stage in proportion to
what it has now, so the pipeline's replica count (the fewest of any stage, as
``/system/function`` reports it) becomes ``n`` and the stages keep their ratios; when a
stage's bounds make that impossible the answer says which stage and why.
Pure functions: the gateway applies the targets through its backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from quartfaas.errors import BadRequest


@dataclass(frozen=True, slots=True)
class ScaleRequest:
    service: str
    replicas: int
    namespace: str | None


@dataclass(frozen=True, slots=True)
class StageBounds:
    """A stage's scaling bounds and its desired replicas now."""

    name: str
    min_replicas: int
    max_replicas: int
    current: int


def parse_scale_request(data: Any, path_name: str) -> ScaleRequest:
    """The JSON body of a scale request for the function named in the path."""
    if not isinstance(data, dict):
        raise BadRequest('expected a JSON object {"serviceName": "<name>", "replicas": <int >= 0>}')
    service = data.get("serviceName") or path_name
    if not isinstance(service, str):
        raise BadRequest(f'"serviceName" must be a string, got {service!r}')
    if "." in service and service != path_name:
        name, _, ns = service.rpartition(".")
        if name == path_name:  # "name.namespace" in the body, as some clients send
            service = name
            data = {**data, "namespace": data.get("namespace") or ns}
    if service != path_name:
        raise BadRequest(
            f"serviceName {service!r} does not match the path's function {path_name!r}"
        )
    n = data.get("replicas")
    if not isinstance(n, int) or isinstance(n, bool):
        raise BadRequest(f'"replicas" must be an integer >= 0, got {n!r}')
    if n < 0:
        raise BadRequest(f'"replicas" must be >= 0, got {n}')
    ns = data.get("namespace")
    if ns is not None and not isinstance(ns, str):
        raise BadRequest(f'"namespace" must be a string, got {ns!r}')
    return ScaleRequest(service, n, ns or None)


def stage_target(stage: StageBounds, n: int) -> int:
    """``n`` if the stage's bounds allow it, else a ``BadRequest`` naming the bound."""
    if n < stage.min_replicas:
        hint = "; set min_replicas: 0 in the spec to let it scale to zero" if n == 0 else ""
        raise BadRequest(
            f"replicas {n} is below the minimum of {stage.name} "
            f"({stage.min_replicas}, com.openfaas.scale.min){hint}"
        )
    if n > stage.max_replicas:
        raise BadRequest(
            f"replicas {n} is above the maximum of {stage.name} "
            f"({stage.max_replicas}, com.openfaas.scale.max)"
        )
    return n


def pipeline_targets(stages: Sequence[StageBounds], n: int) -> dict[str, int]:
    """Per-stage replicas that make the pipeline's count ``n``, keeping the stages' ratios.

    With ``base`` the fewest replicas of any stage now, stage ``i`` gets
    ``round(current_i * n / base)`` (at least ``n``), clamped to its bounds; with no
    replicas anywhere (``base == 0``) every stage gets ``n``. Every target is then
    ``>= n`` and the stage with ``base`` replicas gets exactly ``n``, so the pipeline's
    count is ``n`` exactly when ``n`` lies within every stage's bounds; otherwise the
    request is refused naming the first stage whose bound forbids it.
    """
    if not stages:
        raise BadRequest("the pipeline has no stages to scale")
    if n < 0:
        raise BadRequest(f'"replicas" must be >= 0, got {n}')
    for s in stages:  # n within every stage's bounds <=> the clamped targets give n
        stage_target(s, n)
    base = min(s.current for s in stages)
    targets: dict[str, int] = {}
    for s in stages:
        proportional = base > 0 and n > 0
        want = max(n, math.floor(s.current * n / base + 0.5)) if proportional else n
        targets[s.name] = min(max(want, s.min_replicas), s.max_replicas)
    return targets

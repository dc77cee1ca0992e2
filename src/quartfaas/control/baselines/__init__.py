"""Baseline scaling policies: what real serverless autoscalers would do with our pipelines.

Each module reimplements one real system's scaling rule as a pure ``Policy``
(``control/policy.py``): it reads a ``PipelineSnapshot``, keeps its memory in a frozen
dataclass, evaluates only at the real system's own period and says why in every
``StageDecision``. The docstrings cite the real sources and parameter names. The control
loop (``control/loop.py``) and the simulator call them exactly as they call Quart.

=================  ==========================================================  ==========
name               real system                                                 period
=================  ==========================================================  ==========
``openfaas-ce``    OpenFaaS CE: APIHighInvocationRate alert -> +factor % of max  15 s eval
``openfaas-pro``   OpenFaaS Pro autoscaler (rps / capacity / cpu)               15 s
``knative``        Knative KPA: stable 60 s / panic 6 s concurrency windows     2 s
``hpa``            Kubernetes HPA (CPU-utilisation target, 5 min stabilisation) 15 s
``ray``            Ray Serve default policy (target_ongoing_requests 2)         every tick
``uniform``        the prototype's sdag_scale: one count for all stages         3 s
``static``         fixed replicas per stage (peak provisioning)                 -
=================  ==========================================================  ==========

``make_policy(name, **overrides)`` builds one with the real defaults and any overrides
(validated; unknown names or parameters raise ``SpecError`` listing the valid ones).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from quartfaas.control.baselines import (
    hpa,
    knative,
    openfaas_ce,
    openfaas_pro,
    ray,
    static,
    uniform,
)
from quartfaas.control.baselines.static import peak_replicas
from quartfaas.control.policy import Policy
from quartfaas.errors import SpecError

Factory = Callable[..., Policy]

BASELINES: dict[str, Factory] = {
    "openfaas-ce": openfaas_ce.make,
    "openfaas-pro": openfaas_pro.make,
    "knative": knative.make,
    "hpa": hpa.make,
    "ray": ray.make,
    "uniform": uniform.make,
    "static": static.make,
}


def make_policy(name: str, **overrides: Any) -> Policy:
    """The baseline called ``name`` with its real defaults, changed by ``overrides``."""
    try:
        factory = BASELINES[name]
    except KeyError:
        valid = ", ".join(sorted(BASELINES))
        raise SpecError(f"unknown baseline policy {name!r}; valid names: {valid}") from None
    return factory(**overrides)


__all__ = ["BASELINES", "Factory", "make_policy", "peak_replicas"]

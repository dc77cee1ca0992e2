"""The simulator experiments' names and limits, importable without the simulator.

``quartfaas simulate --help`` lists the policies and infrastructures; importing
``sim/experiments`` for that (the control code, numba, the engine) made every ``quartfaas``
command start slowly (``--help`` in 0.65-0.93 s against 0.13-0.15 s without it:
``cli/__init__.py``). ``sim/experiments/setups.py`` builds the
policies and infrastructures named here; ``sim/experiments/workloads.py`` enforces
``MAX_VISITS``. Standard library only.
"""

from __future__ import annotations

from dataclasses import dataclass

POLICIES = ("quart", "openfaas-ce", "openfaas-pro", "knative", "hpa", "ray", "uniform", "static")


ABLATIONS = (
    "quart-no-smoother", "quart-no-cache", "quart-no-compensator", "quart-no-prewarm",
    "quart-corrector",
)  # fmt: skip


def policy_names() -> list[str]:
    return [*POLICIES, *ABLATIONS]


@dataclass(frozen=True, slots=True)
class Infra:
    """Infrastructure a policy runs on, independent of the policy (issue #11 item 2)."""

    name: str
    placer: str
    fork: bool  # the parameter cache's fork tier
    prewarm: bool  # Quart's cache pre-warm (sim/cache_planner.py)
    about: str


INFRAS = {
    "cache": Infra("cache", "quart", True, True,
                   "Quart's cache-aware placer, fork tier and cache pre-warm"),
    "fork": Infra("fork", "least-allocated", True, False,
                  "Kubernetes least-allocated placement with a host-memory fork tier"),
    "k8s": Infra("k8s", "least-allocated", False, False,
                 "Kubernetes least-allocated placement, every start loads its weights"),
    "ray": Infra("ray", "ray-default", False, False,
                 "Ray's default (hybrid) scheduling, every start loads its weights"),
}  # fmt: skip

# A comparison of more stage visits than this is refused (``workloads.Estimate``).
MAX_VISITS = 50_000_000

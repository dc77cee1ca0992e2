"""Policies by name: what ``controller.policy`` and ``--policy`` accept.

``quart`` (corrector + smoother + CPU compensator, ``control/quart.py``), ``quart-corrector``
(the Replica Corrector alone) and every baseline of ``control/baselines``.
"""

from __future__ import annotations

from typing import Any

from quartfaas.control.baselines import BASELINES
from quartfaas.control.config import ControllerConfig
from quartfaas.control.policy import Policy
from quartfaas.errors import SpecError


def policy_names() -> list[str]:
    names = ["quart-corrector", *sorted(BASELINES)]
    try:
        import quartfaas.control.quart  # noqa: F401

        names.insert(0, "quart")
    except ImportError:
        pass
    return names


def make_policy(name: str, config: ControllerConfig | None = None, **kw: Any) -> Policy:
    """A policy by name; ``SpecError`` listing the valid names for an unknown one."""
    config = config or ControllerConfig()
    if name == "quart-corrector":
        from quartfaas.control.corrector import ReplicaCorrector

        return ReplicaCorrector(config)
    if name == "quart" and "quart" in policy_names():
        from quartfaas.control.quart import QuartPolicy

        return QuartPolicy(config, **kw)
    if name in BASELINES:
        return BASELINES[name](**kw)
    raise SpecError(f"unknown policy {name!r}; valid policies: {policy_names()}")

"""Every scaling policy by name: Quart, its corrector alone, and the baselines.

Neighbours: ``quart.QuartPolicy`` (``"quart"``), ``corrector.ReplicaCorrector``
(``"quart-corrector"``, the ablation without smoother and compensator) and
``baselines.BASELINES`` (real systems' rules, built with their own defaults). The CLI, the
serve path and the simulator experiments look policies up here, so a name means the same
policy everywhere. ``ControllerConfig`` configures the Quart policies; baselines take their
own parameters as keyword overrides (they model other systems, whose settings differ).
"""

from __future__ import annotations

from typing import Any

from quartfaas.control.baselines import BASELINES
from quartfaas.control.baselines import make_policy as make_baseline
from quartfaas.control.config import POLICY_NAMES, ControllerConfig
from quartfaas.control.corrector import ReplicaCorrector
from quartfaas.control.policy import Policy
from quartfaas.control.quart import QuartPolicy
from quartfaas.errors import SpecError

QUART_OPTIONS = (
    "predictor",
    "smoother",
    "compensator",
    "smoother_config",
    "compensator_config",
    "demand_model",
    "weights_dir",
)


def policy_names() -> list[str]:
    """Every name ``make_policy`` accepts: Quart's two first, then the baselines, sorted."""
    return list(POLICY_NAMES)


def make_policy(name: str, config: ControllerConfig | None = None, **kw: Any) -> Policy:
    """The policy called ``name``; ``SpecError`` (listing valid names/options) otherwise."""
    if name == "quart":
        unknown = sorted(set(kw) - set(QUART_OPTIONS))
        if unknown:
            raise SpecError(
                f"unknown option(s) {', '.join(unknown)} for policy 'quart'; valid options: "
                f"{', '.join(QUART_OPTIONS)}"
            )
        if config is not None:
            kw.setdefault("predictor", config.predictor)
        return QuartPolicy(config, **kw)
    if name == "quart-corrector":
        if kw:
            raise SpecError(
                f"policy 'quart-corrector' takes no options (got {', '.join(sorted(kw))}); "
                "configure it through ControllerConfig"
            )
        return ReplicaCorrector(config)
    if name in BASELINES:
        return make_baseline(name, **kw)
    raise SpecError(f"unknown policy {name!r}; valid names: {', '.join(policy_names())}")


__all__ = ["QUART_OPTIONS", "make_policy", "policy_names"]

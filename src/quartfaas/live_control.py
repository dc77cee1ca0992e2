"""The control loop wired to a gateway in this process: one function for every runtime.

``quartfaas.runtime.EmbeddedRuntime`` (local processes) and
``quartfaas.backends.ray.runtime.RayRuntime`` (Ray actors) run the same controller: the
spec's policy (``control/registry.py``) in a ``ControlLoop`` over their backend, fed by
an ``InProcessCollector`` on their gateway, with the decision metrics on the gateway's
``/metrics``, hold logging and, when asked, a JSONL decision log (``control/sinks.py``),
ticked by ``run_live`` until the runtime's stop event. Only the backend and the CPU
reading differ. (``quartfaas control`` runs the same loop against a remote gateway, with
a Prometheus collector: ``cli/serving.py``.)
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from quartfaas.clock import Clock
from quartfaas.control.backend import Backend
from quartfaas.control.config import ControllerConfig
from quartfaas.control.loop import ControlLoop, run_live
from quartfaas.dataplane.gateway import Gateway

log = logging.getLogger("quartfaas.runtime")


def live_controller(
    cfg: ControllerConfig,
    gateway: Gateway,
    backend: Backend,
    clock: Clock,
    stop: asyncio.Event,
    *,
    decision_log: Path | None = None,
    cpu_utilisation: Callable[[str, float], float | None] | None = None,
    label: str = "",
) -> tuple[ControlLoop, Coroutine[Any, Any, None]]:
    """The loop, and the coroutine that runs it (the caller schedules it as a task)."""
    from quartfaas.control.registry import make_policy
    from quartfaas.control.sinks import DecisionMetrics, HoldLogger, JsonlDecisionLog
    from quartfaas.control.warm import warm_up
    from quartfaas.metrics.collector import InProcessCollector

    sinks: list[Any] = [DecisionMetrics(gateway.metrics.registry), HoldLogger()]
    if decision_log is not None:
        sinks.append(JsonlDecisionLog(decision_log))
    policy = make_policy(cfg.policy, cfg)
    # The first tick compiles (or loads) the controller's kernels: here, while the
    # runtime starts, not on the event loop's first tick under load (control/warm.py).
    spent = warm_up(policy)
    loop = ControlLoop(policy, backend, sinks)
    collector = InProcessCollector(gateway, cpu_utilisation=cpu_utilisation)
    log.info(
        "controller: policy %s every %.1f s%s (warmed up in %.2f s)",
        cfg.policy, cfg.interval_s, label, spent,
    )  # fmt: skip
    return loop, run_live(loop, collector.collect, clock, cfg.interval_s, stop)

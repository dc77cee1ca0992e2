"""The Replica Corrector: how many replicas each stage needs now.

Decides a guarded replica target per stage from a ``PipelineSnapshot`` (measured arrival
rate, service time and its variability, tail latency, queue): one joint plan of the whole
pipeline against the end-to-end SLO (``planner`` on the tail model of ``tailmodel``, with
Erlang C from ``queueing``), whose inputs ``feedback`` corrects from measured tails; then
``hysteresis`` and the ``guards``. ``budget`` scores critical stages against the budgets
the plan derives. ``corrector.ReplicaCorrector`` is the policy; ``targets`` holds its state
and its output; ``inputs`` reads a snapshot (and the smoother's ``ArrivalForecast``).
"""

from quartfaas.control.corrector.corrector import NO_DATA, ReplicaCorrector
from quartfaas.control.corrector.inputs import ArrivalForecast
from quartfaas.control.corrector.targets import (
    CorrectorState,
    CorrectorTargets,
    StageState,
    StageTarget,
)

__all__ = [
    "NO_DATA",
    "ArrivalForecast",
    "CorrectorState",
    "CorrectorTargets",
    "ReplicaCorrector",
    "StageState",
    "StageTarget",
]

"""The Replica Corrector: how many replicas each stage needs now.

Decides a guarded replica target per stage from a ``PipelineSnapshot`` (measured arrival
rate, service time and its variability, tail latency, queue) and the stage's share of the
end-to-end SLO: a queueing-model estimate (``queueing``: Erlang-C, G/G/c, end-to-end tail)
planned against the stage budget (``budget``), corrected by PID feedback on the measured
tail (``pid``), then rate limits, bounds, cooldowns and the downscale delay (``guards``).
``corrector.ReplicaCorrector`` is the policy; ``targets`` holds its state and its output.
"""

from quartfaas.control.corrector.corrector import NO_DATA, ReplicaCorrector
from quartfaas.control.corrector.targets import (
    CorrectorState,
    CorrectorTargets,
    StageState,
    StageTarget,
)

__all__ = [
    "NO_DATA",
    "CorrectorState",
    "CorrectorTargets",
    "ReplicaCorrector",
    "StageState",
    "StageTarget",
]

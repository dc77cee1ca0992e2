"""The CPU Compensator: how much CPU each replica gets, changed in place.

Decides ``cpu_per_replica`` per stage (never a replica count) from a ``PipelineSnapshot``
(CPU utilisation per replica, tail latency against the stage budget, replica counts before
and after a consolidation) and a demand model of the cores a replica needs at a given load
concentration (``cpu_demand``, fitted from finished episodes). ``compensator.CpuCompensator``
runs one raise/evaluate/hold episode per stage (``state``) under ``config``'s limits.
"""

from quartfaas.control.compensator.compensator import CpuCompensator, compensate
from quartfaas.control.compensator.config import CompensatorConfig
from quartfaas.control.compensator.cpu_demand import DemandModel, DemandSample, fit_demand_model
from quartfaas.control.compensator.state import (
    CompensatorState,
    Phase,
    StageCpuState,
    episode_sample,
)

__all__ = [
    "CompensatorConfig",
    "CompensatorState",
    "CpuCompensator",
    "DemandModel",
    "DemandSample",
    "Phase",
    "StageCpuState",
    "compensate",
    "episode_sample",
    "fit_demand_model",
]

"""Arrivals for the simulator and the load generator: ``traces`` (the Azure traces and the
``Trace`` container), ``synthetic`` (seeded arrival processes), ``workload`` (``Workload``,
the ``kind:key=value`` description of either), ``loadgen`` (the open-loop HTTP load
generator) with ``payloads`` (request bodies) and ``records`` (what a run records)."""

from quartfaas.workload.workload import Workload

__all__ = ["Workload"]

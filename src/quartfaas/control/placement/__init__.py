"""Placement: where each new replica starts and which replicas stop.

Decides, for a scaling decision's starts and stops, the server and GPU of every new replica
and the replicas to stop, from frozen inputs (``PlacementRequest``: servers' GPUs and free
memory, each server's host-memory cache as its ``KeysManager`` sees it, live replicas and
stage needs). Quart's placer (``search``) minimises expected start time, using forks from
cached weights (``keys_manager``, ``cache_plan``), plus spread; ``baselines`` holds the
simple placers it is compared with; ``placer`` holds the ``Placer`` protocol and
``get_placer``.
"""

from quartfaas.control.placement.placer import (
    GPU,
    PLACERS,
    BaselinePlacer,
    Cost,
    Infeasible,
    Placement,
    PlacementConfig,
    PlacementPlan,
    PlacementRequest,
    Placer,
    PlannedEviction,
    QuartPlacer,
    Replica,
    ServerState,
    StageReq,
    StartCostModel,
    StartSource,
    Stop,
    evaluate,
    get_placer,
    make_server,
)

__all__ = [
    "GPU",
    "PLACERS",
    "BaselinePlacer",
    "Cost",
    "Infeasible",
    "Placement",
    "PlacementConfig",
    "PlacementPlan",
    "PlacementRequest",
    "Placer",
    "PlannedEviction",
    "QuartPlacer",
    "Replica",
    "ServerState",
    "StageReq",
    "StartCostModel",
    "StartSource",
    "Stop",
    "evaluate",
    "get_placer",
    "make_server",
]

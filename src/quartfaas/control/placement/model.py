"""Placement inputs, outputs, settings and the start-cost model (frozen, no behaviour).

Neighbours: ``state.py`` holds the working state every placer searches over;
``search.py`` + ``local.py`` (Quart's solver) and
``baselines.py`` decide; ``plan.py`` turns a decision into a
``PlacementPlan``; ``placement.py`` is the public face (registry, ``get_placer``) and
documents the method.

Units: bytes (``_bytes``), seconds (``_s``), CPU cores (``_cores``). A server's host-memory
cache is the frozen ``CacheView`` of its ``KeysManager`` (``control/placement/keys_manager.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from quartfaas.control.placement.keys_manager import GIB, CacheView, KeysManager
from quartfaas.control.placement.startup_delays import DEFAULT_TABLE, DelayTable, Tier, delay

# Cost of leaving one requested replica unplaced. It dwarfs any start time or dispersion,
# so every placer first places as many replicas as the hard constraints allow.
UNPLACED_PENALTY_S = 1.0e4


class StartSource(StrEnum):
    """Where a new replica's weights come from (the expected start tier).

    Backends report ``control.backend.StartTier``: FORK/PREFORK for ``fork``, MMAP/COLD for
    ``disk`` and ``remote`` (kept apart here because their bandwidths differ).
    """

    FORK = "fork"  # host-memory hit: fork from the server's cached stage template
    DISK = "disk"  # the stage file on the server's local disk / page cache
    REMOTE = "remote"  # fetched from remote storage


SOURCE_RANK = {StartSource.FORK: 0, StartSource.DISK: 1, StartSource.REMOTE: 2}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StartCostModel(_Frozen):
    """Expected seconds from a start call to a ready replica, by start tier.

    Computed by ``control/placement/startup_delays.delay`` from the one delay table the
    simulator also uses (``sim/cluster.TableDelays``), for a GPU replica:

    fork:   ``fork_s + cuda_context_s + size / h2d`` (the fork template never initialises
            CUDA, so a forked GPU child creates its own context)
    disk:   ``process_start_s + size / disk_bytes_per_s + cuda_context_s + size / h2d``
    remote: ``process_start_s + size / remote_bytes_per_s + cuda_context_s + size / h2d``

    plus ``readiness_s``; ``h2d`` is the pinned bandwidth when ``pinned``, else the pageable
    one (``DelayTable.pageable_bytes_per_s``). Every default is ``DEFAULT_TABLE``'s, whose
    figures cite their source or the benchmark that measured them. All are settings:
    measure your own cluster (``benchmarks/gpu_scaleup.py``).
    """

    fork_s: float = Field(default=DEFAULT_TABLE.fork_s, ge=0, le=600, description="fork, s")
    process_start_s: float = Field(
        default=DEFAULT_TABLE.process_start_s,
        ge=0,
        le=600,
        description="fresh process: interpreter, import torch, build the stage, s",
    )
    cuda_context_s: float = Field(
        default=DEFAULT_TABLE.cuda_context_s, ge=0, le=600, description="CUDA context, s"
    )
    host_to_gpu_bytes_per_s: float = Field(
        default=DEFAULT_TABLE.pinned_bytes_per_s,
        gt=0,
        description="pinned copy of weights from host memory to GPU, bytes/s",
    )
    host_memcpy_bytes_per_s: float = Field(
        default=DEFAULT_TABLE.host_memcpy_bytes_per_s,
        gt=0,
        description="host memcpy (pageable copies are staged through a pinned buffer), bytes/s",
    )
    disk_bytes_per_s: float = Field(
        default=DEFAULT_TABLE.disk_bytes_per_s, gt=0, description="local disk read, bytes/s"
    )
    remote_bytes_per_s: float = Field(
        default=DEFAULT_TABLE.remote_bytes_per_s, gt=0, description="remote fetch, bytes/s"
    )
    readiness_s: float = Field(
        default=DEFAULT_TABLE.readiness_s, ge=0, le=600, description="readiness delay, s"
    )
    pinned: bool = Field(default=False, description="host pages are page-locked before copy")

    def table(self) -> DelayTable:
        """These figures as the shared ``DelayTable``."""
        return replace(
            DEFAULT_TABLE,
            fork_s=self.fork_s,
            process_start_s=self.process_start_s,
            cuda_context_s=self.cuda_context_s,
            pinned_bytes_per_s=self.host_to_gpu_bytes_per_s,
            host_memcpy_bytes_per_s=self.host_memcpy_bytes_per_s,
            disk_bytes_per_s=self.disk_bytes_per_s,
            remote_bytes_per_s=self.remote_bytes_per_s,
            readiness_s=self.readiness_s,
        )

    @classmethod
    def from_table(cls, table: DelayTable, *, pinned: bool = False) -> StartCostModel:
        return cls(
            fork_s=table.fork_s,
            process_start_s=table.process_start_s,
            cuda_context_s=table.cuda_context_s,
            host_to_gpu_bytes_per_s=table.pinned_bytes_per_s,
            host_memcpy_bytes_per_s=table.host_memcpy_bytes_per_s,
            disk_bytes_per_s=table.disk_bytes_per_s,
            remote_bytes_per_s=table.remote_bytes_per_s,
            readiness_s=table.readiness_s,
            pinned=pinned,
        )

    def seconds(self, source: StartSource, size_bytes: int) -> float:
        return delay(_TIER[source], size_bytes, True, self.table(), pinned=self.pinned)


_TIER = {StartSource.FORK: Tier.FORK, StartSource.DISK: Tier.DISK, StartSource.REMOTE: Tier.REMOTE}


class PlacementConfig(_Frozen):
    """Settings of every placer (baselines read only the GPU-memory rule and costs)."""

    lambda_s_per_nat: float = Field(
        default=0.5,
        ge=0,
        le=1000,
        description="weight of the dispersion term n*KL, seconds per nat",
    )
    target: Literal["speed", "free-gpus"] = Field(
        default="speed",
        description="dispersion target per server: speed-weighted free GPUs "
        "(sum of speed x free/total memory) or unweighted free GPUs",
    )
    target_smoothing: float = Field(
        default=0.01,
        gt=0,
        le=1,
        description="share of the mean capacity added to every server's target",
    )
    gpu_memory_factor: float = Field(
        default=1.4, ge=1, le=10, description="GPU memory of a replica = stage size x this"
    )
    gpu_memory_cap_bytes: int = Field(
        default=43 * GIB,
        gt=0,
        description="cap on a replica's GPU memory requirement (prototype: 43 GB)",
    )
    pipeline_server_penalty_s: float = Field(
        default=0.05,
        ge=0,
        le=1000,
        description="cost per other-stage replica of the pipeline on a server",
    )
    pipeline_gpu_penalty_s: float = Field(
        default=0.5,
        ge=0,
        le=1000,
        description="cost per other-stage replica of the pipeline on a GPU",
    )
    exact_max_leaves: int = Field(
        default=20_000,
        ge=0,
        le=10**8,
        description="run the exact search when the space is this small",
    )
    local_search_passes: int = Field(
        default=3, ge=0, le=100, description="improvement passes after the greedy construction"
    )
    cost: StartCostModel = Field(default_factory=StartCostModel, description="start costs")


# ------------------------------------------------------------------------------ inputs


@dataclass(frozen=True, slots=True)
class GPU:
    gpu_id: str
    total_bytes: int
    free_bytes: int
    speed: float = 1.0  # relative throughput (A100 > V100); weights the dispersion target


@dataclass(frozen=True, slots=True)
class ServerState:
    """One server at decision time."""

    name: str
    gpus: tuple[GPU, ...]
    cache: CacheView  # host memory total, threshold capacity and cached stages
    host_free_bytes: int
    cpu_free_cores: float
    disk_keys: frozenset[str] | None = None  # stage files on local disk; None: all of them

    @property
    def host_memory_bytes(self) -> int:
        return self.cache.host_memory_bytes


@dataclass(frozen=True, slots=True)
class Replica:
    stage: str
    server: str
    gpu: str
    replica_id: str = ""


@dataclass(frozen=True, slots=True)
class StageReq:
    """What one replica of a stage needs."""

    key: str
    size_bytes: int
    pipeline: str = ""  # stages of one pipeline are spread (soft penalty); "" = none
    critical: bool = False
    cpu_cores: float = 1.0
    gpu_memory_bytes: int | None = None  # default: size x gpu_memory_factor, capped


@dataclass(frozen=True)
class PlacementRequest:
    """Servers, live replicas, stage needs, and how many replicas to start/stop per stage."""

    servers: tuple[ServerState, ...]
    stages: tuple[StageReq, ...]
    replicas: tuple[Replica, ...] = ()
    start: Mapping[str, int] = field(default_factory=dict)
    stop: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0


# ----------------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Placement:
    stage: str
    server: str
    gpu: str
    source: StartSource
    expected_start_s: float
    reason: str
    admits: bool = False  # this start creates the server's cache entry for the stage


@dataclass(frozen=True, slots=True)
class Stop:
    stage: str
    server: str
    gpu: str
    replica_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class PlannedEviction:
    """A cache entry a server must drop to make room for the plan's new entries."""

    server: str
    key: str
    size_bytes: int
    reason: str


@dataclass(frozen=True, slots=True)
class Infeasible:
    stage: str
    requested: int
    placed: int
    reason: str


@dataclass(frozen=True, slots=True)
class Cost:
    """The objective: start seconds + spread penalties + lambda x dispersion (+ unplaced)."""

    start_s: float
    spread_s: float
    dispersion_nats: float
    lambda_s_per_nat: float
    unplaced: int

    @property
    def total_s(self) -> float:
        return (
            self.start_s
            + self.spread_s
            + self.lambda_s_per_nat * self.dispersion_nats
            + UNPLACED_PENALTY_S * self.unplaced
        )


@dataclass(frozen=True, slots=True)
class PlacementPlan:
    placer: str
    solver: str
    placements: tuple[Placement, ...]
    stops: tuple[Stop, ...]
    evictions: tuple[PlannedEviction, ...]
    infeasible: tuple[Infeasible, ...]
    cost: Cost

    @property
    def ok(self) -> bool:
        """Every requested start was placed."""
        return not self.infeasible


# ---------------------------------------------------------------------------- builders


def make_server(
    name: str,
    *,
    gpus: int | tuple[GPU, ...] = 4,
    gpu_bytes: int = 40 * GIB,
    speed: float = 1.0,
    host_memory_bytes: int = 256 * GIB,
    host_free_bytes: int | None = None,
    cpu_free_cores: float = 32.0,
    cached: Mapping[str, int] | None = None,
    pinned: frozenset[str] = frozenset(),
    memory_threshold_frac: float = 0.85,
    disk_keys: frozenset[str] | None = None,
) -> ServerState:
    """Test/simulator builder: ``make_server("s1", gpus=4, cached={"bert-0": 5 * GIB})``."""
    if isinstance(gpus, int):
        gpus = tuple(GPU(f"gpu{i}", gpu_bytes, gpu_bytes, speed) for i in range(gpus))
    km = KeysManager(host_memory_bytes, memory_threshold_frac)
    for i, (key, size) in enumerate((cached or {}).items()):
        adm = km.admit(key, size, float(i))
        if not adm.admitted:
            raise ValueError(f"cannot build server {name}: {key}: {adm.reason}")
        if key in pinned:
            km.pin(key)
    free = host_memory_bytes - km.used_bytes if host_free_bytes is None else host_free_bytes
    return ServerState(name, gpus, km.view(), free, cpu_free_cores, disk_keys)

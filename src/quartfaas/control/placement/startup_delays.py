"""Replica start-up delays by parameter-cache tier: one table for the simulator and the placer.

A new replica of a stage is ready after the sum of the terms its tier pays:

============  =======================================================================
tier          seconds from the start call to a replica that serves
============  =======================================================================
``prefork``   ``prefork_s`` (a child forked and warmed in advance is handed over; for a
              GPU stage it has created its CUDA context in advance, so it pays only the
              weight copy to the GPU)
``fork``      ``fork_s`` (+ ``cuda_context_s`` + copy to the GPU for a GPU stage: the
              template never initialises CUDA, so each forked child creates its own
              context)
``host``      ``process_start_s`` + (GPU: ``cuda_context_s`` + copy): a new process maps
              the host-memory (tmpfs) copy of the weights zero-copy
``disk``      ``process_start_s`` + size / ``disk_bytes_per_s`` (+ GPU terms)
``remote``    ``process_start_s`` + size / ``remote_bytes_per_s`` (+ GPU terms)
``none``      ``process_start_s`` (a stage without weights)
============  =======================================================================

plus ``readiness_s`` for every tier (the time until the platform notices the replica is
ready). The copy to the GPU runs at the *pinned* bandwidth when the host pages are
page-locked and at the *pageable* bandwidth otherwise. Pageable copies are staged by the
CUDA driver through a pinned bounce buffer (NVIDIA, "How to Optimize Data Transfers in
CUDA C/C++", developer blog, 2012), so the model is two copies in series:
``1 / pageable = 1 / pinned + 1 / host_memcpy``. Forked pages are pageable unless the child
pins them first (``pin_s_per_gib``, then the pinned bandwidth).

The warm-up forward a replica runs before it reports ready is not in the table: it depends
on the stage, and the simulator adds the stage's service time on the replica's GPU.

Every figure below names its source: measured here (the benchmark and its row in
README.md) or cited (a public source), or marked ASSUMED with what would measure it.
Neighbours: ``sim/cluster.py`` (``TableDelays``) reads this table; the placer's cost model
(``control/placement_model.py``) is to read it too (issue #11). Pure data and functions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

GIB = 1 << 30


class Tier(StrEnum):
    """Where a new replica's weights come from, fastest first."""

    PREFORK = "prefork"
    FORK = "fork"
    HOST = "host"  # new process mapping the host-memory (tmpfs) copy; StartTier.MMAP
    DISK = "disk"  # new process reading the local stage file; StartTier.COLD
    REMOTE = "remote"  # new process fetching from shared storage
    NONE = "none"  # no weights


def pcie_pinned_bytes_per_s(gen: int, lanes: int = 16, efficiency: float = 0.70) -> float:
    """Pinned host-to-device copy bandwidth of a PCIe link.

    Raw rates from the PCI-SIG base specifications: 8 GT/s per lane (gen 3) doubling per
    generation, 128b/130b encoding. ``efficiency`` (achieved / raw): 0.70, from 11 GB/s of
    pinned H2D reported on a PCIe 3.0 x16 Titan X in the comments of NVIDIA's "How to
    Optimize Data Transfers in CUDA C/C++" (forums.developer.nvidia.com thread 148400),
    i.e. 11 / 15.75.
    """
    if gen < 3 or lanes < 1 or not 0 < efficiency <= 1:
        raise ValueError(f"need PCIe gen >= 3, lanes >= 1, 0 < efficiency <= 1; got {gen}, "
                         f"{lanes}, {efficiency}")  # fmt: skip
    gt_per_s = 8e9 * 2 ** (gen - 3)
    return gt_per_s * lanes * (128 / 130) / 8 * efficiency


@dataclass(frozen=True, slots=True)
class DelayTable:
    """The figures of the start-up model (seconds, bytes/s). Defaults and their sources:"""

    # Measured here: benchmarks/scaleup.py on the 2-vCPU development machine, README.md
    # "new replica of a 1 GiB stage, call-to-ready p50": prefork 4.0 ms.
    prefork_s: float = 0.004
    # Same row: fork 272 ms including a warm-up forward (warm request 193 ms, README row
    # "request to a stage at zero replicas"): 272 - 193 = 79 ms.
    fork_s: float = 0.079
    # Same row: mmap 2.1 s = new process (interpreter, import torch, build the stage) +
    # zero-copy map + warm-up forward 0.19 s; the map itself is ~ms, so ~1.9 s.
    process_start_s: float = 1.9
    # Same row: cold 2.6 s vs mmap 2.1 s for 1 GiB read from the local file: ~2 GiB/s
    # (the file may have been partly in page cache; an evicted file read at 0.7-0.95 GB/s
    # on the same machine class, so this is the optimistic end).
    disk_bytes_per_s: float = 2.0 * GIB
    # Cited: a 10 GbE link (IEEE 802.3ae, 10 Gb/s) at TCP goodput with a 1500-byte MTU,
    # 1448 payload bytes per 1538 bytes on the wire (94.1%): 1.18e9 B/s.
    remote_bytes_per_s: float = 10e9 * 1448 / 1538 / 8
    # Cited: CUDA context creation on the first CUDA call of a process takes 1-2 s
    # (pytorch/pytorch#39005, a maintainer: "CUDA context initialization can,
    # unfortunately, take this long"; #22583 reports 4 s with an older stack). We take
    # 1.5 s. Replace with ``cuda_init_s`` of benchmarks/gpu_scaleup.py where a GPU is lent.
    cuda_context_s: float = 1.5
    # Pinned H2D default: PCIe 4.0 x16 (see pcie_pinned_bytes_per_s); a cluster passes its
    # GPUs' own link.
    pinned_bytes_per_s: float = pcie_pinned_bytes_per_s(4)
    # Measured here: one-core host memcpy of 128 MiB warm buffers, median of 7, 7.2 GB/s on
    # the 2-vCPU development machine (python -c: np.copyto(b, a) timed with perf_counter).
    host_memcpy_bytes_per_s: float = 7.2e9
    # ASSUMED 0: the cost of page-locking forked pages (cudaHostRegister) is not measured
    # yet; benchmarks/gpu_scaleup.py times it ("fork+pinned").
    pin_s_per_gib: float = 0.0
    # Embedded runtime: a worker reports ready on its lifeline pipe, so 0. Under a
    # Kubernetes readiness probe (periodSeconds defaults to 10 s, Kubernetes docs
    # "Configure Liveness, Readiness and Startup Probes") the mean wait is half a period;
    # see KUBERNETES_READINESS_S.
    readiness_s: float = 0.0

    def __post_init__(self) -> None:
        for name in DelayTable.__slots__:
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= 0):
                raise ValueError(f"DelayTable.{name} must be a finite number >= 0, got {v}")
        for name in ("disk_bytes_per_s", "remote_bytes_per_s", "pinned_bytes_per_s",
                     "host_memcpy_bytes_per_s"):  # fmt: skip
            if getattr(self, name) <= 0:
                raise ValueError(f"DelayTable.{name} must be > 0")

    @property
    def pageable_bytes_per_s(self) -> float:
        """H2D from pageable memory: a memcpy into the driver's pinned buffer, then DMA."""
        return 1.0 / (1.0 / self.pinned_bytes_per_s + 1.0 / self.host_memcpy_bytes_per_s)


KUBERNETES_READINESS_S = 5.0  # half the default readiness-probe period of 10 s (cited above)
DEFAULT_TABLE = DelayTable()


@dataclass(frozen=True, slots=True)
class Breakdown:
    """The terms of one start, in seconds (``total_s`` is their sum)."""

    process_s: float = 0.0  # prefork hand-over, fork, or a new process
    read_s: float = 0.0  # weights from disk or remote storage into host memory
    cuda_context_s: float = 0.0
    pin_s: float = 0.0
    h2d_s: float = 0.0
    readiness_s: float = 0.0

    @property
    def total_s(self) -> float:
        return (self.process_s + self.read_s + self.cuda_context_s + self.pin_s + self.h2d_s
                + self.readiness_s)  # fmt: skip


def breakdown(
    tier: Tier | str,
    size_bytes: float,
    gpu: bool,
    table: DelayTable = DEFAULT_TABLE,
    *,
    pinned: bool = False,
) -> Breakdown:
    """The terms of a start of ``size_bytes`` of weights via ``tier``.

    ``gpu``: the replica runs on a GPU (CUDA context and the copy to the device apply).
    ``pinned``: the host pages are page-locked before the copy (forked pages pay
    ``pin_s_per_gib`` to be pinned; pages a new process reads are read into pinned memory).
    """
    t = Tier(tier)
    if not (math.isfinite(size_bytes) and size_bytes >= 0):
        raise ValueError(f"size_bytes must be a finite number >= 0, got {size_bytes}")
    if t is Tier.NONE:
        return Breakdown(process_s=table.process_start_s, readiness_s=table.readiness_s)
    process = {Tier.PREFORK: table.prefork_s, Tier.FORK: table.fork_s}.get(t, table.process_start_s)
    read = 0.0
    if t is Tier.DISK:
        read = size_bytes / table.disk_bytes_per_s
    elif t is Tier.REMOTE:
        read = size_bytes / table.remote_bytes_per_s
    ctx = pin = h2d = 0.0
    if gpu:
        ctx = 0.0 if t is Tier.PREFORK else table.cuda_context_s
        if pinned:
            if t in (Tier.PREFORK, Tier.FORK, Tier.HOST):  # existing pages must be locked
                pin = size_bytes / GIB * table.pin_s_per_gib
            h2d = size_bytes / table.pinned_bytes_per_s
        else:
            h2d = size_bytes / table.pageable_bytes_per_s
    return Breakdown(process, read, ctx, pin, h2d, table.readiness_s)


def delay(
    tier: Tier | str,
    size_bytes: float,
    gpu: bool,
    table: DelayTable = DEFAULT_TABLE,
    *,
    pinned: bool = False,
) -> float:
    """Seconds from a start call to a ready replica (without its warm-up forward)."""
    return breakdown(tier, size_bytes, gpu, table, pinned=pinned).total_s


__all__ = [
    "DEFAULT_TABLE",
    "GIB",
    "KUBERNETES_READINESS_S",
    "Breakdown",
    "DelayTable",
    "Tier",
    "breakdown",
    "delay",
    "pcie_pinned_bytes_per_s",
]

"""The simulated cluster: GPU servers, replica start delays by cache tier, and presets.

A ``ClusterSpec`` is frozen data: servers (GPUs of one type each, host memory that holds the
parameter cache, CPU cores) and ``StartDelays``, the model of how long a new replica takes
to serve depending on where its weights come from. ``sim/backend.py`` keeps the mutable
state (free GPU memory, host caches) and asks a ``Placer`` (``placement.py``) for a GPU.

``TableDelays`` computes the same delays from the shared table in
``control/placement/startup_delays.py`` (CUDA context for a forked GPU replica, pageable vs pinned
copies, readiness); ``GpuSharing`` and ``sharing_multiplier`` model GPUs shared by several
replicas (exclusive by default). ``sim/gpu_accounting.py`` computes GPU occupancy and
whether a deployment fits.

Presets (``cluster_preset(name)``): ``paper`` is the prototype's cluster, ``small`` a
two-server cluster for tests and examples. Figures that are assumptions, not measurements,
say so where they are defined; replace them with measured ones as they become available.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from enum import StrEnum

from quartfaas.control.backend import StartTier
from quartfaas.control.placement import startup_delays as sd
from quartfaas.errors import SimulationError


@dataclass(frozen=True, slots=True)
class GpuType:
    """One GPU model.

    ``speed`` divides service times (1.0 = the GPU the stage profile was measured on).
    Batch-1 inference of large-model stages is memory-bandwidth bound, so speed is taken
    as the ratio of datasheet memory bandwidths to the V100's 900 GB/s. The profile's GPU is
    not recorded in the prototype; we assume V100 (an assumption, documented here).
    ``h2d_gib_per_s`` is pinned host-to-device copy bandwidth of the GPU's PCIe link
    (gen3 x16 for V100, gen4 x16 for the others) at the achieved share cited in
    ``control/placement/startup_delays.pcie_pinned_bytes_per_s``.
    """

    name: str
    memory_gib: float
    speed: float
    h2d_gib_per_s: float


_GEN3 = sd.pcie_pinned_bytes_per_s(3) / sd.GIB
_GEN4 = sd.pcie_pinned_bytes_per_s(4) / sd.GIB
GPU_TYPES: dict[str, GpuType] = {
    # memory: datasheet; speed: bandwidth / 900 GB/s; h2d: pinned over the PCIe link.
    "V100": GpuType("V100", 32.0, 1.0, _GEN3),  # 900 GB/s HBM2, PCIe 3.0
    "3090": GpuType("3090", 24.0, 936 / 900, _GEN4),  # 936 GB/s GDDR6X, PCIe 4.0
    "A40": GpuType("A40", 48.0, 696 / 900, _GEN4),  # 696 GB/s GDDR6, PCIe 4.0
    "A100": GpuType("A100", 40.0, 1555 / 900, _GEN4),  # A100-40GB: 1555 GB/s HBM2, PCIe 4.0
}


@dataclass(frozen=True, slots=True)
class ServerSpec:
    name: str
    gpu: GpuType
    gpus: int
    host_memory_gib: float
    cpu_cores: int


class WeightSource(StrEnum):
    """Where a replica that misses the host cache reads its weights."""

    LOCAL_DISK = "local-disk"  # the prototype pre-staged stage files on every node
    REMOTE = "remote"  # shared storage over the network


@dataclass(frozen=True, slots=True)
class StartDelays:
    """Seconds from a start call to a replica that serves, by parameter-cache tier.

    - FORK (host-memory hit): ``fork_s`` + size / GPU h2d bandwidth + one warm-up forward.
      ``fork_s`` defaults to 0.08 s, measured by ``benchmarks/scaleup.py`` on the
      2-vCPU development machine: a replica of a 1 GiB stage forked on demand was ready
      in 272 ms (p50), of which the warm-up forward (193 ms warm) is modelled separately.
      (A pre-forked, warmed child was ready in 4 ms; the simulator does not model the
      pre-forked pool, so its fork starts are conservative.)
    - COLD (miss): ``process_start_s`` (a fresh interpreter importing torch, ~0.8 s in
      host-facts) + size / source bandwidth + size / h2d + warm-up. Local disk
      0.8 GiB/s (host-facts measured 0.7-0.95 GB/s reading evicted weights); remote
      1.1 GiB/s (a 10 GbE link at ~95% goodput). Both are assumptions for the paper
      cluster, whose disks and network the prototype does not describe.
    - NONE (a stage without weights): ``process_start_s``.
    ``readiness_s`` is added to every tier (a readiness probe's period; 0 by default).
    """

    fork_s: float = 0.08
    process_start_s: float = 0.8
    disk_gib_per_s: float = 0.8
    remote_gib_per_s: float = 1.1
    readiness_s: float = 0.0
    source: WeightSource = WeightSource.LOCAL_DISK

    def seconds(
        self, tier: StartTier, size_gib: float, gpu: GpuType | None, warmup_s: float
    ) -> float:
        """Start delay of a replica of ``size_gib`` weights on ``gpu`` via ``tier``."""
        h2d = size_gib / gpu.h2d_gib_per_s if gpu is not None else 0.0
        if tier is StartTier.NONE:
            return self.process_start_s + self.readiness_s
        if tier in (StartTier.FORK, StartTier.PREFORK):
            return self.fork_s + h2d + warmup_s + self.readiness_s
        if tier is StartTier.COLD:
            bw = (
                self.disk_gib_per_s
                if self.source is WeightSource.LOCAL_DISK
                else self.remote_gib_per_s
            )
            return self.process_start_s + size_gib / bw + h2d + warmup_s + self.readiness_s
        raise SimulationError(f"the simulator does not model start tier {tier.value!r}")


# StartTier (what a backend reports) -> the shared table's tier, per weight source.
_TABLE_TIER = {
    StartTier.PREFORK: sd.Tier.PREFORK,
    StartTier.FORK: sd.Tier.FORK,
    StartTier.MMAP: sd.Tier.HOST,
    StartTier.NONE: sd.Tier.NONE,
}


@dataclass(frozen=True, slots=True)
class TableDelays(StartDelays):
    """``StartDelays`` computed from the shared table ``control/placement/startup_delays.py``.

    Unlike the legacy model it charges a forked GPU replica a CUDA context, copies forked
    (pageable) pages at the pageable bandwidth unless ``pinned``, and takes the pinned
    bandwidth from the GPU's own link (``GpuType.h2d_gib_per_s``). The legacy fields of
    ``StartDelays`` are ignored, except ``source`` (where a miss reads its weights).
    """

    table: sd.DelayTable = field(default_factory=sd.DelayTable)
    pinned: bool = False

    def seconds(
        self, tier: StartTier, size_gib: float, gpu: GpuType | None, warmup_s: float
    ) -> float:
        if tier is StartTier.COLD:
            t = sd.Tier.DISK if self.source is WeightSource.LOCAL_DISK else sd.Tier.REMOTE
        else:
            t = _TABLE_TIER[tier]
        table = self.table
        if gpu is not None:
            table = replace(table, pinned_bytes_per_s=gpu.h2d_gib_per_s * sd.GIB)
        start = sd.delay(t, size_gib * sd.GIB, gpu is not None, table, pinned=self.pinned)
        return start + (warmup_s if t is not sd.Tier.NONE else 0.0)


class GpuSharing(StrEnum):
    """How replicas may share one GPU (a cluster option; ``exclusive`` is the default).

    - ``exclusive``: a replica of a GPU stage holds one whole GPU (the prototype's rule);
    - ``time-slice``: replicas share a GPU by the driver's time slicing;
    - ``mps``: replicas share it concurrently under CUDA MPS.

    Either way a sharer's service time grows with its share of the memory bandwidth; see
    ``sharing_multiplier``.
    """

    EXCLUSIVE = "exclusive"
    TIME_SLICE = "time-slice"
    MPS = "mps"


def sharing_multiplier(
    sharing: GpuSharing, tenants: int, busy_frac: float = 1.0, switch_overhead: float = 0.0
) -> float:
    """Service-time multiplier of one of ``tenants`` replicas sharing a GPU.

    Model: bandwidth-bound processor sharing. Batch-1 inference of large-model stages is
    limited by memory bandwidth (a roofline argument), and a GPU's memory bandwidth is
    split among the kernels running at once, so while ``m`` sharers are busy each gets
    ``1/m`` of it and its visit takes ``m`` times as long. Each co-tenant is busy a
    fraction ``busy_frac`` of the time, so on average ``m = 1 + (tenants - 1) x busy_frac``
    (``busy_frac = 1`` is the worst case, all busy). Time slicing also pays
    ``switch_overhead`` (share of each slice lost to context switches) per extra busy
    tenant; MPS shares without switching. ``exclusive`` admits one tenant, multiplier 1.
    """
    if tenants < 1 or not 0.0 <= busy_frac <= 1.0 or switch_overhead < 0:
        raise SimulationError(
            f"sharing needs tenants >= 1 ({tenants}), 0 <= busy_frac <= 1 ({busy_frac}) "
            f"and switch_overhead >= 0 ({switch_overhead})"
        )
    if sharing is GpuSharing.EXCLUSIVE:
        if tenants > 1:
            raise SimulationError(f"an exclusive GPU holds one replica, not {tenants}")
        return 1.0
    busy = 1.0 + (tenants - 1) * busy_frac
    if sharing is GpuSharing.TIME_SLICE:
        return busy * (1.0 + switch_overhead * (busy - 1.0))
    return busy


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    name: str
    servers: tuple[ServerSpec, ...]
    delays: StartDelays = field(default_factory=StartDelays)
    cache_threshold_frac: float = 0.85  # prototype KeysManager: cached stages <= 85% of memory
    sharing: GpuSharing = GpuSharing.EXCLUSIVE  # replicas of GPU stages per GPU: see GpuSharing

    @property
    def total_gpus(self) -> int:
        return sum(s.gpus for s in self.servers)

    def describe(self) -> str:
        kinds: dict[str, int] = {}
        for s in self.servers:
            kinds[s.gpu.name] = kinds.get(s.gpu.name, 0) + s.gpus
        mix = ", ".join(f"{n} x {k}" for k, n in sorted(kinds.items()))
        return f"{self.name}: {len(self.servers)} servers, {self.total_gpus} GPUs ({mix})"


def _paper() -> ClusterSpec:
    # The prototype's scheduler lists GPUs per node by type (3090 x8, A100 x4, V100 x8,
    # A40 x4) and its README asks for "12+ GPU servers"; it does not say how many of each,
    # so we take three of each type. Host memory is hard-coded there to 32 or 64 GB without
    # saying which node has which: we give 64 GiB to the 8-GPU nodes and 32 GiB to the
    # 4-GPU ones. CPU cores are not recorded: 64 per node is an assumption.
    layout = (("3090", 8, 64.0), ("A100", 4, 32.0), ("V100", 8, 64.0), ("A40", 4, 32.0))
    servers = []
    n = 221
    for kind, gpus, mem in layout:
        for _ in range(3):
            servers.append(ServerSpec(f"cc{n}", GPU_TYPES[kind], gpus, mem, 64))
            n += 1
    return ClusterSpec("paper", tuple(servers))


def _small() -> ClusterSpec:
    servers = tuple(ServerSpec(f"node{i}", GPU_TYPES["V100"], 4, 64.0, 16) for i in range(2))
    return ClusterSpec("small", servers)


_PRESETS = {"paper": _paper, "small": _small}


def cluster_names() -> list[str]:
    return sorted(_PRESETS)


def cluster_preset(name: str, *, delays: StartDelays | None = None) -> ClusterSpec:
    """A named cluster; ``delays`` replaces its start-delay model (default ``TableDelays()``:
    the shared table ``control/placement/startup_delays.py`` the placer's cost model reads)."""
    try:
        spec = _PRESETS[name]()
    except KeyError:
        raise SimulationError(
            f"unknown cluster {name!r}; valid clusters: {', '.join(cluster_names())}"
        ) from None
    return replace(spec, delays=TableDelays() if delays is None else delays)

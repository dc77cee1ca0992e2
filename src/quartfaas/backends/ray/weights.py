"""The parameter cache on Ray: stage weights in each node's object store.

One ``WeightOwner`` actor per node (0 CPUs, pinned to the node with a hard node-affinity
strategy) puts a stage's tensors into *that node's* object store with ``ray.put`` and
keeps the reference, so the object lives as long as the owner and no longer depends on
any other node. A replica on the node gets the same reference and maps the tensors
zero-copy: ``ray.get`` returns read-only numpy views over the shared-memory object, and
``torch.from_numpy`` wraps them without a copy (``tensors_from_object``).

Tiers (``control.backend.StartTier``), chosen by ``ObjectStoreCache.acquire``:

- ``OBJECT_STORE``: the replica's node already holds the stage: nothing is read or copied;
- ``REMOTE``: another node holds it: the node's owner pulls the object across (Ray's
  object manager) and puts its own copy, so the node then holds the stage itself. Nodes
  the caller suspects (a replica died there: ``nodes.placement_rounds``) are asked last;
  a pull that fails (the source's owner died with its node: ``OwnerDiedError``) forgets
  that source's copy and tries the next holder, then the file;
- ``COLD``: no node holds it: the node's owner reads the stage's safetensors file.

The bookkeeping is one ``KeysManager`` per node (``control/placement/keys_manager.py``) sized to
the node's object-store memory, so the cache-aware placer reads the same ``CacheView`` it
reads for the local backend: ``ObjectStoreCache.views()``. Entries are pinned while the
node runs replicas of the stage. A dead node's entries are dropped (``forget_node``).

Tensors travel as raw bytes (``uint8`` arrays) plus ``(dtype, shape)``, because numpy
has no bfloat16; the replica views them back with ``Tensor.view(dtype)``.
"""

from __future__ import annotations

import asyncio
import logging
import time
import warnings
from collections.abc import Collection
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ray
from ray.exceptions import RayError
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from quartfaas.control.backend import StartTier
from quartfaas.control.placement.keys_manager import CacheView, KeysManager
from quartfaas.errors import BackendError

if TYPE_CHECKING:
    import torch

    from quartfaas.spec import PipelineSpec

log = logging.getLogger(__name__)

# A stage's weights as stored: tensor name -> (raw bytes as uint8, torch dtype name, shape).
StoredWeights = dict[str, tuple[Any, str, tuple[int, ...]]]


def read_stage_file(spec_json: str, index: int) -> StoredWeights:
    """Read stage ``index``'s safetensors file (checked against its manifest) as raw bytes."""
    import torch

    from quartfaas.models.stage import _load
    from quartfaas.spec import PipelineSpec

    spec = PipelineSpec.model_validate_json(spec_json)
    state, _ = _load(spec, index, "mmap", False)
    out: StoredWeights = {}
    for name, tensor in state.items():
        t = tensor.contiguous()
        raw = t.reshape(-1).view(torch.uint8) if t.numel() else torch.empty(0, dtype=torch.uint8)
        out[name] = (raw.numpy(), str(t.dtype).removeprefix("torch."), tuple(t.shape))
    return out


def tensors_from_object(stored: StoredWeights) -> dict[str, torch.Tensor]:
    """Zero-copy torch views over an object-store value (read-only memory)."""
    import torch

    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():
        # The object store's buffers are read-only; stage weights are never written.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, (raw, dtype, shape) in stored.items():
            out[name] = torch.from_numpy(raw).view(getattr(torch, dtype)).reshape(shape)
    return out


def stored_bytes(stored: StoredWeights) -> int:
    return sum(int(raw.nbytes) for raw, _, _ in stored.values())


class WeightOwner:
    """Owns the object-store copies of stage weights on one node (a Ray actor)."""

    def __init__(self) -> None:
        self._refs: dict[str, ray.ObjectRef[Any]] = {}
        self._sizes: dict[str, int] = {}

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    def load_file(self, stage: str, spec_json: str, index: int) -> tuple[list[Any], int, float]:
        """Cold tier: read the file, put it here. Returns ([ref], bytes, seconds)."""
        t0 = time.perf_counter()
        stored = read_stage_file(spec_json, index)
        self._refs[stage] = ray.put(stored)
        self._sizes[stage] = stored_bytes(stored)
        del stored  # the file mapping goes; the object store holds the only copy
        return [self._refs[stage]], self._sizes[stage], time.perf_counter() - t0

    def pull(self, stage: str, remote: list[Any]) -> tuple[list[Any], int, float]:
        """Remote tier: fetch another node's copy, put this node's own. Same return."""
        t0 = time.perf_counter()
        stored = ray.get(remote[0])
        self._refs[stage] = ray.put(stored)
        self._sizes[stage] = stored_bytes(stored)
        del stored  # drops the pulled secondary copy; this node's own copy stays
        return [self._refs[stage]], self._sizes[stage], time.perf_counter() - t0

    def drop(self, stage: str) -> bool:
        self._sizes.pop(stage, None)
        return self._refs.pop(stage, None) is not None

    def held(self) -> dict[str, int]:
        return dict(self._sizes)


@dataclass
class _Held:
    refs: list[Any]
    size_bytes: int


class ObjectStoreCache:
    """Which nodes hold which stages' weights, and the owners that hold them.

    Called on the backend's event loop only. ``acquire`` returns the weights reference a
    replica on ``node_id`` should map, with the tier it took; ``release`` unpins.
    """

    def __init__(self, spec: PipelineSpec, *, memory_threshold_frac: float = 0.85) -> None:
        self.spec = spec
        self._spec_json = spec.model_dump_json()
        self.threshold = memory_threshold_frac
        self._owners: dict[str, Any] = {}
        self._held: dict[str, dict[str, _Held]] = {}  # node -> stage -> refs
        self._keys: dict[str, KeysManager] = {}
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}

    # -- the KeysManager-compatible view ----------------------------------------------

    def add_node(self, node_id: str, object_store_bytes: int) -> None:
        if node_id not in self._keys:
            self._keys[node_id] = KeysManager(max(1, object_store_bytes), self.threshold)

    def views(self) -> dict[str, CacheView]:
        """Per node, the frozen cache view the placer reads."""
        return {node: km.view() for node, km in self._keys.items()}

    def holders(self, stage: str) -> list[str]:
        return sorted(n for n, held in self._held.items() if stage in held)

    def forget_node(self, node_id: str) -> None:
        """A node died: its objects (and its owner) are gone."""
        self._owners.pop(node_id, None)
        self._held.pop(node_id, None)
        self._keys.pop(node_id, None)

    # -- acquire / release ------------------------------------------------------------

    def _owner(self, node_id: str) -> Any:
        owner = self._owners.get(node_id)
        if owner is None:
            owner = (
                ray.remote(WeightOwner)
                .options(
                    num_cpus=0,
                    max_concurrency=4,
                    scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False),
                )
                .remote()
            )
            self._owners[node_id] = owner
        return owner

    async def acquire(
        self, stage: str, node_id: str, avoid: Collection[str] = ()
    ) -> tuple[StartTier, list[Any]]:
        """The weights for a replica of ``stage`` on ``node_id`` (pinned until release);
        a remote copy is pulled from the nodes in ``avoid`` only when no other has one."""
        index = self.spec.stage_index(stage)
        if self.spec.model.kind == "synthetic":
            return StartTier.NONE, []
        lock = self._locks.setdefault((node_id, stage), asyncio.Lock())
        async with lock:  # two starts on one node read the file once
            held = self._held.get(node_id, {}).get(stage)
            if held is not None:
                tier = StartTier.OBJECT_STORE
            else:
                owner = self._owner(node_id)
                pulled = await self._pull(owner, stage, node_id, avoid)
                if pulled is not None:
                    refs, size = pulled
                    tier = StartTier.REMOTE
                else:
                    refs, size, _ = await owner.load_file.remote(stage, self._spec_json, index)
                    tier = StartTier.COLD
                held = _Held(refs, size)
                self._held.setdefault(node_id, {})[stage] = held
                km = self._keys.get(node_id)
                if km is not None:
                    adm = km.admit(stage, size, time.monotonic())
                    if not adm.admitted:
                        await self._drop(node_id, stage)
                        raise BackendError(
                            f"node {node_id[:8]}: weights of {stage} do not fit: {adm.reason}"
                        )
                    for victim in adm.evicted:
                        await self._drop(node_id, victim)
            km = self._keys.get(node_id)
            if km is not None:
                if tier is StartTier.OBJECT_STORE:
                    km.lookup(stage, time.monotonic())
                km.pin(stage)
            return tier, held.refs

    async def _pull(
        self, owner: Any, stage: str, node_id: str, avoid: Collection[str]
    ) -> tuple[list[Any], int] | None:
        """``(refs, bytes)`` of this node's copy pulled from another holder, or None when
        no holder could give one (then the file is read)."""
        sources = sorted((n for n in self.holders(stage) if n != node_id), key=lambda n: n in avoid)
        for source in sources:
            held = self._held.get(source, {}).get(stage)
            if held is None:  # forgotten while an earlier source was tried
                continue
            try:
                refs, size, _ = await owner.pull.remote(stage, held.refs)
            except RayError as exc:
                log.warning(
                    "weights of %s could not be pulled from node %s (%s); trying the next "
                    "holder or the file", stage, source[:8], type(exc).__name__,
                )  # fmt: skip
                if self._held.get(source, {}).get(stage) is held:
                    # not a source again; the placer's view drops it unless pinned
                    del self._held[source][stage]
                    km = self._keys.get(source)
                    if km is not None:
                        km.evict(stage)
                continue
            return refs, size
        return None

    def release(self, stage: str, node_id: str) -> None:
        km = self._keys.get(node_id)
        if km is not None and stage in km:
            km.unpin(stage)

    async def _drop(self, node_id: str, stage: str) -> None:
        self._held.get(node_id, {}).pop(stage, None)
        owner = self._owners.get(node_id)
        if owner is not None:
            await owner.drop.remote(stage)

    def close(self) -> None:
        for owner in self._owners.values():
            ray.kill(owner)
        self._owners.clear()
        self._held.clear()

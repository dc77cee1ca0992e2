"""One stage replica as a Ray actor: the same stage code as the local worker.

``StageReplica`` is an async actor. Its constructor is cheap (no weights); the backend
then calls ``load(weights)`` with the object-store reference ``ObjectStoreCache``
acquired for the actor's node, and the replica is READY when ``ready()`` answers (the
weights are mapped and one warm-up forward ran: ``dataplane/worker.build_runner`` does the
same for a local worker). Forward passes go through the local worker's runners
(``dataplane/runners.py``: ``TorchRunner`` / ``SyntheticRunner``) on tensor frames
(``dataplane/framing.py``), so a Ray replica computes exactly what a local one does.

``invoke(frame)`` has two return values, ``(meta, frame)``: the caller awaits the small
``meta`` (service seconds) and passes the ``frame`` reference on to the next stage, so
activations stay in the object store between stages (``client.py``). Frames travel as
``uint8`` numpy arrays (``activations.py``): the input Ray hands ``invoke`` on the node
that holds it is a read-only view on the object store, decoded in place
(``activations.decode_torch_views``), never copied into the actor's heap. A bad input
raises ``ModelInputError``/``FramingError`` in the actor; the caller sees it wrapped in
Ray's task error and maps it to 400. ``watch_inputs(True)`` records, per call, what the
input was (type, owner, writeable) and the actor's RSS and anonymous memory at entry and
exit (``inputs_seen``): how the zero-copy claim is checked on a real cluster.

``lifeline()`` never returns while the replica lives: the backend awaits it, and Ray
raises ``RayActorError`` there when the actor or its node dies (crash detection).
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import deque
from typing import Any

import ray

from quartfaas.backends.ray.activations import (
    decode_torch_views,
    frame_view,
    input_facts,
    to_object,
)
from quartfaas.backends.ray.weights import StoredWeights, tensors_from_object
from quartfaas.dataplane.runners import StageRunner, SyntheticRunner, TorchRunner
from quartfaas.spec import PipelineSpec


def memory_kib() -> dict[str, int]:
    """This process's RSS, PSS, private and anonymous memory (KiB) from /proc (Linux);
    empty where unreadable. A copy into the heap shows in ``anonymous``; pages mapped
    from the object store (shared memory) do not."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty", "Anonymous"):
                    out[key.lower()] = int(rest.split()[0])
    except OSError:
        pass
    return out


def _watched(mem: dict[str, int]) -> dict[str, int]:
    return {"rss": mem.get("rss", -1), "anonymous": mem.get("anonymous", -1)}


def build_stage_runner(spec: PipelineSpec, index: int, stored: StoredWeights | None) -> StageRunner:
    """A runner over zero-copy weights (or a synthetic one), warmed by one forward."""
    if spec.model.kind == "synthetic":
        return SyntheticRunner(spec, index)
    import torch

    from quartfaas.models import build_stage

    if stored is None:
        raise ValueError(f"stage {spec.stages[index].name} needs weights")
    threads = spec.stages[index].torch_threads
    torch.set_num_threads(threads)
    model = build_stage(spec, index, weights=tensors_from_object(stored))
    runner = TorchRunner(model, spec, index, threads, decode=decode_torch_views)
    # Two tokens touch every weight page like a long input does; the compute of 16
    # tokens (the local worker's warm-up) is ~0.15 s of a 1 GiB stage's start.
    runner.warmup(batch=1, seq_len=2)
    return runner


class StageReplica:
    """A replica of one stage (wrapped with ``ray.remote`` by the backend)."""

    def __init__(self, spec_json: str, index: int, replica_id: str) -> None:
        self.spec = PipelineSpec.model_validate_json(spec_json)
        self.index = index
        self.replica_id = replica_id
        self.runner: StageRunner | None = None
        self._loaded = asyncio.Event()
        self._stopped = asyncio.Event()
        self._error: str | None = None
        self.inflight = 0
        self.load_s = 0.0
        self.weights: StoredWeights | None = None
        self._watch = False
        self._seen: deque[dict[str, Any]] = deque(maxlen=16)
        if self.spec.model.kind != "synthetic":
            import torch  # noqa: F401  (the import is part of a fresh replica's start)

    def node_id(self) -> str:
        return str(ray.get_runtime_context().get_node_id())

    async def load(self, weights: list[Any]) -> float:
        """Map the weights (``[ref]``, resolved here, not by Ray) and warm up."""
        t0 = time.perf_counter()
        try:
            if weights:
                # Keep the value: the views point into its object-store buffers.
                self.weights = await weights[0]
            runner = await asyncio.to_thread(
                build_stage_runner, self.spec, self.index, self.weights
            )
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"
            self._loaded.set()
            raise
        self.runner = runner
        self.load_s = time.perf_counter() - t0
        self._loaded.set()
        return self.load_s

    async def ready(self) -> dict[str, Any]:
        """Answers once loaded: node, pid, load seconds, memory (raises if loading failed)."""
        await self._loaded.wait()
        if self._error is not None:
            raise RuntimeError(f"replica {self.replica_id} failed to load: {self._error}")
        return {
            "node_id": self.node_id(),
            "pid": os.getpid(),
            "load_s": self.load_s,
            **memory_kib(),
        }

    async def invoke(self, frame: Any) -> tuple[dict[str, float], Any]:
        """One forward on ``frame`` (a ``uint8`` array, or bytes from older callers);
        returns the meta and the output frame as a ``uint8`` array."""
        if self.runner is None:
            raise RuntimeError(f"replica {self.replica_id} is not ready")
        facts = self._entry(frame) if self._watch else None
        self.inflight += 1
        try:
            out, service_s = await self.runner(frame_view(frame))
            result = to_object(out)
        finally:
            self.inflight -= 1
        if facts is not None:
            facts["exit_kib"] = _watched(memory_kib())
            self._seen.append(facts)
        return {"service_s": service_s}, result

    def _entry(self, frame: Any) -> dict[str, Any]:
        return {**input_facts(frame), "entry_kib": _watched(memory_kib())}

    def watch_inputs(self, on: bool) -> dict[str, int]:
        """Record each input's facts and the memory (RSS, anonymous KiB) at the call's
        entry and exit, while the input is alive (``inputs_seen``); returns the memory
        now, the baseline."""
        self._watch = on
        self._seen.clear()
        return _watched(memory_kib())

    def inputs_seen(self) -> list[dict[str, Any]]:
        return list(self._seen)

    def set_threads(self, threads: int) -> int:
        if self.runner is None:
            raise RuntimeError("not loaded yet")
        return self.runner.set_threads(threads)

    async def drain(self, timeout_s: float) -> bool:
        """Wait until no call is in flight (the caller stopped sending first)."""
        deadline = time.monotonic() + timeout_s
        while self.inflight > 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        return self.inflight == 0

    async def lifeline(self) -> None:
        await self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()
        if self.runner is not None:
            self.runner.close()

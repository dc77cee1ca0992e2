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
activations stay in the object store between stages (``client.py``). A bad input raises
``ModelInputError``/``FramingError`` in the actor; the caller sees it wrapped in Ray's
task error and maps it to 400.

``lifeline()`` never returns while the replica lives: the backend awaits it, and Ray
raises ``RayActorError`` there when the actor or its node dies (crash detection).
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

import ray

from quartfaas.backends.ray.weights import StoredWeights, tensors_from_object
from quartfaas.dataplane.runners import StageRunner, SyntheticRunner, TorchRunner
from quartfaas.spec import PipelineSpec


def memory_kib() -> dict[str, int]:
    """This process's RSS and PSS (KiB) from /proc (Linux); empty where unreadable."""
    out: dict[str, int] = {}
    try:
        with open("/proc/self/smaps_rollup") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("Rss", "Pss", "Private_Clean", "Private_Dirty"):
                    out[key.lower()] = int(rest.split()[0])
    except OSError:
        pass
    return out


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
    runner = TorchRunner(model, spec, index, threads)
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

    async def invoke(self, frame: bytes) -> tuple[dict[str, float], bytes]:
        if self.runner is None:
            raise RuntimeError(f"replica {self.replica_id} is not ready")
        self.inflight += 1
        try:
            out, service_s = await self.runner(bytes(frame))
        finally:
            self.inflight -= 1
        return {"service_s": service_s}, out

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

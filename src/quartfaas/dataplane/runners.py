"""Stage runners: the compute inside a worker, separated from its HTTP server.

A runner is built once (weights loaded, one warm-up forward pass run) and then serves
frames: ``await runner(body) -> (out_body, service_s)``. Keeping it apart from the server
lets a stage template load a runner once and fork replicas that only start a server
(``dataplane/forkserver.py``), and lets a cold worker do both (``dataplane/worker.py``).

- ``SyntheticRunner`` has no weights; it validates the frame, spends its service time
  (none / an idle sleep standing for accelerator time / a CPU spin) and returns the frame
  unchanged. It never imports torch, so synthetic workers start in tens of milliseconds.
- ``TorchRunner`` runs a real stage model (``models/``) in a thread pool sized to the
  stage's ``max_concurrency`` so the event loop stays responsive while it computes.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import numpy as np

from quartfaas.dataplane import framing
from quartfaas.errors import ModelInputError
from quartfaas.spec import PipelineSpec, SyntheticWork


class StageRunner(Protocol):
    stage: str
    threads: int
    max_batch: int  # the spec's gateway.max_batch: a frame's rows the worker accepts

    async def __call__(self, body: bytes) -> tuple[bytes, float]:
        """Run the stage on one frame; returns the output frame and the service seconds."""
        ...

    def set_threads(self, threads: int) -> int:
        """Change intra-op threads in place; returns the previous value."""
        ...

    def close(self) -> None: ...


def _service_sampler(work: SyntheticWork, seed: int) -> Any:
    """Draws service times (s): fixed, exponential or Gamma with the given SCV."""
    mean = work.mean_ms / 1000.0
    rng = np.random.default_rng(seed)
    if work.scv == 0.0 or mean == 0.0:
        return lambda: mean
    shape = 1.0 / work.scv  # Gamma(k, θ) has SCV 1/k and mean kθ
    scale = mean / shape
    return lambda: float(rng.gamma(shape, scale))


class SyntheticRunner:
    """A stage without weights whose service time follows ``SyntheticWork``."""

    def __init__(self, spec: PipelineSpec, index: int, seed: int | None = None) -> None:
        stage = spec.stages[index]
        assert stage.synthetic is not None
        self.stage = stage.name
        self.work = stage.synthetic
        self.threads = 1
        self.max_bytes = spec.gateway.max_body_bytes
        self.max_batch = spec.gateway.max_batch
        seed = seed if seed is not None else zlib.crc32(f"{stage.name}:{os.getpid()}".encode())
        self._draw = _service_sampler(self.work, seed)
        self._pool: ThreadPoolExecutor | None = None
        if self.work.work == "spin":
            self._pool = ThreadPoolExecutor(stage.max_concurrency, thread_name_prefix="spin")

    async def __call__(self, body: bytes) -> tuple[bytes, float]:
        framing.parse_header(body, self.max_bytes)
        t0 = time.perf_counter()
        duration = self._draw()
        if self.work.work == "sleep" and duration > 0:
            await asyncio.sleep(duration)
        elif self.work.work == "spin" and duration > 0:
            assert self._pool is not None
            await asyncio.get_running_loop().run_in_executor(self._pool, _spin, duration)
        return body, time.perf_counter() - t0

    def set_threads(self, threads: int) -> int:
        previous, self.threads = self.threads, threads
        return previous

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    x = 0
    while time.perf_counter() < end:
        x += 1


class TorchRunner:
    """A real stage model; forward passes run in a pool of ``max_concurrency`` threads."""

    def __init__(
        self,
        model: Any,
        spec: PipelineSpec,
        index: int,
        threads: int,
        *,
        decode: Callable[[Any, int | None], Mapping[str, Any]] = framing.decode_torch,
    ) -> None:
        self.model = model
        # how an input frame becomes tensors: a copy (``framing.decode_torch``), or views
        # on the frame's buffer (the Ray backend's object-store activations)
        self.decode = decode
        self.stage = spec.stages[index].name
        self.max_bytes = spec.gateway.max_body_bytes
        self.max_batch = spec.gateway.max_batch
        self.threads = threads
        self._applied = threading.local()
        self._pool = ThreadPoolExecutor(
            spec.stages[index].max_concurrency, thread_name_prefix="forward"
        )

    def _forward(self, body: bytes) -> tuple[bytes, float]:
        import torch

        # torch/OpenMP thread counts are per calling thread: apply the wanted count in
        # the pool thread itself, and again after a change through set_threads.
        if getattr(self._applied, "threads", None) != self.threads:
            torch.set_num_threads(self.threads)
            self._applied.threads = self.threads
        inputs = self.decode(body, self.max_bytes)
        self.model.validate_inputs(inputs)
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = self.model.forward(inputs, validate=False)
        service = time.perf_counter() - t0
        return framing.encode_torch(out), service

    async def __call__(self, body: bytes) -> tuple[bytes, float]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._forward, body)

    def warmup(self, batch: int = 1, seq_len: int = 16) -> float:
        """One forward pass on example inputs (readiness waits for it); returns seconds."""
        example = self.model.example_inputs(batch, seq_len)
        body = framing.encode_torch(example)
        t0 = time.perf_counter()
        self._forward(body)
        return time.perf_counter() - t0

    def set_threads(self, threads: int) -> int:
        if threads < 1:
            raise ModelInputError(f"threads must be >= 1, got {threads}")
        previous, self.threads = self.threads, threads
        return previous

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

"""The parameter cache's GPU path (skipped without a CUDA device).

A stage template never initialises CUDA; the forked replica copies the weights from host
memory to its device. The pipeline's output on the GPU matches the CPU's.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

from helpers import tiny_bert_spec
from quartfaas.dataplane.param_cache import ParamCacheLauncher
from quartfaas.runtime import EmbeddedRuntime

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


def _summary(spec, text: str) -> dict:  # type: ignore[no-untyped-def]
    async def main() -> dict:  # type: ignore[type-arg]
        async with EmbeddedRuntime(spec) as rt, httpx.AsyncClient(base_url=rt.url) as c:
            launcher = rt.backend.launcher
            assert isinstance(launcher, ParamCacheLauncher)
            for pid in launcher.template_pids().values():
                maps = Path(f"/proc/{pid}/maps").read_text()
                assert "libcuda" not in maps, "a stage template initialised CUDA"
            r = await c.post(f"/function/{spec.name}", json={"inputs": text})
            assert r.status_code == 200, r.text
            return r.json()["output"]["embedding"]

    return asyncio.run(main())


def test_forked_gpu_replicas_match_cpu(tmp_path: Path, kill_leftovers: list[str]) -> None:
    from quartfaas.models import make_weights

    cpu = tiny_bert_spec(tmp_path, name="gpucpu")
    make_weights(cpu)
    gpu = cpu.model_copy(
        update={"stages": tuple(s.model_copy(update={"device": "cuda"}) for s in cpu.stages)}
    )
    kill_leftovers.append("gpucpu")
    a, b = _summary(cpu, "a forked replica on a gpu"), _summary(gpu, "a forked replica on a gpu")
    assert np.allclose(a["head"], b["head"], atol=1e-4) and np.allclose(
        a["norm"], b["norm"], atol=1e-4
    )

"""The parameter cache with real processes: templates, fork tiers, scale from zero."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from helpers import synthetic_spec, tiny_bert_spec
from quartfaas.control.backend import ReplicaState, StartTier
from quartfaas.dataplane.param_cache import ParamCacheLauncher
from quartfaas.dataplane.param_cache.host import pss_bytes
from quartfaas.errors import BackendError
from quartfaas.runtime import EmbeddedRuntime

pytestmark = pytest.mark.timeout(180)


async def until(cond: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


def tiers(rt: EmbeddedRuntime, stage: str) -> dict[str, float]:
    reg = rt.gateway.metrics.registry
    out = {}
    for t in StartTier:
        v = reg.get_sample_value(
            "quartfaas_replica_start_seconds_count", {"stage": stage, "tier": t.value}
        )
        if v:
            out[t.value] = v
    return out


def test_first_replica_loads_the_template_then_replicas_fork(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="tier", cache={"prefork": 1})

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt:
            kill_leftovers.append(str(rt.files.dir))
            stage = "tier-s0"
            assert tiers(rt, stage) == {"cold": 1.0}
            launcher = rt.backend.launcher
            assert isinstance(launcher, ParamCacheLauncher)
            # The template's pre-forked child is warm (and serving) before the first start.
            await until(lambda: (p := launcher.pool_status(stage)) is not None and p.warm >= 1)
            for n in (2, 3, 4):
                rt.backend.start_replica(stage)
                await until(lambda n=n: rt.gateway.pools[stage].ready_replicas == n)
            got = tiers(rt, stage)
            assert got.get("cold") == 1.0
            assert got.get("prefork", 0) + got.get("fork", 0) == 3
            assert got.get("prefork", 0) >= 1  # a warmed child was handed over
            reg = rt.gateway.metrics.registry
            assert reg.get_sample_value("quartfaas_param_cache_hits_total", {"stage": stage}) == 3
            assert reg.get_sample_value("quartfaas_param_cache_misses_total", {"stage": stage}) == 1
            async with httpx.AsyncClient(base_url=rt.url) as c:
                rs = await asyncio.gather(
                    *(c.post("/function/tier", json={"inputs": [[1]]}) for _ in range(8))
                )
            assert all(r.status_code == 200 for r in rs)

    asyncio.run(main())


def test_dead_template_is_restarted_and_replicas_keep_serving(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="tdie")

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt, httpx.AsyncClient(base_url=rt.url) as c:
            kill_leftovers.append(str(rt.files.dir))
            launcher = rt.backend.launcher
            assert isinstance(launcher, ParamCacheLauncher)
            old = launcher.template_pids()["tdie-s0"]
            os.kill(old, signal.SIGKILL)
            # The replica it forked keeps serving.
            assert (await c.post("/function/tdie", json={"inputs": [[1]]})).status_code == 200
            await until(lambda: launcher.template_pids().get("tdie-s0", old) != old)
            rt.backend.start_replica("tdie-s0")
            await until(lambda: rt.gateway.pools["tdie-s0"].ready_replicas == 2)
            assert (await c.post("/function/tdie", json={"inputs": [[1]]})).status_code == 200

    asyncio.run(main())


def test_scale_from_zero_and_back(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(
        2, name="zero", stage_overrides={1: {"min_replicas": 0}}, cache={"idle_to_zero_s": 1.0}
    )

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt, httpx.AsyncClient(base_url=rt.url) as c:
            kill_leftovers.append(str(rt.files.dir))
            assert rt.backend.list_replicas("zero-s1") == []
            # The first request waits in the stage queue and triggers a fork at once.
            r = await c.post("/function/zero", json={"inputs": [[1]]})
            assert r.status_code == 200, r.text
            assert rt.gateway.pools["zero-s1"].ready_replicas == 1
            assert tiers(rt, "zero-s1").keys() & {"fork", "prefork"}
            # Idle for idle_to_zero_s: back to zero; stage 0 (min 1) keeps its replica.
            await until(lambda: rt.backend.list_replicas("zero-s1") == [], 10.0)
            assert len(rt.backend.list_replicas("zero-s0")) == 1
            r = await c.post("/function/zero", json={"inputs": [[1]]})
            assert r.status_code == 200

    asyncio.run(main())


def test_cold_launcher_without_cache(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="nocache", cache={"enabled": False})

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt:
            kill_leftovers.append(str(rt.files.dir))
            assert not isinstance(rt.backend.launcher, ParamCacheLauncher)
            assert tiers(rt, "nocache-s0") == {"none": 1.0}

    asyncio.run(main())


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from quartfaas.models import make_weights

    spec = tiny_bert_spec(tmp_path_factory.mktemp("w"), name="tinyc")
    make_weights(spec)
    return spec


def test_real_stage_forks_share_weights(tiny_weights: Any, kill_leftovers: list[str]) -> None:
    spec = tiny_weights

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt, httpx.AsyncClient(base_url=rt.url) as c:
            kill_leftovers.append(str(rt.files.dir))
            stage = spec.stages[1].name
            for n in (2, 3):
                rt.backend.start_replica(stage)
                await until(lambda n=n: rt.gateway.pools[stage].ready_replicas == n)
            assert tiers(rt, stage).get("cold") == 1.0
            r = await c.post(f"/function/{spec.name}", json={"inputs": "hello forked world"})
            assert r.status_code == 200, r.text
            pids = [x.pid for x in rt.backend.list_replicas(stage) if x.state is ReplicaState.READY]
            assert len(pids) == 3 and all(p is not None for p in pids)
            assert all((pss_bytes(p) or 0) > 0 for p in pids if p is not None)
            launcher = rt.backend.launcher
            assert isinstance(launcher, ParamCacheLauncher)
            weights = launcher.shm_dir / f"{stage}.safetensors"
            size = weights.stat().st_size
            maps = [mapping_memory(p, weights) for p in pids if p is not None]
            # Every replica has the weights resident (its warm-up forward touched them) ...
            assert all(rss >= 0.9 * size for rss, _ in maps), (size, maps)
            # ... as pages shared with the template and the other replicas: their summed
            # proportional share is at most one copy, not one copy per replica (3x).
            assert sum(pss for _, pss in maps) <= size, (size, maps)
            assert all(pss <= rss / 2 for rss, pss in maps), maps

    asyncio.run(main())


def mapping_memory(pid: int, path: Path) -> tuple[int, int]:
    """(Rss, Pss) in bytes of a process's mappings of ``path`` (from /proc/PID/smaps)."""
    rss = pss = 0
    inside = False
    target = str(path.resolve())
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            head = line.split(None, 5)
            if len(head) >= 5 and "-" in head[0] and ":" not in head[0]:  # a mapping header
                inside = len(head) == 6 and head[5].strip() == target
            elif inside and line.startswith("Rss:"):
                rss += int(line.split()[1]) * 1024
            elif inside and line.startswith("Pss:"):
                pss += int(line.split()[1]) * 1024
    return rss, pss


def test_corrupt_weights_fail_with_the_file_named(tmp_path: Any, kill_leftovers: list[str]) -> None:
    from quartfaas.models import make_weights

    spec = tiny_bert_spec(tmp_path, name="corrupt")
    make_weights(spec)
    path = spec.stage_weights_path(1)
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # flip one byte in the tensor data
    path.write_bytes(bytes(data))
    kill_leftovers.append("corrupt-s1")

    async def main() -> None:
        rt = EmbeddedRuntime(spec)
        with pytest.raises(BackendError) as err:
            await rt.start()
        msg = str(err.value)
        assert str(path) in msg and "checksum" in msg

    asyncio.run(main())


def test_stage_larger_than_the_cache_is_refused(
    tiny_weights: Any, kill_leftovers: list[str]
) -> None:
    from quartfaas.control.placement.keys_manager import KeysManager

    spec = tiny_weights
    kill_leftovers.append(spec.stages[0].name)

    def small(files: Any) -> ParamCacheLauncher:
        return ParamCacheLauncher(files, keys=KeysManager(1000, 0.85))  # 850 bytes of cache

    async def main() -> None:
        rt = EmbeddedRuntime(spec, launcher_factory=small)
        with pytest.raises(BackendError) as err:
            await rt.start()
        assert "cannot be cached" in str(err.value)

    asyncio.run(main())

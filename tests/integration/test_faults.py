"""Faults of issue #13 on real worker processes: scale churn, a replica's death, a hung
replica, start-up and shutdown. Deadlines are generous and none is a timing assertion:
each test waits for a condition and checks outcomes (status codes, processes, files)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from helpers import synthetic_spec, worker_pids
from quartfaas.control.backend import ReplicaState
from quartfaas.runtime import EmbeddedRuntime

pytestmark = pytest.mark.timeout(240)


async def until(cond: Callable[[], bool], timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


def client(rt: EmbeddedRuntime) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=400, max_keepalive_connections=400)
    return httpx.AsyncClient(base_url=rt.url, timeout=120.0, limits=limits)


async def invoke(c: httpx.AsyncClient, name: str) -> int:
    return (await c.post(f"/function/{name}", json={"inputs": [[1, 2, 3]]})).status_code


def test_back_to_back_scale_down_leaves_no_untracked_worker(kill_leftovers: list[str]) -> None:
    # 4 then 1 at once, 30 times: the scale-downs meet replicas still forking (a SIGTERM
    # right after the fork); every process must end up tracked or gone.
    spec = synthetic_spec(1, name="churn", cache={"prefork": 0})

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt, client(rt) as c:
            kill_leftovers.append(str(rt.files.dir))
            stage = "churn-s0"
            for _ in range(30):
                for n in (4, 1):
                    r = await c.post(f"/system/scale-function/{stage}", json={"replicas": n})
                    assert r.status_code == 202, r.text
            launcher: Any = rt.backend.launcher
            templates = set(launcher.template_pids().values())

            def settled() -> bool:
                tracked = {r.pid for r in rt.backend.list_replicas(stage)}
                live = set(worker_pids(str(rt.files.dir))) - templates
                return len(tracked) == 1 and live == tracked

            await until(settled)  # SIGTERM, then SIGKILL after a bounded wait
            assert await invoke(c, "churn") == 200

    asyncio.run(main())


def test_requests_queued_on_a_killed_only_replica_wait_for_its_replacement(
    kill_leftovers: list[str],
) -> None:
    spec = synthetic_spec(
        1, name="orph", work="sleep", mean_ms=10.0,
        stage_overrides={0: {"max_concurrency": 1, "timeout_s": 60.0}},
    )  # fmt: skip

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt, client(rt) as c:
            kill_leftovers.append(str(rt.files.dir))
            pool = rt.gateway.pools["orph-s0"]
            (first,) = rt.backend.list_replicas("orph-s0")
            calls = [asyncio.ensure_future(invoke(c, "orph")) for _ in range(150)]
            await until(lambda: pool.queue_len >= 100)
            assert first.pid is not None
            os.kill(first.pid, signal.SIGKILL)
            codes = await asyncio.gather(*calls)
            assert codes == [200] * 150
            ids = sorted(r.replica_id for r in rt.backend.list_replicas("orph-s0"))
            assert ids == ["orph-s0-2"]  # exactly one replacement

    asyncio.run(main())


def test_hung_replica_is_ejected_and_returns_when_it_answers(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(
        1, name="hung", work="sleep", mean_ms=5.0,
        stage_overrides={0: {"min_replicas": 3, "max_concurrency": 2, "timeout_s": 60.0}},
    )  # fmt: skip

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt, client(rt) as c:
            kill_leftovers.append(str(rt.files.dir))
            pool = rt.gateway.pools["hung-s0"]
            assert (await c.get("/readyz")).status_code == 200
            victim = rt.backend.list_replicas("hung-s0")[0]
            assert victim.pid is not None
            stop = asyncio.Event()
            codes: list[int] = []

            async def load() -> None:
                while not stop.is_set():
                    codes.append(await invoke(c, "hung"))

            loaders = [asyncio.ensure_future(load()) for _ in range(8)]
            await asyncio.sleep(0.2)
            os.kill(victim.pid, signal.SIGSTOP)
            try:
                await until(lambda: pool.ejected_replicas == 1)
                r = await c.get("/readyz")
                assert r.status_code == 503 and r.json()["stages"]["hung-s0"] == "2/3"
                assert rt.gateway.gauges()["hung-s0"].ready == 2  # the controller's view
                n = len(codes)
                await until(lambda: len(codes) >= n + 50)  # served by the other two
            finally:
                os.kill(victim.pid, signal.SIGCONT)
            await until(lambda: pool.ejected_replicas == 0)
            stop.set()
            await asyncio.gather(*loaders)
            # Calls caught on the stopped replica were retried elsewhere: none failed.
            assert set(codes) == {200}, sorted(set(codes))
            assert (await c.get("/readyz")).status_code == 200

    asyncio.run(main())


def test_a_hung_only_replica_gets_a_stand_in_and_no_request_fails(
    kill_leftovers: list[str],
) -> None:
    spec = synthetic_spec(
        1, name="solo", work="sleep", mean_ms=5.0,
        stage_overrides={0: {"max_concurrency": 2, "timeout_s": 60.0}},
    )  # fmt: skip

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt, client(rt) as c:
            kill_leftovers.append(str(rt.files.dir))
            (victim,) = rt.backend.list_replicas("solo-s0")
            assert victim.pid is not None
            calls = [asyncio.ensure_future(invoke(c, "solo")) for _ in range(40)]
            os.kill(victim.pid, signal.SIGSTOP)
            try:
                more = [asyncio.ensure_future(invoke(c, "solo")) for _ in range(40)]
                codes = await asyncio.gather(*calls, *more)
            finally:
                os.kill(victim.pid, signal.SIGCONT)
            assert codes == [200] * 80
            assert len(rt.backend.list_replicas("solo-s0")) == 2  # the stand-in

    asyncio.run(main())


def test_requests_before_the_first_replica_is_ready_wait_for_it(
    tmp_path: Any, kill_leftovers: list[str]
) -> None:
    # The stage's first start takes longer than its timeout (its template's interpreter
    # sleeps 4 s at start-up, a stage timeout of 2 s): the request must wait for the
    # start (as a scale-from-zero request does), not time out.
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(4)\n")
    spec = synthetic_spec(1, name="early", stage_overrides={0: {"timeout_s": 2.0}})

    async def main() -> None:
        rt = EmbeddedRuntime(spec)
        kill_leftovers.append(str(rt.files.dir))
        paths = [str(tmp_path), *filter(None, [os.environ.get("PYTHONPATH")])]
        rt.files.worker_env["PYTHONPATH"] = os.pathsep.join(paths)
        try:
            await rt.start(wait_ready=False)
            async with client(rt) as c:
                assert (await c.get("/healthz")).status_code == 200
                r = await c.get("/readyz")
                assert r.status_code == 503 and r.json()["stages"] == {"early-s0": "0/1"}
                assert await invoke(c, "early") == 200
                assert (await c.get("/readyz")).status_code == 200
        finally:
            await rt.stop()

    asyncio.run(main())


def test_stop_answers_every_accepted_request_then_stops_workers(
    kill_leftovers: list[str],
) -> None:
    spec = synthetic_spec(
        1, name="drain", work="sleep", mean_ms=20.0, stage_overrides={0: {"max_concurrency": 2}},
        slo={"timeout_budget_s": 60.0},
    )  # fmt: skip

    async def main() -> None:
        rt = EmbeddedRuntime(spec)
        await rt.start()
        marker = str(rt.files.dir)
        kill_leftovers.append(marker)
        pool = rt.gateway.pools["drain-s0"]
        async with client(rt) as c:
            calls = [asyncio.ensure_future(invoke(c, "drain")) for _ in range(150)]
            await until(lambda: pool.queue_len >= 50)
            await rt.stop(grace_s=60.0)
            assert await asyncio.gather(*calls) == [200] * 150
            with pytest.raises(httpx.ConnectError):
                await c.get("/healthz")
        assert worker_pids(marker) == []
        assert not rt.files.dir.exists()  # clean shutdown removes its runtime folder

    asyncio.run(main())


def test_stop_with_no_grace_cuts_requests_short(kill_leftovers: list[str]) -> None:
    # The grace period is used (not aiohttp's 60 s): with 0.5 s, a 60 s queue is cut.
    spec = synthetic_spec(
        1, name="cut", work="sleep", mean_ms=200.0, stage_overrides={0: {"max_concurrency": 1}},
        slo={"timeout_budget_s": 120.0},
    )  # fmt: skip

    async def main() -> None:
        rt = EmbeddedRuntime(spec)
        await rt.start()
        kill_leftovers.append(str(rt.files.dir))
        pool = rt.gateway.pools["cut-s0"]
        async with client(rt) as c:
            calls = [asyncio.ensure_future(invoke(c, "cut")) for _ in range(300)]
            await until(lambda: pool.queue_len >= 200)
            t0 = time.monotonic()
            await rt.stop(grace_s=0.5)
            took = time.monotonic() - t0
            results = await asyncio.gather(*calls, return_exceptions=True)
        assert any(isinstance(r, Exception) for r in results)
        assert took < 30.0  # far below the queue's 60 s and aiohttp's 60 s default

    asyncio.run(main())


def test_replica_states_after_stop_are_finished(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="fin")

    async def main() -> None:
        rt = EmbeddedRuntime(spec)
        await rt.start()
        kill_leftovers.append(str(rt.files.dir))
        gone: list[str] = []
        rt.backend._on_exit = lambda info: gone.append(info.replica_id)
        before = {r.replica_id for r in rt.backend.list_replicas()}
        assert all(r.state is ReplicaState.READY for r in rt.backend.list_replicas())
        await rt.stop()
        assert set(gone) == before  # each replica's CPU group is released at shutdown

    asyncio.run(main())

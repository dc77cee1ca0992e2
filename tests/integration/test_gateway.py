"""The gateway and stage workers as real processes on 127.0.0.1 (synthetic stages: fast)."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import numpy as np
import pytest

from helpers import synthetic_spec, worker_pids
from quartfaas.control.backend import ReplicaState
from quartfaas.dataplane import framing
from quartfaas.errors import BackendError
from quartfaas.runtime import EmbeddedRuntime
from quartfaas.spec import PipelineSpec

pytestmark = pytest.mark.timeout(120)


def run(spec: PipelineSpec, body: Callable[[EmbeddedRuntime, httpx.AsyncClient], Awaitable[Any]],
        **kw: Any) -> Any:  # fmt: skip
    async def main() -> Any:
        async with (
            EmbeddedRuntime(spec, **kw) as rt,
            httpx.AsyncClient(base_url=rt.url, timeout=30.0) as client,
        ):
            return await body(rt, client)

    return asyncio.run(main())


async def until(cond: Callable[[], bool], timeout_s: float = 20.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met before the deadline")
        await asyncio.sleep(0.02)


def test_pipeline_invocation_and_openfaas_api(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(3, name="api")

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        r = await c.post("/function/api", json={"inputs": [[5, 6, 7]]})
        assert r.status_code == 200, r.text
        data = r.json()
        assert data["pipeline"] == "api"
        assert [t["stage"] for t in data["timings_ms"]["stages"]] == ["api-s0", "api-s1", "api-s2"]
        assert data["output"]["input_ids"]["shape"] == [1, 3]

        r = await c.get("/system/functions")
        assert r.status_code == 200
        fns = {f["name"]: f for f in r.json()}
        assert set(fns) == {"api", "api-s0", "api-s1", "api-s2"}
        s0 = fns["api-s0"]
        assert s0["replicas"] == 1 and s0["availableReplicas"] == 1
        assert s0["invocationCount"] == 0  # pipeline hops are not calls of the stage (#16)
        assert s0["labels"]["com.openfaas.scale.min"] == "1"
        assert s0["labels"]["com.openfaas.scale.max"] == "4"
        assert fns["api"]["invocationCount"] == 1

        r = await c.get("/system/function/api-s1")
        assert r.status_code == 200 and r.json()["name"] == "api-s1"
        assert (await c.get("/healthz")).text == "OK"

        # A single stage by its name: a tensor frame in, a frame out.
        frame = framing.encode_numpy({"hidden": np.ones((1, 2, 4), np.float32)})
        r = await c.post("/function/api-s1", content=frame,
                         headers={"Content-Type": framing.CONTENT_TYPE})  # fmt: skip
        assert r.status_code == 200
        assert framing.decode_numpy(r.content)["hidden"].shape == (1, 2, 4)

        text = (await c.get("/metrics")).text
        reg = rt.gateway.metrics.registry
        # gateway_* count calls from outside, labelled name.namespace; every stage visit
        # (pipeline hops included) is a quartfaas_stage_* sample (#16).
        fn = {"function_name": "api.openfaas-fn"}
        assert reg.get_sample_value("gateway_function_invocation_started", fn) == 1
        s1 = {"function_name": "api-s1.openfaas-fn"}
        assert reg.get_sample_value("gateway_function_invocation_started", s1) == 1
        ok = {"function_name": "api-s0.openfaas-fn", "code": "200"}
        assert reg.get_sample_value("gateway_function_invocation_total", ok) is None
        ok = {**fn, "code": "200"}
        assert reg.get_sample_value("gateway_functions_seconds_count", ok) == 1
        assert reg.get_sample_value("quartfaas_stage_arrivals_total", {"stage": "api-s1"}) == 2
        hop = {"stage": "api-s0", "code": "200"}
        assert reg.get_sample_value("quartfaas_stage_requests_total", hop) == 1
        assert 'quartfaas_stage_queue_length{stage="api-s0"} 0.0' in text
        assert 'quartfaas_stage_ready_replicas{stage="api-s2"} 1.0' in text
        assert 'gateway_service_count{function_name="api-s0.openfaas-fn"} 1.0' in text
        reg = rt.gateway.metrics.registry
        assert (
            reg.get_sample_value("quartfaas_stage_service_seconds_count", {"stage": "api-s1"}) == 2
        )

    run(spec, body)


def test_bad_input_is_answered_with_clear_errors(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="bad", gateway={"max_body_bytes": 4096})

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        r = await c.post(
            "/function/bad", content=b"{not json", headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        r = await c.post("/function/bad", json={"inputs": [[1, 2], [3]]})
        assert r.status_code == 400 and "equal lengths" in r.json()["error"]
        r = await c.post("/function/bad", json={"nope": 1})
        assert r.status_code == 400 and "inputs" in r.json()["error"]
        r = await c.post("/function/nope", json={"inputs": "x"})
        assert r.status_code == 404 and "bad-s0" in r.json()["error"]
        r = await c.post(
            "/function/bad", content=b"x" * 10_000, headers={"Content-Type": "application/json"}
        )
        assert r.status_code == 413 and "4096" in r.json()["error"]
        r = await c.post("/function/bad-s1", content=b"\x00garbage",
                         headers={"Content-Type": framing.CONTENT_TYPE})  # fmt: skip
        assert r.status_code == 400 and "frame" in r.json()["error"]
        r = await c.post(
            "/system/scale-function/bad-s0", json={"serviceName": "bad-s0", "replicas": 9}
        )
        assert r.status_code == 400 and "com.openfaas.scale.max" in r.json()["error"]
        r = await c.post("/system/scale-function/bad", json={"replicas": 9})
        assert r.status_code == 400 and "bad-s0" in r.json()["error"]
        r = await c.post("/system/scale-function/bad-s0", json={"serviceName": "x", "replicas": 2})
        assert r.status_code == 400 and "does not match" in r.json()["error"]
        # Errors are counted by code.
        reg = rt.gateway.metrics.registry
        assert (
            reg.get_sample_value(
                "gateway_function_invocation_total",
                {"function_name": "bad.openfaas-fn", "code": "400"},
            )
            == 3
        )

    run(spec, body)


def test_scale_api_starts_and_drains_replicas(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="sc", work="sleep", mean_ms=400.0,
                          stage_overrides={0: {"max_concurrency": 1}})  # fmt: skip

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        r = await c.post(
            "/system/scale-function/sc-s0", json={"serviceName": "sc-s0", "replicas": 3}
        )
        assert r.status_code == 202 and r.json()["started"] == 2
        await until(lambda: rt.gateway.pools["sc-s0"].ready_replicas == 3)
        fn = (await c.get("/system/function/sc-s0")).json()
        assert fn["replicas"] == 3 and fn["availableReplicas"] == 3
        # A request in flight survives a scale-down: the replica drains first.
        inflight = asyncio.create_task(c.post("/function/sc", json={"inputs": [[1]]}))
        await until(lambda: rt.gateway.pools["sc-s0"].inflight == 1)
        r = await c.post(
            "/system/scale-function/sc-s0", json={"serviceName": "sc-s0", "replicas": 1}
        )
        assert r.status_code == 202 and r.json()["stopping"] == 2
        assert (await inflight).status_code == 200
        await until(lambda: len(rt.backend.list_replicas("sc-s0")) == 1)

    run(spec, body)


def test_queue_full_answers_429_with_retry_after(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="qf", work="sleep", mean_ms=300.0,
                          stage_overrides={0: {"max_concurrency": 1, "max_replicas": 1}},
                          gateway={"max_queue_len": 1, "retry_after_s": 2})  # fmt: skip

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        rs = await asyncio.gather(
            *(c.post("/function/qf", json={"inputs": [[1]]}) for _ in range(4))
        )
        codes = sorted(r.status_code for r in rs)
        assert codes.count(200) == 2 and codes.count(429) == 2, codes
        r429 = next(r for r in rs if r.status_code == 429)
        assert r429.headers["Retry-After"] == "2"
        assert "queue is full" in r429.json()["error"]

    run(spec, body)


def test_stage_timeout_answers_504(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="to", work="sleep", mean_ms=1500.0,
                          stage_overrides={1: {"timeout_s": 0.3}})  # fmt: skip

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        r = await c.post("/function/to", json={"inputs": [[1]]})
        assert r.status_code == 504 and "to-s1" in r.json()["error"]

    run(spec, body)


def test_worker_killed_mid_request_is_retried_and_replaced(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="kill", work="sleep", mean_ms=600.0,
                          stage_overrides={1: {"min_replicas": 2, "max_concurrency": 1}})  # fmt: skip

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        pool = rt.gateway.pools["kill-s1"]
        req = asyncio.create_task(c.post("/function/kill", json={"inputs": [[1]]}))
        await until(lambda: pool.inflight == 1)
        busy = next(e for e in pool.endpoints.values() if e.inflight == 1)
        victim = next(
            r for r in rt.backend.list_replicas("kill-s1") if r.replica_id == busy.replica_id
        )
        assert victim.pid is not None
        os.kill(victim.pid, signal.SIGKILL)
        r = await req
        assert r.status_code == 200, r.text  # retried once on the other replica
        # The dead replica is replaced: two ready again, the victim gone.
        await until(lambda: pool.ready_replicas == 2 and busy.replica_id not in pool.endpoints)
        states = [x.state for x in rt.backend.list_replicas("kill-s1")]
        assert states.count(ReplicaState.READY) == 2

    run(spec, body)


@pytest.mark.parametrize("cache", [True, False], ids=["template", "cold"])
def test_worker_that_never_becomes_ready_fails_clearly(
    cache: bool, tmp_path: Any, kill_leftovers: list[str]
) -> None:
    # Fault injection without a test hook in the product: the worker's interpreter hangs
    # at start-up (as on a stuck import or a hung mount), via a sitecustomize module.
    (tmp_path / "sitecustomize.py").write_text("import time\ntime.sleep(3600)\n")
    spec = synthetic_spec(1, name="hang", gateway={"replica_start_timeout_s": 3},
                          cache={"enabled": cache})  # fmt: skip

    async def main() -> None:
        rt = EmbeddedRuntime(spec)
        kill_leftovers.append(str(rt.files.dir))
        rt.files.worker_env["PYTHONPATH"] = str(tmp_path)
        t0 = time.monotonic()
        with pytest.raises(BackendError) as err:
            await rt.start()
        assert time.monotonic() - t0 < 20
        assert "hang-s0" in str(err.value) and "within 3 s" in str(err.value)
        assert worker_pids(str(rt.files.dir)) == []

    asyncio.run(main())


def test_basic_auth_on_system_endpoints(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(1, name="au", gateway={"auth": {"enabled": True}})

    async def body(rt: EmbeddedRuntime, c: httpx.AsyncClient) -> None:
        kill_leftovers.append(str(rt.files.dir))
        assert (await c.get("/system/functions")).status_code == 401
        r = await c.get("/system/functions", auth=("admin", "wrong"))
        assert r.status_code == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        assert (await c.get("/system/functions", auth=("admin", "s3cret"))).status_code == 200
        r = await c.post("/system/scale-function/au-s0", json={"replicas": 2})
        assert r.status_code == 401
        # Invocations stay open, as in OpenFaaS.
        assert (await c.post("/function/au", json={"inputs": [[1]]})).status_code == 200

    run(spec, body, environ={"QUARTFAAS_GATEWAY_PASSWORD": "s3cret"})


def test_auth_enabled_without_password_fails_at_start() -> None:
    spec = synthetic_spec(1, name="nopw", gateway={"auth": {"enabled": True}})
    from quartfaas.errors import SpecError

    with pytest.raises(SpecError, match="QUARTFAAS_GATEWAY_PASSWORD"):
        EmbeddedRuntime(spec, environ={})


def test_stop_leaves_no_worker_processes() -> None:
    spec = synthetic_spec(3, name="clean", stage_overrides={1: {"min_replicas": 2}})
    marker: list[str] = []

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt:
            marker.append(str(rt.files.dir))
            # 4 replicas, plus stage templates and their pre-forked children
            assert len(worker_pids(marker[0])) >= 4

    asyncio.run(main())
    assert worker_pids(marker[0]) == []

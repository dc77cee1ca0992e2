"""The controller's remote backend against a real gateway's OpenFaaS API."""

from __future__ import annotations

import asyncio
import time

import pytest

from helpers import synthetic_spec
from quartfaas.backends.gateway import GatewayBackend
from quartfaas.control.backend import ReplicaState, reconcile
from quartfaas.errors import BackendError
from quartfaas.runtime import EmbeddedRuntime

pytestmark = pytest.mark.timeout(120)


def test_counts_are_read_and_set_through_the_scale_api(kill_leftovers: list[str]) -> None:
    spec = synthetic_spec(2, name="remote")

    async def main() -> None:
        async with EmbeddedRuntime(spec) as rt:
            kill_leftovers.append(str(rt.files.dir))
            backend = GatewayBackend(rt.url)
            try:
                # The sync client blocks; run it off the gateway's own event loop.
                reps = await asyncio.to_thread(backend.list_replicas, "remote-s1")
                assert [r.state for r in reps] == [ReplicaState.READY]
                plan = await asyncio.to_thread(reconcile, backend, "remote-s1", 3)
                assert plan.start == 2
                deadline = time.monotonic() + 30
                while rt.gateway.pools["remote-s1"].ready_replicas < 3:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                reps = await asyncio.to_thread(backend.list_replicas, "remote-s1")
                assert len(reps) == 3 and all(r.state is ReplicaState.READY for r in reps)
                same = await asyncio.to_thread(reconcile, backend, "remote-s1", 3)
                assert same.start == 0 and not same.stop  # nothing to do: no API call
                with pytest.raises(BackendError, match="above the maximum"):
                    await asyncio.to_thread(backend.scale_to, "remote-s1", 99)
                with pytest.raises(BackendError, match="CPU"):
                    backend.set_cpu("remote-s1#0", 2.0)
            finally:
                backend.close()

    asyncio.run(main())


def test_an_unreachable_gateway_is_a_backend_error() -> None:
    backend = GatewayBackend("http://127.0.0.1:9", timeout_s=0.5)
    with pytest.raises(BackendError, match="unreachable"):
        backend.list_replicas("x")

"""Outlier ejection decisions and the dispatcher's prospects: no sleeping, no processes
(the pools' endpoints are never called)."""

from __future__ import annotations

import asyncio

import pytest

from quartfaas.dataplane.dispatch import StagePool
from quartfaas.dataplane.outlier import Health, OutlierPolicy, observe, silence_counts
from quartfaas.errors import NoReplicas, StageTimeout

POLICY = OutlierPolicy(max_consecutive_failures=3, probe_interval_s=0.5, probe_timeout_s=2.0)


def test_consecutive_failures_eject_and_one_success_returns() -> None:
    h = Health()
    h = observe(h, False, 1.0, POLICY, "answered 500")
    h = observe(h, False, 2.0, POLICY, "timeout")
    assert not h.ejected and h.consecutive_failures == 2
    h = observe(h, False, 3.0, POLICY, "timeout")
    assert h.ejected and h.ejected_at == 3.0
    h = observe(h, False, 4.0, POLICY, "timeout")
    assert h.ejected_at == 3.0  # stays ejected since its first ejection
    assert observe(h, True, 5.0, POLICY) == h  # answers a probe, but within base_ejection_s
    assert observe(h, True, 3.0 + POLICY.base_ejection_s, POLICY) == Health()


def test_a_success_between_failures_resets_the_count() -> None:
    h = observe(observe(Health(), False, 1.0, POLICY), False, 2.0, POLICY)
    h = observe(h, True, 3.0, POLICY)
    h = observe(observe(h, False, 4.0, POLICY), False, 5.0, POLICY)
    assert not h.ejected


def test_a_silent_probe_ejects_at_once_and_an_answered_one_returns_it() -> None:
    h = observe(Health(), False, 1.0, POLICY, "probe: no answer within 2.0 s")
    assert h.ejected and h.reason.startswith("probe")
    assert observe(h, True, 1.5, POLICY) == Health()


def pool(**kw: object) -> StagePool:
    return StagePool("s", 1, 100, 1.0, outlier=POLICY, **kw)  # type: ignore[arg-type]


def test_a_failed_replica_keeps_its_waiters_until_the_replacement_serves_them() -> None:
    async def main() -> None:
        p = pool()
        p.add("r1", "http://127.0.0.1:1/invoke")
        loop = asyncio.get_running_loop()
        ep = await p.acquire(loop.time() + 60)
        waiters = [asyncio.ensure_future(p.acquire(loop.time() + 60)) for _ in range(5)]
        await asyncio.sleep(0)
        p.release(ep)
        p.mark_failed(ep, "connection reset")  # the crash, seen by a request
        await asyncio.sleep(0)
        assert p.queue_len == 4 and not any(w.done() for w in waiters[1:])
        p.starting = 1  # the backend starts the replacement, then reports r1 gone
        p.remove("r1")
        assert not any(w.done() for w in waiters[1:])
        p.starting = 0
        p.add("r2", "http://127.0.0.1:2/invoke")
        got = await waiters[1]
        assert got.replica_id == "r2"

    asyncio.run(main())


def test_no_replica_and_none_coming_fails_waiters_at_once() -> None:
    async def main() -> None:
        p = pool()
        p.add("r1", "http://127.0.0.1:1/invoke")
        loop = asyncio.get_running_loop()
        ep = await p.acquire(loop.time() + 60)
        waiter = asyncio.ensure_future(p.acquire(loop.time() + 60))
        await asyncio.sleep(0)
        p.remove("r1")  # stopped, no replacement, no scale from zero
        with pytest.raises(NoReplicas):
            await waiter
        p.release(ep)

    asyncio.run(main())


def test_ejection_takes_a_replica_out_of_rotation_and_cancels_its_calls() -> None:
    async def main() -> None:
        p = pool()
        p.add("r1", "http://127.0.0.1:1/invoke")
        p.add("r2", "http://127.0.0.1:2/invoke")
        ep = p.endpoints["r1"]
        call = asyncio.ensure_future(asyncio.sleep(3600))
        ep.calls.add(call)
        p.record(ep, False, 1.0, "probe: no answer within 2.0 s")
        assert p.ready_replicas == 1 and p.ejected_replicas == 1
        await asyncio.sleep(0)
        assert call.cancelled() and call in ep.ejected_calls
        loop = asyncio.get_running_loop()
        got = [await p.acquire(loop.time() + 1) for _ in range(1)]
        assert [e.replica_id for e in got] == ["r2"]
        p.record(ep, True, 2.0)
        assert p.ready_replicas == 2 and p.ejected_replicas == 0

    asyncio.run(main())


def test_a_request_waits_for_a_starting_first_replica_past_its_own_deadline() -> None:
    async def main() -> None:
        p = pool(start_wait_s=30.0)
        p.starting = 1
        loop = asyncio.get_running_loop()
        waiter = asyncio.ensure_future(p.acquire(loop.time() - 1.0))  # deadline passed
        await asyncio.sleep(0)
        assert not waiter.done()
        p.starting = 0
        p.add("r1", "http://127.0.0.1:1/invoke")
        assert (await waiter).replica_id == "r1"
        # With a replica in rotation (busy), the request's own deadline applies.
        with pytest.raises(StageTimeout):
            await p.acquire(loop.time() - 1.0)

    asyncio.run(main())


def test_when_every_replica_is_ejected_a_stand_in_is_asked_for() -> None:
    asked: list[str] = []
    p = pool(on_all_ejected=asked.append)
    p.add("r1", "http://127.0.0.1:1/invoke")
    p.add("r2", "http://127.0.0.1:2/invoke")
    p.record(p.endpoints["r1"], False, 1.0, "probe: silent")
    assert asked == []
    p.record(p.endpoints["r2"], False, 2.0, "probe: silent")
    assert asked == ["s"] and p.waiting_for_start()


def test_requests_queued_behind_a_crashed_only_replica_get_time_for_its_replacement() -> None:
    async def main() -> None:
        p = pool(start_wait_s=30.0)
        p.add("r1", "http://127.0.0.1:1/invoke")
        loop = asyncio.get_running_loop()
        ep = await p.acquire(loop.time() + 60)
        waiter = asyncio.ensure_future(p.acquire(loop.time()))  # due at the next tick
        await asyncio.sleep(0)
        p.mark_failed(ep, "connection reset")  # before its timer fires
        for _ in range(3):
            await asyncio.sleep(0)
        assert not waiter.done()
        p.add("r2", "http://127.0.0.1:2/invoke")
        assert (await waiter).replica_id == "r2"

    asyncio.run(main())


def test_probe_tells_a_hung_replica_from_a_gone_one() -> None:
    import socket

    from quartfaas.dataplane.outlier import probe

    async def main() -> None:
        silent = socket.create_server(("127.0.0.1", 0))  # accepts in the kernel, never answers
        gone = socket.create_server(("127.0.0.1", 0))
        gone_port = gone.getsockname()[1]
        gone.close()
        try:
            assert await probe(f"http://127.0.0.1:{silent.getsockname()[1]}", 0.2) is False
            assert await probe(f"http://127.0.0.1:{gone_port}", 0.2) is None
        finally:
            silent.close()

    asyncio.run(main())


def test_the_spec_sets_the_ejection_thresholds() -> None:
    """``gateway.outlier`` reaches every stage pool and the probes; bad values are
    refused naming the field."""
    from helpers import synthetic_spec
    from quartfaas.dataplane.gateway.replicas import StageReplicas
    from quartfaas.errors import SpecError
    from quartfaas.metrics.gateway_metrics import GatewayMetrics
    from quartfaas.spec import OutlierSpec

    assert OutlierPolicy.from_spec(OutlierSpec()) == OutlierPolicy()  # one set of defaults
    spec = synthetic_spec(2, gateway={"outlier": {"max_consecutive_failures": 5,
                                                  "probe_timeout_s": 7.5,
                                                  "probe_interval_s": 1.0,
                                                  "base_ejection_s": 0.0}})  # fmt: skip
    metrics = GatewayMetrics(spec.name, [s.name for s in spec.stages], window_s=5.0, now=0.0,
                             read_gauges=dict)  # fmt: skip
    replicas = StageReplicas(spec, metrics)
    want = OutlierPolicy(max_consecutive_failures=5, probe_interval_s=1.0,
                         probe_timeout_s=7.5, base_ejection_s=0.0)  # fmt: skip
    assert replicas.outlier == want
    assert all(p.outlier == want for p in replicas.pools.values())
    # five failures in a row now, not three
    p = replicas.pools[spec.stages[0].name]

    async def main() -> None:
        p.add("r1", "http://127.0.0.1:1/invoke")
        ep = p.endpoints["r1"]
        for i in range(4):
            p.record(ep, False, float(i), "answered 500")
        assert not ep.health.ejected
        p.record(ep, False, 4.0, "answered 500")
        assert ep.health.ejected and p.ready_replicas == 0
        p.record(ep, True, 4.0)  # base_ejection_s 0: back on its first answer
        assert p.ready_replicas == 1

    asyncio.run(main())

    for field, bad in [("max_consecutive_failures", 0), ("probe_timeout_s", 0.0),
                       ("probe_interval_s", -1.0), ("base_ejection_s", -0.5),
                       ("probe_timeout_s", "2")]:  # fmt: skip
        with pytest.raises(SpecError, match=f"gateway.outlier.{field}"):
            synthetic_spec(1, gateway={"outlier": {field: bad}})
    with pytest.raises(SpecError, match="outlier"):
        synthetic_spec(1, gateway={"outlier": {"consecutive_5xx": 3}})  # extra=forbid


def test_silences_count_only_while_the_gateway_listened() -> None:
    assert silence_counts(0.0, POLICY) and silence_counts(0.99, POLICY)
    assert not silence_counts(1.0, POLICY)  # half of probe_timeout_s 2.0 deaf: void


def _silent_stage(timeout_s: float):  # type: ignore[no-untyped-def]
    """A stage whose one replica accepts connections in the kernel and never answers."""
    import socket

    from helpers import synthetic_spec
    from quartfaas.dataplane.gateway.replicas import StageReplicas
    from quartfaas.metrics.gateway_metrics import GatewayMetrics

    spec = synthetic_spec(1, gateway={"outlier": {"probe_timeout_s": timeout_s}})
    metrics = GatewayMetrics(spec.name, [spec.stages[0].name], window_s=5.0, now=0.0,
                             read_gauges=dict)  # fmt: skip
    silent = socket.create_server(("127.0.0.1", 0))
    replicas = StageReplicas(spec, metrics)
    pool = replicas.pools[spec.stages[0].name]
    return silent, replicas, pool


def test_a_probe_round_ejects_a_silent_replica_unless_the_gateway_was_deaf() -> None:
    """The round that ejected every replica of every stage under busy loops (issue #13):
    the gateway's own loop stalled past the deadline, so no probe answer was read. A
    stall of the loop (``time.sleep`` on it) voids the round; the same silence heard by
    a listening loop ejects."""
    import time

    from quartfaas.dataplane.outlier import LoopWatch

    timeout_s = 1.0

    async def main() -> None:
        silent, replicas, pool = _silent_stage(timeout_s)
        try:
            pool.add("r1", f"http://127.0.0.1:{silent.getsockname()[1]}/invoke")
            ep = pool.endpoints["r1"]
            loop = asyncio.get_running_loop()
            # the gateway deaf from a quarter of the deadline until past its end
            loop.call_later(timeout_s / 4, time.sleep, timeout_s)
            deaf_s = await replicas.probe_round()
            assert deaf_s >= timeout_s / 2  # (at least the stall we caused)
            assert not ep.health.ejected and pool.ready_replicas == 1
            # Listening now: the silence is the replica's. (A loaded host can starve this
            # loop too; the rule is then the same, so the outcome follows the measurement.)
            deaf_s = await replicas.probe_round()
            heard = deaf_s < timeout_s / 2
            assert ep.health.ejected is heard and pool.ready_replicas == (0 if heard else 1)
            if heard:
                assert ep.health.reason == f"probe: no answer within {timeout_s:.1f} s"
        finally:
            silent.close()
        async with LoopWatch(0.01) as watch:
            await asyncio.sleep(0.05)
            time.sleep(0.1)
            await asyncio.sleep(0.02)
        assert watch.deaf_s >= 0.09 - 0.01  # the blocked 0.1 s, less the tick it overlapped

    asyncio.run(main())


def test_a_cancel_arriving_as_the_watch_ends_is_not_swallowed() -> None:
    """The gateway's stop cancels the probe loop; a cancel that arrived while LoopWatch
    was stopping its ticker was swallowed, and the loop probed on forever (the stop hung
    under busy loops, in test_stop_answers_every_accepted_request_then_stops_workers)."""
    from quartfaas.dataplane.outlier import LoopWatch

    async def watched() -> None:
        async with LoopWatch(10.0):
            pass

    async def main() -> None:
        t = asyncio.create_task(watched())
        await asyncio.sleep(0)  # t ran to the await in LoopWatch.__aexit__
        assert not t.done()
        t.cancel()
        await asyncio.wait([t])
        assert t.cancelled()

    asyncio.run(main())

"""Admission decisions (pure): queue caps by deadline, byte budgets."""

from __future__ import annotations

import pytest

from quartfaas.dataplane.gateway.admission import (
    DEADLINE_SHARE,
    ByteBudget,
    StageLoad,
    admit_queue,
    queue_cap,
)
from quartfaas.errors import QueueFull


def test_queue_cap_is_what_the_timeout_allows() -> None:
    # 2 slots, 50 ms a request: 40 req/s; a 5 s timeout serves 0.8 * 200 = 160, minus
    # the 2 requests on the slots.
    load = StageLoad(queue_len=0, slots=2, hold_s=0.05)
    assert queue_cap(load, 5.0, 1024) == int(40 * 5.0 * DEADLINE_SHARE) - 2
    assert queue_cap(load, 5.0, 100) == 100  # never above max_queue_len
    assert queue_cap(StageLoad(0, 1, 10.0), 5.0, 1024) == 0  # nothing queued can make it


@pytest.mark.parametrize("load", [StageLoad(5, 0, 0.05), StageLoad(5, 2, None)])
def test_without_a_measurement_or_a_replica_the_cap_is_max_queue_len(load: StageLoad) -> None:
    assert queue_cap(load, 5.0, 1024) == 1024


def test_more_slots_or_a_longer_timeout_never_lower_the_cap() -> None:
    caps = [queue_cap(StageLoad(0, n, 0.1), t, 10**6) for n in (1, 2, 4) for t in (1, 2, 4)]
    by_slots = [queue_cap(StageLoad(0, n, 0.1), 2.0, 10**6) for n in (1, 2, 4, 8)]
    by_timeout = [queue_cap(StageLoad(0, 2, 0.1), t, 10**6) for t in (0.5, 1, 2, 4)]
    assert by_slots == sorted(by_slots) and by_timeout == sorted(by_timeout)
    assert min(caps) >= 0


def test_a_full_queue_is_refused_with_its_drain_time() -> None:
    load = StageLoad(queue_len=20, slots=2, hold_s=0.1)
    assert admit_queue("s", StageLoad(5, 2, 0.1), 2.0, 1024, 1.0) is None
    refused = admit_queue("s", load, 1.0, 1024, 0.5)  # 1 s serves 0.8 * 20 - 2 = 14 waiting
    assert refused is not None
    assert refused.retry_after_s == pytest.approx(20 * 0.1 / 2)  # the queue drains in 1 s
    assert "stage s" in refused.reason and "timeout of 1 s" in refused.reason
    # never sooner than the spec's retry_after_s
    assert admit_queue("s", load, 1.0, 1024, 3.0).retry_after_s == 3.0  # type: ignore[union-attr]


def test_byte_budget_holds_and_frees() -> None:
    b = ByteBudget("gateway", 1000)
    with b.hold(600, 1.0):
        assert b.used == 600
        with (
            pytest.raises(QueueFull, match="600 bytes in flight \\+ 500 would exceed 1000"),
            b.hold(500, 1.0),
        ):
            pass
        with b.hold(400, 1.0):
            assert b.used == 1000
    assert b.used == 0
    with b.hold(5000, 1.0):  # alone, a body bigger than the budget is still served
        assert b.used == 5000
    assert b.used == 0

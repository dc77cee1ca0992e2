"""The shared start-up delay table: tier terms, CUDA context, pageable vs pinned copies."""

from __future__ import annotations

import pytest

from quartfaas.control.placement.startup_delays import (
    DEFAULT_TABLE,
    GIB,
    DelayTable,
    Tier,
    breakdown,
    delay,
    pcie_pinned_bytes_per_s,
)

T = DelayTable(prefork_s=0.01, fork_s=0.1, process_start_s=2.0, disk_bytes_per_s=1 * GIB,
               remote_bytes_per_s=0.5 * GIB, cuda_context_s=1.5, pinned_bytes_per_s=20 * GIB,
               host_memcpy_bytes_per_s=20 * GIB, pin_s_per_gib=0.05, readiness_s=0.2)  # fmt: skip


def test_tiers_order_and_terms() -> None:
    size = 4 * GIB
    cpu = {t: delay(t, size, False, T) for t in Tier if t is not Tier.NONE}
    assert cpu[Tier.PREFORK] < cpu[Tier.FORK] < cpu[Tier.HOST] < cpu[Tier.DISK] < cpu[Tier.REMOTE]
    assert cpu[Tier.DISK] == pytest.approx(2.0 + 4.0 + 0.2)
    assert delay("none", 0, True, T) == pytest.approx(2.2)


def test_a_forked_gpu_replica_pays_a_cuda_context_and_a_pageable_copy() -> None:
    b = breakdown(Tier.FORK, 4 * GIB, True, T)
    assert b.cuda_context_s == 1.5
    assert b.h2d_s == pytest.approx(4 / 10)  # 1/(1/20 + 1/20) = 10 GiB/s pageable
    pinned = breakdown(Tier.FORK, 4 * GIB, True, T, pinned=True)
    assert pinned.h2d_s == pytest.approx(4 / 20) and pinned.pin_s == pytest.approx(0.2)
    assert breakdown(Tier.PREFORK, 4 * GIB, True, T).cuda_context_s == 0.0  # made in advance
    assert breakdown(Tier.FORK, 4 * GIB, False, T).h2d_s == 0.0


def test_pageable_is_slower_than_pinned_and_pcie_rates() -> None:
    assert DEFAULT_TABLE.pageable_bytes_per_s < DEFAULT_TABLE.pinned_bytes_per_s
    assert pcie_pinned_bytes_per_s(3) == pytest.approx(11.0e9, rel=0.01)
    assert pcie_pinned_bytes_per_s(4) == pytest.approx(2 * pcie_pinned_bytes_per_s(3))


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="fork_s"):
        DelayTable(fork_s=-1.0)
    with pytest.raises(ValueError, match="size_bytes"):
        delay(Tier.FORK, float("nan"), True)
    with pytest.raises(ValueError):
        delay("teleport", 1.0, True)
    with pytest.raises(ValueError, match="PCIe"):
        pcie_pinned_bytes_per_s(2)

"""The pre-fork depth decision (control/placement/prefork.py): rules, bounds, shrink delay."""

from __future__ import annotations

from quartfaas.control.placement.prefork import (
    PoolConfig,
    PoolInput,
    PoolState,
    decide_pool,
    decide_stage,
    forecast_from_snapshot,
)
from quartfaas.control.policy import Decision, StageDecision
from quartfaas.control.snapshot import make_snapshot, make_stage

MIB = 1024**2
CFG = PoolConfig(floor=1, shrink_delay_s=10.0)


def inp(**kw: object) -> PoolInput:
    base: dict[str, object] = {"stage": "s", "target": 1, "current": 1, "max_replicas": 16}
    base.update(kw)
    return PoolInput(**base)  # type: ignore[arg-type]


def test_forecast_beyond_target_sets_depth() -> None:
    d, _ = decide_stage(inp(target=3, current=1, forecast=8), None, 0.0, CFG)
    assert d.depth == 5
    assert "forecast 8 - target 3" in d.reason


def test_no_forecast_uses_the_step() -> None:
    d, _ = decide_stage(inp(target=4, current=1), None, 0.0, CFG)
    assert d.depth == 3 and "no forecast" in d.reason


def test_floor_when_nothing_is_expected() -> None:
    d, _ = decide_stage(inp(target=2, current=2, forecast=2), None, 0.0, CFG)
    assert d.depth == 1 and "floor 1" in d.reason


def test_stage_bound() -> None:
    d, _ = decide_stage(inp(target=3, max_replicas=4, forecast=12), None, 0.0, CFG)
    assert d.depth == 1 and "stage bound" in d.reason
    d, _ = decide_stage(inp(target=4, max_replicas=4, forecast=4), None, 0.0, CFG)
    assert d.depth == 0  # the stage is at its maximum: no child is of any use


def test_memory_bound_beats_the_floor() -> None:
    free = 100 * MIB
    d, _ = decide_stage(
        inp(target=1, forecast=10, child_private_bytes=30 * MIB, cache_free_bytes=free),
        None, 0.0, CFG,
    )  # fmt: skip
    assert d.depth == 3 and "memory bound" in d.reason
    d, _ = decide_stage(
        inp(target=1, forecast=1, child_private_bytes=30 * MIB, cache_free_bytes=10 * MIB),
        None, 0.0, CFG,
    )  # fmt: skip
    assert d.depth == 0


def test_shrinks_after_the_delay_only() -> None:
    _, st = decide_stage(inp(target=2, forecast=8), None, 0.0, CFG)
    assert st.depth == 6
    d, st = decide_stage(inp(target=2, forecast=3), st, 1.0, CFG)
    assert d.depth == 6 and "keeps 6" in d.reason
    d, st = decide_stage(inp(target=2, forecast=3), st, 5.0, CFG)
    assert d.depth == 6
    d, st = decide_stage(inp(target=2, forecast=3), st, 11.0, CFG)
    assert d.depth == 1 and "shrinks 6->1" in d.reason


def test_a_rise_resets_the_shrink_clock() -> None:
    _, st = decide_stage(inp(target=2, forecast=8), None, 0.0, CFG)
    _, st = decide_stage(inp(target=2, forecast=3), st, 1.0, CFG)
    _, st = decide_stage(inp(target=2, forecast=8), st, 5.0, CFG)
    d, _ = decide_stage(inp(target=2, forecast=3), st, 12.0, CFG)
    assert d.depth == 6  # lower again only since t=12


def test_memory_shrinks_at_once() -> None:
    _, st = decide_stage(inp(target=1, forecast=9), None, 0.0, CFG)
    d, _ = decide_stage(
        inp(target=1, forecast=9, child_private_bytes=50 * MIB, cache_free_bytes=100 * MIB),
        st, 0.5, CFG,
    )  # fmt: skip
    assert d.depth == 2


def test_stages_share_the_free_memory() -> None:
    a = inp(stage="a", forecast=5, child_private_bytes=10 * MIB, cache_free_bytes=60 * MIB)
    b = inp(stage="b", forecast=5, child_private_bytes=10 * MIB, cache_free_bytes=60 * MIB)
    ds, st = decide_pool([a, b], PoolState(), 0.0, CFG)
    assert [d.depth for d in ds] == [4, 2]
    assert st.get("a") is not None and st.get("zz") is None


def test_forecast_from_upstream_rate() -> None:
    stages = (
        make_stage("a", 0, arrival_rate=20.0, service_mean_s=0.01, max_replicas=8),
        make_stage("b", 1, arrival_rate=5.0, service_mean_s=0.2, max_replicas=16),
    )
    snap = make_snapshot(stages=stages)
    dec = Decision(0.0, "p", (StageDecision("a", 1, 1, ""), StageDecision("b", 2, 3, "")))
    fc = forecast_from_snapshot(snap, dec, PoolConfig(target_utilisation=0.5))
    assert fc["a"] == 1  # nothing upstream of the first stage
    assert fc["b"] == 3 + 6  # (20 - 5) * 0.2 / 0.5 = 6 more
    calm = make_snapshot(
        stages=(
            make_stage("a", 0, arrival_rate=5.0, service_mean_s=0.01),
            make_stage("b", 1, arrival_rate=5.0, service_mean_s=0.2, max_replicas=16),
        )
    )
    assert forecast_from_snapshot(calm, dec, PoolConfig())["b"] == 3


def test_forecast_skips_unmeasured_stages() -> None:
    snap = make_snapshot(stages=(make_stage("a", 0), make_stage("b", 1, arrival_rate=3.0)))
    dec = Decision(0.0, "p", (StageDecision("a", 1, 1, ""), StageDecision("b", 1, 1, "")))
    assert forecast_from_snapshot(snap, dec, PoolConfig()) == {}


def test_upstream_backlog_raises_the_forecast() -> None:
    stages = (
        make_stage("a", 0, arrival_rate=5.0, service_mean_s=0.01, queue_len=40, in_flight=1),
        make_stage("b", 1, arrival_rate=5.0, service_mean_s=0.2, max_replicas=16),
    )
    dec = Decision(0.0, "p", (StageDecision("a", 1, 1, ""), StageDecision("b", 2, 2, "")))
    fc = forecast_from_snapshot(make_snapshot(stages=stages), dec, PoolConfig(horizon_s=10.0))
    assert fc["b"] == 2 + 2  # 41 queued upstream over 10 s: 4.1/s x 0.2 s / 0.7 = 1.2 -> 2


def test_a_rising_rate_is_extrapolated() -> None:
    from quartfaas.control.placement.prefork import remember_rates

    def snap(now: float, lam: float) -> object:
        return make_snapshot(
            now=now,
            stages=(make_stage("a", 0, arrival_rate=lam, service_mean_s=0.1, max_replicas=20),),
        )

    dec = Decision(1.0, "p", (StageDecision("a", 2, 2, ""),))
    cfg = PoolConfig(trend_s=5.0, target_utilisation=0.5)
    st = remember_rates(PoolState(), snap(0.0, 10.0))  # type: ignore[arg-type]
    fc = forecast_from_snapshot(snap(1.0, 12.0), dec, cfg, st)  # type: ignore[arg-type]
    assert fc["a"] == 2 + 2  # +2/s for 5 s = 10/s x 0.1 s / 0.5 = 2 more
    st = remember_rates(st, snap(1.0, 12.0))  # type: ignore[arg-type]
    assert forecast_from_snapshot(snap(2.0, 8.0), dec, cfg, st)["a"] == 2  # type: ignore[arg-type]

"""Properties of the pre-fork depth decision: never negative, bounded, shrinks with the forecast."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.control.placement.prefork import PoolConfig, PoolInput, decide_stage, memory_bound

MIB = 1024**2


@st.composite
def inputs(draw: st.DrawFn) -> PoolInput:
    hi = draw(st.integers(0, 64))
    target = draw(st.integers(0, hi))
    mem = draw(st.booleans())
    return PoolInput(
        stage="s",
        target=target,
        current=draw(st.integers(0, 64)),
        max_replicas=hi,
        forecast=draw(st.none() | st.integers(0, 200)),
        child_private_bytes=draw(st.integers(1, 512 * MIB)) if mem else None,
        cache_free_bytes=draw(st.integers(0, 64 * 1024 * MIB)) if mem else None,
    )


configs = st.builds(
    PoolConfig,
    floor=st.integers(0, 4),
    max_depth=st.integers(4, 64),
    shrink_delay_s=st.floats(0, 60),
)


@settings(max_examples=300, deadline=None)
@given(inputs(), configs)
def test_depth_is_bounded(inp: PoolInput, cfg: PoolConfig) -> None:
    d, state = decide_stage(inp, None, 0.0, cfg)
    assert 0 <= d.depth <= max(0, inp.max_replicas - inp.target)
    assert d.depth <= cfg.max_depth
    mem = memory_bound(inp)
    if mem is not None:
        assert d.depth * (inp.child_private_bytes or 0) <= (inp.cache_free_bytes or 0)
    assert state.depth == d.depth and d.reason


@settings(max_examples=300, deadline=None)
@given(inputs(), configs, st.integers(0, 200), st.integers(0, 200))
def test_shrinks_when_the_forecast_falls(
    inp: PoolInput, cfg: PoolConfig, high: int, low: int
) -> None:
    high, low = max(high, low), min(high, low)
    up = PoolInput(**{**_fields(inp), "forecast": high})
    down = PoolInput(**{**_fields(inp), "forecast": low})
    d_hi, st_hi = decide_stage(up, None, 0.0, cfg)
    d_lo_fresh, _ = decide_stage(down, None, 0.0, cfg)
    assert d_lo_fresh.depth <= d_hi.depth  # a lower forecast never asks for more
    d_wait, st_wait = decide_stage(down, st_hi, 0.0, cfg)
    assert d_lo_fresh.depth <= d_wait.depth <= d_hi.depth
    d_after, _ = decide_stage(down, st_wait, cfg.shrink_delay_s + 0.001, cfg)
    assert d_after.depth == d_lo_fresh.depth  # after the delay it follows the forecast down


def _fields(inp: PoolInput) -> dict[str, object]:
    return {k: getattr(inp, k) for k in PoolInput.__slots__}  # type: ignore[attr-defined]

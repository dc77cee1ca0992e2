"""The service memory: service mean and SCV over many completions, not one window."""

from __future__ import annotations

import math
import random
from dataclasses import replace

import pytest

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import ReplicaCorrector
from quartfaas.control.corrector.servicememory import ServiceMemory, remember
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, StageSnapshot, make_stage


def _stage(mean: float | None, scv: float | None = 1.0, rate: float = 5.0) -> StageSnapshot:
    return make_stage(
        "s0",
        0,
        ready_replicas=2,
        arrival_rate=rate,
        departure_rate=rate,
        service_mean_s=mean,
        service_scv=scv,
    )


FULL = 300.0  # a memory that holds its whole ``samples``


def test_a_low_rate_window_moves_the_memory_by_its_fresh_completions() -> None:
    mem = ServiceMemory(0.15, 1.0, FULL, 100.0)
    s, new = remember(_stage(0.21, 2.0), mem, 101.0, 10.0, samples=300, max_age_s=120)
    alpha = 5.0 / 300  # 5 fresh completions of the 300 behind the memory (> 1 s / 120 s)
    assert new is not None
    assert new.mean_s == pytest.approx(0.15 + alpha * 0.06)
    assert new.scv == pytest.approx(1.0 + alpha * 1.0)
    assert new.count == FULL
    assert (s.service_mean_s, s.service_scv) == (new.mean_s, new.scv)
    assert s.arrival_rate == 5.0  # arrivals are never remembered: a burst shows at once


def test_the_age_limit_sets_the_least_step_at_very_low_rates() -> None:
    mem = ServiceMemory(0.15, 1.0, FULL, 100.0)
    _, new = remember(_stage(0.30, rate=0.1), mem, 102.0, 10.0, samples=300, max_age_s=120)
    assert new is not None
    assert new.mean_s == pytest.approx(0.15 + (2.0 / 120) * 0.15)


def test_a_window_with_as_many_completions_as_the_memory_is_used_as_it_is() -> None:
    mem = ServiceMemory(0.15, 1.0, FULL, 100.0)
    s, new = remember(_stage(0.3, 0.5, rate=400.0), mem, 101.0, 10.0, samples=300, max_age_s=120)
    assert (s.service_mean_s, s.service_scv) == (0.3, 0.5)
    assert new == ServiceMemory(0.3, 0.5, 4000.0, 101.0)


def test_a_memory_started_from_few_completions_does_not_outweigh_the_next_windows() -> None:
    # start-up: the first window held 2 completions, the next holds 50 (its latency count)
    _, mem = remember(
        replace(_stage(0.5), latency=LatencyStats(count=2)), None, 1.0, 10.0,
        samples=300, max_age_s=120,
    )  # fmt: skip
    assert mem == ServiceMemory(0.5, 1.0, 2.0, 1.0)
    s, mem = remember(
        replace(_stage(0.1), latency=LatencyStats(count=50)), mem, 2.0, 10.0,
        samples=300, max_age_s=120,
    )  # fmt: skip
    assert s.service_mean_s == 0.1
    assert mem == ServiceMemory(0.1, 1.0, 50.0, 2.0)


def test_an_old_or_future_memory_starts_again_from_the_window() -> None:
    for at in (100.0 - 121.0, 105.0):  # older than max_age; newer than now (a reset clock)
        s, new = remember(
            _stage(0.3), ServiceMemory(0.15, 1.0, FULL, at), 100.0, 10.0,
            samples=300, max_age_s=120,
        )  # fmt: skip
        assert s.service_mean_s == 0.3
        assert new == ServiceMemory(0.3, 1.0, 50.0, 100.0)


def test_a_stage_without_a_measured_mean_keeps_its_memory_and_its_snapshot() -> None:
    mem = ServiceMemory(0.15, 1.0, FULL, 100.0)
    for mean in (None, math.nan, 0.0):
        st = _stage(mean)
        s, new = remember(st, mem, 101.0, 10.0, samples=300, max_age_s=120)
        assert s is st
        assert new is mem


def test_off_changes_nothing_and_keeps_no_memory() -> None:
    st = _stage(0.2)
    s, new = remember(
        st, ServiceMemory(0.1, 1.0, FULL, 100.0), 101.0, 10.0, samples=0, max_age_s=120
    )
    assert s is st
    assert new is None


def test_a_deterministic_stage_stays_deterministic_while_its_mean_drifts() -> None:
    mem: ServiceMemory | None = None
    for k, mean in enumerate((0.084, 0.086, 0.083, 0.085, 0.084, 0.086)):
        s, mem = remember(_stage(mean, 0.0), mem, 100.0 + k, 5.0, samples=300, max_age_s=120)
        assert s.service_scv == 0.0
    assert mem is not None and mem.count > 25.0  # the memory was in use, not the window


def test_an_unknown_scv_stays_unknown_and_a_new_one_is_taken_as_measured() -> None:
    s, mem = remember(_stage(0.1, None), None, 100.0, 10.0, samples=300, max_age_s=120)
    assert s.service_scv is None
    assert mem == ServiceMemory(0.1, None, 50.0, 100.0)
    s, mem = remember(_stage(0.1, 0.7), mem, 101.0, 10.0, samples=300, max_age_s=120)
    assert s.service_scv == 0.7


def _snap(now: float, mean: float, rng: random.Random, ready: int) -> PipelineSnapshot:
    # 5 req/s; the window's service mean as 50 exponential samples give it (+-28%)
    p99 = 4.6 * mean
    stage = make_stage(
        "s0",
        0,
        min_replicas=1,
        max_replicas=8,
        ready_replicas=ready,
        arrival_rate=5.0,
        arrival_cv=1.0,
        departure_rate=5.0,
        service_mean_s=mean * rng.gammavariate(50.0, 1.0 / 50.0),
        service_scv=1.0,
        latency=LatencyStats(count=50, mean_s=mean, p50_s=mean, p95_s=p99 / 1.5, p99_s=p99),
    )
    return PipelineSnapshot(now, "p", 0.7, (stage,), window_s=10.0, source="test")


def _moves(samples: float, seed: int, ticks: int = 1800) -> int:
    cfg = ControllerConfig().model_copy(update={"service_memory_samples": samples})
    pol = ReplicaCorrector(cfg)
    rng = random.Random(seed)
    mean = 0.12  # the plan needs 2 replicas; the window's mean +25% asks for 3
    ready = 2
    state = pol.initial_state(_snap(0.0, mean, rng, ready))
    moves = 0
    for t in range(1, ticks):
        decision, state = pol.decide(_snap(float(t), mean, rng, ready), state)
        target = decision.stages[0].replicas
        if target != ready:
            moves += 1
            ready = target
    return moves


def test_window_noise_in_the_service_time_alone_does_not_move_the_count() -> None:
    """A stage at 5 req/s, 30 minutes at constant load, whose windows' service means
    (50 samples each) move by +-28%: with the memory (the default) the count moves at
    most about once a run; with the window's mean alone (``service_memory_samples: 0``)
    it moves every few minutes, so the test catches a memory that does nothing."""
    seeds = (1, 2, 3)
    remembered = [_moves(300.0, seed) for seed in seeds]
    window = [_moves(0.0, seed) for seed in seeds]
    assert sum(remembered) <= len(seeds), remembered
    assert min(window) >= 5, window


def test_with_service_is_replace() -> None:
    # Every field away from its default (and distinct), so a field that with_service
    # forgets or swaps shows up.
    from dataclasses import fields, replace

    from quartfaas.control.snapshot import LatencyStats, StageSnapshot

    values: dict[str, object] = {}
    for i, f in enumerate(fields(StageSnapshot)):
        if f.name in ("latency", "wait"):
            values[f.name] = LatencyStats(count=i, p99_s=float(i))
        elif f.name == "name":
            values[f.name] = "stage-x"
        elif f.type in ("int", int):
            values[f.name] = 100 + i
        else:
            values[f.name] = 0.5 + i
    s = StageSnapshot(**values)  # type: ignore[arg-type]
    assert all(getattr(s, k) == v for k, v in values.items())
    got = s.with_service(0.123, 0.456)
    assert got == replace(s, service_mean_s=0.123, service_scv=0.456)
    assert s.with_service(None, None) == replace(s, service_mean_s=None, service_scv=None)

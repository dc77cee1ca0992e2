"""The engine against independent models: SimPy, Erlang C, and its own invariants."""

from __future__ import annotations

import math

import numpy as np
import pytest
import simpy
from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.errors import SimulationError
from quartfaas.sim import kernel
from quartfaas.sim.engine import Engine


def poisson(rate: float, n: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).exponential(1.0 / rate, n))


def run_static(
    arrivals: np.ndarray,
    work: np.ndarray,
    slots: list[int],
    tick: float,
    bounds: list[int] | None = None,
) -> Engine:
    e = Engine(arrivals, work, bounds or [10**9] * work.shape[0])
    for k, c in enumerate(slots):
        e.add_replica(k, c, 0.0, 1.0)
    t = 0.0
    i = 0
    while not e.idle:
        i += 1
        t = i * tick
        e.advance(t)
    return e


def simpy_pipeline(
    arrivals: np.ndarray, work: np.ndarray, slots: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """The same pipeline as a plain SimPy model: one FIFO Resource per stage."""
    env = simpy.Environment()
    res = [simpy.Resource(env, capacity=c) for c in slots]
    k, n = work.shape
    start = np.full((k, n), np.nan)
    finish = np.full((k, n), np.nan)

    def request(i: int):  # type: ignore[no-untyped-def]
        for s in range(k):
            with res[s].request() as req:
                yield req
                start[s, i] = env.now
                yield env.timeout(work[s, i])
                finish[s, i] = env.now

    def source():  # type: ignore[no-untyped-def]
        for i in range(n):
            yield env.timeout(arrivals[i] - env.now)
            env.process(request(i))

    env.process(source())
    env.run()
    return start, finish


@pytest.mark.parametrize("constant", [True, False])
def test_matches_simpy_two_stages_per_request(constant: bool) -> None:
    n = 3000
    arr = poisson(12.0, n, seed=3)
    rng = np.random.default_rng(4)
    if constant:
        work = np.vstack([np.full(n, 0.15), np.full(n, 0.07)])
    else:
        work = np.vstack([rng.exponential(0.15, n), rng.exponential(0.07, n)])
    start, finish = simpy_pipeline(arr, work, [2, 1])
    # An awkward tick length, so visits straddle many interval boundaries.
    e = run_static(arr, work, [2, 1], tick=0.37)
    np.testing.assert_array_equal(e.start, start)
    np.testing.assert_array_equal(e.finish, finish)
    assert np.count_nonzero(e.start[1] > e.finish[0]) > 100  # stage 2 did queue


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    tick_a=st.floats(0.05, 3.0),
    tick_b=st.floats(0.05, 3.0),
    bound=st.integers(1, 6),
)
def test_tick_length_does_not_change_static_runs(
    seed: int, tick_a: float, tick_b: float, bound: int
) -> None:
    n = 300
    arr = poisson(8.0, n, seed)
    work = np.random.default_rng(seed + 1).exponential(0.2, (3, n))
    a = run_static(arr, work, [2, 1, 3], tick_a, [bound] * 3)
    b = run_static(arr, work, [2, 1, 3], tick_b, [bound] * 3)
    np.testing.assert_array_equal(a.start, b.start)
    np.testing.assert_array_equal(a.finish, b.finish)
    np.testing.assert_array_equal(a.rejected_at, b.rejected_at)


def erlang_c_wait(lam: float, mu: float, c: int) -> float:
    """Mean wait in queue of M/M/c (Erlang C), computed independently of the package."""
    a = lam / mu
    rho = a / c
    top = a**c / math.factorial(c) / (1 - rho)
    p_wait = top / (sum(a**i / math.factorial(i) for i in range(c)) + top)
    return p_wait / (c * mu - lam)


@pytest.mark.parametrize(("c", "rho"), [(1, 0.6), (4, 0.8)])
def test_single_stage_mmc_matches_erlang_c(c: int, rho: float) -> None:
    mu = 10.0
    lam = rho * c * mu
    n = 200_000
    arr = poisson(lam, n, seed=11)
    work = np.random.default_rng(12).exponential(1.0 / mu, (1, n))
    e = run_static(arr, work, [c], tick=1.0)
    wait = (e.start[0] - arr)[n // 20 :]  # drop the warm-up
    expect = erlang_c_wait(lam, mu, c)
    assert wait.mean() == pytest.approx(expect, rel=0.08)


def test_queue_bound_rejects_and_conserves() -> None:
    n = 5000
    arr = poisson(40.0, n, seed=5)
    work = np.full((2, n), 0.05)  # capacity 20/s per stage with one slot: overloaded
    e = run_static(arr, work, [1, 1], tick=0.5, bounds=[10, 3])
    rejected = np.count_nonzero(e.rejected_at >= 0)
    assert rejected > 0
    assert e.completed + rejected == n
    done = e.seq[2, : e.cnt[2]]
    assert not np.any(np.isnan(e.finish[1, done]))
    # A request rejected at stage 0 never started anywhere.
    r0 = np.flatnonzero(e.rejected_at == 0)
    assert np.all(np.isnan(e.start[:, r0]))


def test_added_replica_serves_only_after_its_ready_time() -> None:
    n = 400
    arr = poisson(20.0, n, seed=7)
    work = np.full((1, n), 0.1)  # 10/s capacity with one slot: a queue builds
    e = Engine(arr, work, [10**9], record_servers=True)
    first = e.add_replica(0, 1, 0.0, 1.0)
    for t in range(1, 6):
        e.advance(float(t))
    late = e.add_replica(0, 1, ready_at=5.0 + 2.5, multiplier=1.0)
    t = 5
    while not e.idle:
        t += 1
        e.advance(float(t))
    by_late = e.served_by[0] == late
    assert by_late.any()
    assert e.start[0, by_late].min() == pytest.approx(7.5)
    assert np.count_nonzero(e.served_by[0] == first) + by_late.sum() == n


def test_drained_replica_finishes_in_flight_work_and_takes_no_more() -> None:
    n = 60
    arr = np.linspace(0.0, 5.9, n)
    work = np.vstack([np.full(n, 3.0), np.full(n, 0.01)])
    e = Engine(arr, work, [10**9, 10**9], record_servers=True)
    a = e.add_replica(0, 1, 0.0, 1.0)
    b = e.add_replica(0, 1, 0.0, 1.0)
    e.add_replica(1, 1, 0.0, 1.0)
    e.advance(1.0)
    assert e.in_flight(0) == 2
    leaves = e.drain_replica(b)
    assert leaves == pytest.approx(3.1)  # its visit started at 0.1 and runs 3 s
    t = 1
    while not e.idle:
        t += 1
        e.advance(float(t))
    on_b = np.flatnonzero(e.served_by[0] == b)
    assert on_b.size == 1  # the one in flight at the drain, and nothing after
    assert e.finish[0, on_b[0]] == pytest.approx(3.0 + arr[on_b[0]])
    assert not np.isnan(e.finish[1, on_b[0]])  # it went on to stage 2 and completed
    assert np.all(e.start[0, e.served_by[0] == a] >= 0)
    assert e.completed == n


def test_draining_a_starting_replica_leaves_at_once() -> None:
    e = Engine(np.array([0.5]), np.full((1, 1), 0.1), [10])
    h = e.add_replica(0, 2, ready_at=5.0, multiplier=1.0)
    assert e.drain_replica(h) == 0.0
    e.advance(10.0)
    assert e.queue_len(0) == 1  # no server left: the request waits


def test_slot_table_grows_when_replicas_exceed_capacity() -> None:
    n = 2000
    arr = poisson(100.0, n, seed=9)
    work = np.full((1, n), 0.05)
    e = Engine(arr, work, [10**9], slot_capacity=1)
    for _ in range(4):
        e.add_replica(0, 2, 0.0, 1.0)
    t = 0
    while not e.idle:
        t += 1
        e.advance(float(t))
    assert e.completed == n
    assert e.slot_free.shape[1] >= 8


def test_bad_inputs_are_refused() -> None:
    with pytest.raises(SimulationError, match="sorted"):
        Engine(np.array([1.0, 0.5]), np.ones((1, 2)), [1])
    with pytest.raises(SimulationError, match="shape"):
        Engine(np.array([1.0, 2.0]), np.ones((1, 3)), [1])
    e = Engine(np.array([1.0]), np.ones((1, 1)), [1])
    e.advance(2.0)
    with pytest.raises(SimulationError, match="backwards"):
        e.advance(1.0)


@pytest.mark.skipif(
    not hasattr(kernel.advance, "py_func"), reason="numba not installed (or JIT disabled)"
)
def test_compiled_and_python_kernels_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    n = 1500
    arr = poisson(30.0, n, seed=21)
    work = np.random.default_rng(22).gamma(2.0, 0.03, (3, n))
    fast = run_static(arr, work, [2, 1, 2], tick=0.8, bounds=[20, 5, 20])
    monkeypatch.setattr(kernel, "advance", kernel.advance.py_func)
    slow = run_static(arr, work, [2, 1, 2], tick=0.8, bounds=[20, 5, 20])
    np.testing.assert_array_equal(fast.start, slow.start)
    np.testing.assert_array_equal(fast.finish, slow.finish)
    np.testing.assert_array_equal(fast.rejected_at, slow.rejected_at)
    np.testing.assert_array_equal(fast.seq, slow.seq)

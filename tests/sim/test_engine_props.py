"""Engine invariants under random replica adds and drains (Hypothesis)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from quartfaas.sim.engine import Engine

N_STAGES = 3


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, object]:
    seed = draw(st.integers(0, 2**31 - 1))
    n = draw(st.integers(1, 250))
    rate = draw(st.floats(2.0, 40.0))
    bounds = draw(st.lists(st.integers(1, 30), min_size=N_STAGES, max_size=N_STAGES))
    # Per tick: None, or (stage, add?, slots, delay, multiplier, which replica to drain).
    actions = draw(
        st.lists(
            st.one_of(
                st.none(),
                st.tuples(
                    st.integers(0, N_STAGES - 1),
                    st.booleans(),
                    st.integers(1, 3),
                    st.floats(0.0, 3.0),
                    st.floats(0.5, 2.0),
                    st.integers(0, 10),
                ),
            ),
            max_size=40,
        )
    )
    return {"seed": seed, "n": n, "rate": rate, "bounds": bounds, "actions": actions}


@settings(max_examples=60, deadline=None)
@given(scenarios())
def test_invariants_under_random_scaling(sc: dict[str, object]) -> None:
    rng = np.random.default_rng(sc["seed"])  # type: ignore[arg-type]
    n = int(sc["n"])  # type: ignore[call-overload]
    arr = np.cumsum(rng.exponential(1.0 / float(sc["rate"]), n))  # type: ignore[arg-type]
    work = rng.exponential(0.15, (N_STAGES, n))
    e = Engine(arr, work, sc["bounds"], record_servers=True, slot_capacity=2)  # type: ignore[arg-type]
    info: dict[int, dict[str, float]] = {}
    live: dict[int, list[int]] = {k: [] for k in range(N_STAGES)}

    def add(stage: int, slots: int, delay: float, mult: float) -> None:
        h = e.add_replica(stage, slots, e.now + delay, mult)
        info[h] = {
            "stage": stage,
            "slots": slots,
            "ready": e.now + delay,
            "mult": mult,
            "drained": np.inf,
        }
        live[stage].append(h)

    for k in range(N_STAGES):
        add(k, 1, 0.0, 1.0)
    t = 0
    for act in sc["actions"]:  # type: ignore[attr-defined]
        t += 1
        e.advance(float(t))
        if act is None:
            continue
        stage, is_add, slots, delay, mult, pick = act
        if is_add or len(live[stage]) == 1:
            add(stage, slots, delay, mult)
        else:
            h = live[stage].pop(pick % len(live[stage]))
            e.drain_replica(h)
            info[h]["drained"] = e.now
    while not e.idle:
        t += 1
        e.advance(float(t))
        assert t < 100_000

    # Conservation: each request completed every stage or was rejected at one.
    rejected = e.rejected_at >= 0
    assert e.completed + np.count_nonzero(rejected) == n
    for r in range(n):
        stop = e.rejected_at[r] if rejected[r] else N_STAGES
        assert not np.any(np.isnan(e.finish[:stop, r]))
        assert np.all(np.isnan(e.start[stop:, r]))
    bounds = list(sc["bounds"])  # type: ignore[call-overload]
    for k in range(N_STAGES):
        arrived = arr if k == 0 else e.finish[k - 1]
        # Admission: rejected iff the accepted requests still waiting on arrival >= bound.
        order = e.seq[k, : e.cnt[k]]
        accepted: list[int] = []
        for r in order:
            a = arrived[r]
            waiting = sum(1 for j in accepted if np.isnan(e.start[k, j]) or e.start[k, j] > a)
            assert (e.rejected_at[r] == k) == (waiting >= bounds[k])
            if e.rejected_at[r] != k:
                accepted.append(int(r))
        ok = ~np.isnan(e.start[k])
        handles = e.served_by[k, ok]
        start, finish = e.start[k, ok], e.finish[k, ok]
        assert np.all(start >= arrived[ok])
        ready = np.array([info[h]["ready"] for h in handles])
        drained = np.array([info[h]["drained"] for h in handles])
        mult = np.array([info[h]["mult"] for h in handles])
        assert np.all(start >= ready)  # no service before the replica is ready
        assert np.all(start < drained)  # no new work after a drain
        np.testing.assert_allclose(finish - start, work[k, ok] * mult, rtol=1e-12, atol=1e-12)
        # FCFS: in arrival order, the accepted requests' starts never go down.
        s_in_order = e.start[k, order]
        s_in_order = s_in_order[~np.isnan(s_in_order)]
        assert np.all(np.diff(s_in_order) >= 0)
        # A replica never serves more visits at once than it has slots.
        for h in np.unique(handles):
            mine = handles == h
            events = sorted(
                [(x, 1) for x in start[mine]] + [(x, -1) for x in finish[mine]],
                key=lambda p: (p[0], p[1]),
            )
            busy = 0
            for _, d in events:
                busy += d
                assert busy <= info[int(h)]["slots"]

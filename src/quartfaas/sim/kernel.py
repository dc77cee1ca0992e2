"""The simulator's inner loop: advance every stage's FCFS multi-server queue to ``t1``.

Between two control ticks the set of service slots (ready replicas x max_concurrency) is
fixed, so the engine processes time in tick intervals instead of one heap event per stage
visit. For each stage in pipeline order:

1. its new arrivals (stage 0: the workload; stage k: stage k-1's departures before ``t1``,
   already sorted by time) are appended to the stage's arrival order ``seq[k]``;
2. admission and FCFS starts run in arrival order: a request starts at
   ``max(arrival, earliest free slot)`` (the Kiefer-Wolfowitz recursion with a binary heap of
   slot free times; ties go to the lower slot index), but only starts before ``t1`` are
   committed - later ones stay queued because the decision at ``t1`` may add or drain slots;
   an arrival that finds ``queue_bound`` requests waiting is rejected;
3. visits started here or still in flight from earlier intervals that finish before ``t1``
   are delivered, in (finish time, start order), to the next stage (or to completion).

The same source runs compiled by numba when it is installed (``quartfaas.jit``) and as plain
Python otherwise; both give bit-identical results (IEEE max/add/mul only, stable sorts).
Neighbours: ``sim/engine.py`` owns the arrays and calls ``advance``; ``sim/windowstats.py``
compiles its reductions with the same ``_jit``.
"""

from __future__ import annotations

import numpy as np

from quartfaas.jit import jit as _jit


@_jit
def _less(free: np.ndarray, k: int, a: int, b: int) -> bool:
    fa = free[k, a]
    fb = free[k, b]
    return fa < fb or (fa == fb and a < b)


@_jit
def _sift_down(heap: np.ndarray, n: int, i: int, free: np.ndarray, k: int) -> None:
    item = heap[i]
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and _less(free, k, heap[child + 1], heap[child]):
            child += 1
        if _less(free, k, heap[child], item):
            heap[i] = heap[child]
            i = child
        else:
            break
    heap[i] = item


@_jit
def _arrival_time(k: int, r: int, arrivals: np.ndarray, finish: np.ndarray) -> float:
    if k == 0:
        return float(arrivals[r])
    return float(finish[k - 1, r])


@_jit
def advance(  # noqa: PLR0917 - a numba kernel takes its arrays positionally
    t1: float,
    arrivals: np.ndarray,
    next_arrival: np.ndarray,
    work: np.ndarray,
    start: np.ndarray,
    finish: np.ndarray,
    served: np.ndarray,
    record_served: bool,
    seq: np.ndarray,
    cnt: np.ndarray,
    rejected_at: np.ndarray,
    queue_bound: np.ndarray,
    head: np.ndarray,
    qpos: np.ndarray,
    n_accepted: np.ndarray,
    n_left_queue: np.ndarray,
    n_started: np.ndarray,
    slot_free: np.ndarray,
    slot_mult: np.ndarray,
    slot_state: np.ndarray,
    slot_replica: np.ndarray,
    inflight: np.ndarray,
    inflight_n: np.ndarray,
    heap: np.ndarray,
) -> int:
    """Process every stage up to ``t1``; returns the number of visits started (-1: an
    internal invariant broke, the engine raises).

    Array roles (K stages, N requests, S slots per stage):
    ``seq[k, :cnt[k]]`` request ids in arrival order at stage k (``seq[K]``: completion
    order); ``head[k]`` first position not yet started or skipped; ``qpos[k]``/
    ``n_left_queue[k]`` pointer and count of accepted requests known to have left the queue
    (used to count the queue a new arrival sees); ``inflight[k, :inflight_n[k]]`` positions
    in ``seq[k]`` started but finishing at or after the previous ``t1``; slot state 1 is
    serving, 2 draining, 0 free; ``rejected_at[r]`` the stage that rejected r, or -1.
    """
    n_stages = work.shape[0]
    n_slots = slot_free.shape[1]
    n_total = arrivals.shape[0]
    started_total = 0
    cnt_old = cnt.copy()

    # Stage 0's arrivals are the workload itself.
    i = next_arrival[0]
    while i < n_total and arrivals[i] < t1:
        seq[0, cnt[0]] = i
        cnt[0] += 1
        i += 1
    next_arrival[0] = i

    for k in range(n_stages):
        # Heap of the serving slots (a starting replica's slots are free at its ready time).
        nh = 0
        for s in range(n_slots):
            if slot_state[k, s] == 1:
                heap[nh] = s
                nh += 1
        for j in range(nh // 2 - 1, -1, -1):
            _sift_down(heap, nh, j, slot_free, k)
        blocked = nh == 0
        head_old = head[k]

        for p in range(cnt_old[k], cnt[k] + 1):
            # Start every request ahead of p (FCFS: their starts do not depend on p).
            limit = p if p < cnt[k] else cnt[k]
            while not blocked and head[k] < limit:
                h = head[k]
                r = seq[k, h]
                if rejected_at[r] == k:
                    head[k] = h + 1
                    continue
                a = _arrival_time(k, r, arrivals, finish)
                s = heap[0]
                st = max(a, slot_free[k, s])
                if st >= t1:
                    blocked = True
                    break
                fin = st + work[k, r] * slot_mult[k, s]
                slot_free[k, s] = fin
                _sift_down(heap, nh, 0, slot_free, k)
                start[k, r] = st
                finish[k, r] = fin
                if record_served:
                    served[k, r] = slot_replica[k, s]
                head[k] = h + 1
                n_started[k] += 1
                started_total += 1
            if p == cnt[k]:
                break
            # Admission of p: the queue it sees is the accepted requests not started by then.
            r = seq[k, p]
            a = _arrival_time(k, r, arrivals, finish)
            while qpos[k] < head[k]:
                rq = seq[k, qpos[k]]
                if rejected_at[rq] == k:
                    qpos[k] += 1
                elif start[k, rq] <= a:
                    n_left_queue[k] += 1
                    qpos[k] += 1
                else:
                    break
            if n_accepted[k] - n_left_queue[k] >= queue_bound[k]:
                rejected_at[r] = k
            else:
                n_accepted[k] += 1

        # Deliver visits finished before t1 to the next stage, in (finish, start order).
        n_old = inflight_n[k]
        n_new = 0
        for p in range(head_old, head[k]):
            if rejected_at[seq[k, p]] != k:
                n_new += 1
        cand = np.empty(n_old + n_new, dtype=np.int64)
        for j in range(n_old):
            cand[j] = inflight[k, j]
        j = n_old
        for p in range(head_old, head[k]):
            if rejected_at[seq[k, p]] != k:
                cand[j] = p
                j += 1
        done_pos = np.empty(n_old + n_new, dtype=np.int64)
        done_fin = np.empty(n_old + n_new, dtype=np.float64)
        n_done = 0
        n_keep = 0
        for j in range(n_old + n_new):
            p = cand[j]
            f = finish[k, seq[k, p]]
            if f < t1:
                done_pos[n_done] = p
                done_fin[n_done] = f
                n_done += 1
            else:
                if n_keep >= n_slots:
                    return -1  # broken invariant (<= one in-flight visit per slot): refuse
                inflight[k, n_keep] = p
                n_keep += 1
        inflight_n[k] = n_keep
        order = np.argsort(done_fin[:n_done], kind="mergesort")
        nxt = k + 1
        for j in range(n_done):
            seq[nxt, cnt[nxt]] = seq[k, done_pos[order[j]]]
            cnt[nxt] += 1
    return started_total

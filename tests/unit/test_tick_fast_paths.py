"""The controller tick's fast paths give the same decisions as the straightforward code.

The fast paths (``benchmarks/controller_tick.py``: a 64-stage tick) are: the planner's wait
transforms kept per (stage, count) within a plan, its greedy transforming ``count + 1``
only when it has to add, its trim returning at once when nothing is above its floor and
otherwise working on the stages above their floors alone; the feedback's modelled tails in
one batch (``stagetails.stage_quantiles``); Gamma tables stacked once per set of services
and read by flat gathers, on each stage's window of the grid; the measured loads made on
first use; the GAT's QNA input without reason texts, and its QNA hops and feature rows
from one reading of each stage; a CPU target set without ``dataclasses.replace``; the
smoother's steps skipped where they cannot change anything. Here each is swapped for the
straightforward computation (written out below, as the code was before) and whole ticks
of random pipelines are run both ways: the replica vectors, CPU settings and reasons must
be identical, so a shortcut that changes a decision fails.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from quartfaas.control.config import ControllerConfig
from quartfaas.control.corrector import corrector as corrector_mod
from quartfaas.control.corrector import planner, tailmodel
from quartfaas.control.corrector.inputs import PlanInputs
from quartfaas.control.corrector.tailmodel import stage_quantile
from quartfaas.control.policy import Decision, Policy, StageDecision
from quartfaas.control.quart import QuartPolicy
from quartfaas.control.smoother import gat as gat_mod
from quartfaas.control.smoother.propagation import (
    CvPrediction,
    measured_cv,
    qna_departure_scv,
    service_slots,
    stage_features,
    utilisation,
)
from quartfaas.control.smoother.smoother import PipelineSmoother
from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, make_stage

# ---------------------------------------------------------------- the straightforward code


def _waits_at_plain(
    self: planner._Model, idx: npt.NDArray[np.int64], replicas: npt.NDArray[np.int64]
) -> planner.ComplexArray:
    p, r = self.params(idx, replicas)
    return planner._wait_spectra(p, r, self.delta, self.n, self.length)


def _greedy_plain(
    model: planner._Model,
    reps: npt.NDArray[np.int64],
    hi: npt.NDArray[np.int64],
    costs: npt.NDArray[np.float64],
    target: float,
) -> npt.NDArray[np.int64]:
    cur, nxt = model.waits(reps), model.waits(reps + 1)
    ratio = planner._ratio(nxt, cur)
    phi = np.prod(cur, axis=0)
    for _ in range(planner._MAX_STEPS):
        v = phi * model.weights
        tail_now = 1.0 - float(v.sum().real)
        if tail_now <= target:
            break
        tails = 1.0 - np.einsum("kf,f->k", ratio, v).real
        gain = (tail_now - tails) / costs
        gain[reps >= hi] = -np.inf
        best = float(gain.max())
        if not math.isfinite(best):
            break
        if best > 0:
            pick = planner._batch(gain, tails, tail_now, target)
        else:
            room = np.flatnonzero(reps < hi)
            pick = room[[int(np.argmin(costs[room]))]]
        phi = phi * np.prod(ratio[pick], axis=0)
        reps[pick] += 1
        cur[pick] = nxt[pick]
        nxt[pick] = model.waits_at(pick, reps[pick] + 1)
        ratio[pick] = planner._ratio(nxt[pick], cur[pick])
    return reps


def _gamma_cdf_rows_plain(
    k: tailmodel.FloatArray, theta: tailmodel.FloatArray, t: tailmodel.FloatArray
) -> tailmodel.FloatArray:
    n_fine = tailmodel._GAMMA_POINTS
    tables = [tailmodel._gamma_table(float(a), float(b)) for a, b in zip(k, theta, strict=True)]
    fine = np.stack([f for f, _ in tables])
    cum = np.stack([c for _, c in tables])
    lo, hi = fine[:, 0], fine[:, -1]
    step = (hi - lo) / (n_fine - 1)
    pos = (t[None, :] - lo[:, None]) / step[:, None]
    j = np.clip(np.floor(pos).astype(np.int64), 0, n_fine - 2)
    rows = np.arange(k.size)[:, None]
    f0, f1 = cum[rows, j], cum[rows, j + 1]
    val = f0 + (f1 - f0) * (pos - j)
    return np.where(t[None, :] < lo[:, None], 0.0, np.where(t[None, :] > hi[:, None], 1.0, val))


def _gamma_pmf_rows_plain(
    k: tailmodel.FloatArray, theta: tailmodel.FloatArray, delta: float, n: int
) -> tailmodel.FloatArray:
    t = (np.arange(n, dtype=np.float64) + 0.5) * delta
    return np.diff(_gamma_cdf_rows_plain(k, theta, t), axis=1, prepend=0.0)


def _smooth_plain(
    self: PipelineSmoother, snapshot: PipelineSnapshot, targets: Any, predictions: Any
) -> Any:
    """The smoother's steps even where they cannot change anything (the defaults)."""
    if targets.hold or not targets.stages:
        return targets
    return self._steps(snapshot, targets, predictions)


def _stage_quantiles_plain(
    stages: list[tailmodel.StageLoad], replicas: list[int], q: float, grid: int
) -> list[float]:
    return [stage_quantile(s, c, q, grid=grid) for s, c in zip(stages, replicas, strict=True)]


def _read_inputs_plain(snapshot: PipelineSnapshot, forecast: object, q: float) -> PlanInputs:
    out = _READ_INPUTS(snapshot, forecast, q)  # type: ignore[arg-type]
    fresh = _READ_INPUTS(snapshot, None, q)  # the measured loads, built on their own
    out.measured = fresh.loads
    return out


_READ_INPUTS = corrector_mod.read_inputs


def _qna_and_features_plain(
    snapshot: PipelineSnapshot,
) -> tuple[tuple[CvPrediction, ...], list[list[float]]]:
    """The GAT's QNA input (with its reason texts) and feature rows, each stage's
    measurements read through the public helpers wherever a formula needs one."""
    stages = snapshot.stages
    preds: list[CvPrediction] = []
    for k, s in enumerate(stages):
        rate = (
            s.arrival_rate if s.arrival_rate is not None and math.isfinite(s.arrival_rate) else None
        )
        if k == 0:
            cv0 = measured_cv(s)
            preds.append(CvPrediction(s.name, 1.0 if cv0 is None else cv0, rate, "", ""))
            continue
        up = stages[k - 1]
        up_cv = measured_cv(up)
        ca = preds[k - 1].cv if up_cv is None else up_cv
        scv_s = up.service_scv if up.service_scv is not None and up.service_scv >= 0 else 1.0
        rho = utilisation(up)
        cd2 = qna_departure_scv(ca * ca, scv_s, rho or 0.0, max(1, service_slots(up)))
        up_rate = (
            up.arrival_rate
            if up.arrival_rate is not None and math.isfinite(up.arrival_rate)
            else None
        )
        cv = min(max(math.sqrt(cd2), 0.05), 20.0)
        preds.append(CvPrediction(s.name, cv, up_rate if up_rate is not None else rate, "", ""))
    n = len(stages)
    rows = [
        stage_features(s, k, n, measured_cv(stages[k - 1]) if k > 0 else None, preds[k].cv)
        for k, s in enumerate(stages)
    ]
    return tuple(preds), rows


def _with_cpu_plain(self: StageDecision, cpu: float | None, reason: str) -> StageDecision:
    return replace(self, cpu_per_replica=cpu, reason=reason)


def _trim_plain(
    model: planner._Model,
    reps: npt.NDArray[np.int64],
    floors: npt.NDArray[np.int64],
    costs: npt.NDArray[np.float64],
    target: float,
) -> npt.NDArray[np.int64]:
    cur, prev = model.waits(reps), model.waits(np.maximum(reps - 1, floors))
    ratio = planner._ratio(prev, cur)
    phi = np.prod(cur, axis=0)
    for _ in range(planner._MAX_STEPS):
        v = phi * model.weights
        tails = 1.0 - np.einsum("kf,f->k", ratio, v).real
        ok = np.flatnonzero((tails <= target) & (reps > floors))
        if ok.size == 0:
            break
        order = ok[np.lexsort((tails[ok], -costs[ok]))]
        m = order.size
        while m > 1:
            trial = phi * np.prod(ratio[order[:m]], axis=0)
            if 1.0 - float((trial * model.weights).sum().real) <= target:
                break
            m //= 2
        pick = order[:m]
        phi = phi * np.prod(ratio[pick], axis=0)
        reps[pick] -= 1
        cur[pick] = prev[pick]
        prev[pick] = model.waits_at(pick, np.maximum(reps[pick] - 1, floors[pick]))
        ratio[pick] = planner._ratio(prev[pick], cur[pick])
    return reps


def _qna_and_features_array_plain(
    snapshot: PipelineSnapshot,
) -> tuple[tuple[CvPrediction, ...], np.ndarray]:
    preds, rows = _qna_and_features_plain(snapshot)
    return preds, np.array(rows, dtype=np.float64).reshape(len(rows), -1)


@pytest.fixture
def use_plain(monkeypatch: pytest.MonkeyPatch) -> Callable[[], None]:
    """Call it to run the rest of the test on the straightforward code (undone after)."""

    def setup() -> None:
        monkeypatch.setattr(planner._Model, "waits_at", _waits_at_plain)
        monkeypatch.setattr(planner, "_greedy", _greedy_plain)
        monkeypatch.setattr(planner, "_trim", _trim_plain)
        monkeypatch.setattr(tailmodel, "_gamma_pmf_rows", _gamma_pmf_rows_plain)
        monkeypatch.setattr(corrector_mod, "stage_quantiles", _stage_quantiles_plain)
        monkeypatch.setattr(corrector_mod, "read_inputs", _read_inputs_plain)
        monkeypatch.setattr(gat_mod, "_qna_and_features_array", _qna_and_features_array_plain)
        monkeypatch.setattr(StageDecision, "with_cpu", _with_cpu_plain)
        monkeypatch.setattr(PipelineSmoother, "smooth", _smooth_plain)
        planner._SVC_CACHE.clear()  # nothing the fast run computed is read back
        monkeypatch.setattr(tailmodel, "_UNIT", tailmodel._UnitTables())

    return setup


# ---------------------------------------------------------------- random pipelines


def _snapshots(seed: int, n_stages: int, n: int) -> list[PipelineSnapshot]:
    """``n`` snapshots one second apart: drifting load, random service shapes (some
    deterministic, some hyper-exponential), queues, idle stages, unknown service times."""
    rng = random.Random(seed)
    service = [rng.uniform(0.005, 0.08) for _ in range(n_stages)]
    scv = [rng.choice([0.0, 0.05, 0.3, 1.0, 2.0, rng.uniform(0.01, 0.5)]) for _ in service]
    conc = [rng.choice([1, 1, 2, 4]) for _ in service]
    slo = rng.uniform(1.5, 4.0) * sum(service) + rng.uniform(0.05, 0.5)
    replicas = [rng.randint(1, 8) for _ in service]
    out = []
    for k in range(n):
        load = rng.uniform(5.0, 60.0) * (1.0 + 0.5 * math.sin(k / 7.0))
        stages = []
        for i, s_mean in enumerate(service):
            idle = rng.random() < 0.05
            lam = 0.0 if idle else load * rng.uniform(0.8, 1.2)
            p99 = None if idle else s_mean * rng.uniform(1.5, 12.0)
            if rng.random() < 0.2:  # a stage's count moved: no longer steady
                replicas[i] = max(1, replicas[i] + rng.choice((-1, 1)))
            stages.append(
                make_stage(
                    f"stage-{i:02d}",
                    i,
                    min_replicas=rng.choice([0, 1]),
                    max_replicas=rng.choice([8, 16, 64]),
                    max_concurrency=conc[i],
                    ready_replicas=replicas[i],
                    starting_replicas=1 if rng.random() < 0.05 else 0,
                    queue_len=0 if idle else rng.choice((0, 0, 1, 3, 40)),
                    in_flight=0 if idle else 2,
                    arrival_rate=lam,
                    arrival_cv=rng.uniform(0.5, 2.5),
                    departure_rate=lam * rng.uniform(0.7, 1.0),
                    service_mean_s=None if rng.random() < 0.02 else s_mean,
                    service_scv=scv[i] * rng.uniform(0.9, 1.1),
                    latency=LatencyStats(
                        count=0 if idle else rng.choice([5, int(lam * 10) + 1, 500]),
                        mean_s=None if p99 is None else p99 / 3,
                        p50_s=None if p99 is None else p99 / 3,
                        p95_s=None if p99 is None else p99 / 1.5,
                        p99_s=p99,
                    ),
                )
            )
        out.append(
            PipelineSnapshot(
                now=1000.0 + k,
                pipeline="random",
                slo_p99_s=slo * rng.choice([1.0, 1.0, 0.3]),  # sometimes infeasible
                stages=tuple(stages),
                source="test",
                e2e=LatencyStats(count=300, p99_s=slo * rng.uniform(0.5, 1.5)),
            )
        )
    return out


@pytest.mark.parametrize(("seed", "n_stages"), [(1, 64), (2, 24), (3, 7), (4, 2), (5, 40)])
def test_fast_paths_decide_as_the_straightforward_code(
    seed: int, n_stages: int, use_plain: Callable[[], None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Decisions and reasons equal; so are, bit for bit, every plan (replicas, modelled
    quantile, budgets) and the final state (learned factors), which the reasons' three
    digits would not show."""
    plans: list[planner.Plan] = []
    real_plan = planner.plan_replicas

    def recording(*a: Any, **k: Any) -> planner.Plan:
        plans.append(real_plan(*a, **k))
        return plans[-1]

    monkeypatch.setattr(corrector_mod, "plan_replicas", recording)
    snaps = _snapshots(seed, n_stages, 40)
    fast = [_run(p, snaps) for p in _policies()]
    fast_plans = plans[:]
    plans.clear()
    use_plain()
    slow = [_run(p, snaps) for p in _policies()]
    for f, s in zip(fast, slow, strict=True):
        assert [t[1] for t in f[0]] == [t[1] for t in s[0]]  # replicas, CPU, stage reasons
        assert f == s
    assert fast_plans == plans


def test_the_random_ticks_reach_the_fast_paths(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pipelines above make actions, feedback batches, down plans and greedy steps
    (otherwise the comparison would compare little)."""
    seen = {"batch": 0, "greedy_steps": 0, "trims": 0}

    def counting(name: str, fn: Callable[..., object]) -> Callable[..., object]:
        def wrapped(*a: object, **k: object) -> object:
            seen[name] += 1
            return fn(*a, **k)

        return wrapped

    monkeypatch.setattr(
        corrector_mod, "stage_quantiles", counting("batch", corrector_mod.stage_quantiles)
    )
    monkeypatch.setattr(planner, "_batch", counting("greedy_steps", planner._batch))
    real_trim = planner._trim

    def trim(model: planner._Model, reps: npt.NDArray[np.int64], *a: object) -> object:
        before = int(reps.sum())
        out = real_trim(model, reps, *a)  # type: ignore[arg-type]
        seen["trims"] += int(out.sum()) < before
        return out

    monkeypatch.setattr(planner, "_trim", trim)
    ticks, _ = _run(_policies()[0], _snapshots(1, 64, 40))
    actions = sum(1 for _, stages in ticks for st in stages if st[1] != st[4])  # type: ignore[attr-defined]
    assert actions > 0
    assert seen["batch"] > 0 and seen["greedy_steps"] > 0 and seen["trims"] > 0


def _run(policy: Policy, snaps: list[PipelineSnapshot]) -> tuple[list[tuple[object, ...]], Any]:
    state = policy.initial_state(snaps[0])
    out: list[tuple[object, ...]] = []
    for s in snaps:
        d, state = policy.decide(s, state)
        out.append(_summary(d))
    return out, state


def _summary(d: Decision) -> tuple[object, ...]:
    return (
        d.reason,
        tuple((s.stage, s.replicas, s.cpu_per_replica, s.reason, s.current) for s in d.stages),
    )


def _policies() -> list[Policy]:
    cfg = ControllerConfig.model_validate({})
    return [
        corrector_mod.ReplicaCorrector(cfg),
        QuartPolicy(cfg, predictor="qna", host_cores=16),
        QuartPolicy(cfg, predictor="gat", host_cores=16),
    ]


@pytest.mark.parametrize("seed", range(6))
def test_gamma_masses_on_their_windows_equal_whole_rows(seed: int) -> None:
    """``tailmodel._gamma_pmf_rows`` computes each row only where its CDF moves: bit for
    bit the whole rows' differences, for services far narrower than the grid, as wide as
    it, beyond its end, within its first half-step, and of every shape bin's range."""
    rng = np.random.default_rng(seed)
    rows = 40
    k = np.exp(rng.uniform(0.0, math.log(1e5), rows))  # shape 1/SCV: SCV 1 .. 1e-5
    mean = rng.choice([1e-4, 0.01, 0.05, 0.5, 3.0, 50.0], rows) * rng.uniform(0.5, 2.0, rows)
    for n in (8, 128, 256, 1024):
        for delta in (1e-4, 0.003, 0.02, 0.4):
            got = tailmodel._gamma_pmf_rows(k, mean / k, delta, n)
            want = _gamma_pmf_rows_plain(k, mean / k, delta, n)
            assert np.array_equal(got, want), (n, delta)
    assert tailmodel._gamma_pmf_rows(k[:0], mean[:0], 0.01, 64).shape == (0, 64)


@pytest.mark.parametrize("seed", range(4))
def test_fused_qna_features_equal_the_helpers(seed: int) -> None:
    """``qna_and_features(snapshot)`` (one compiled pass, ``_qna_and_features_array``) gives the
    predictions and rows of the helpers' path (``qna=`` given: ``_measured`` and
    ``_feature_row`` per stage), value for value, with unknown rates, service times and
    CVs among the stages."""
    from quartfaas.control.smoother import propagation

    for base in _snapshots(seed, 12, 6):
        stages = list(base.stages)
        stages[1] = replace(stages[1], arrival_cv=None, service_scv=None)
        stages[2] = replace(stages[2], arrival_rate=None, service_mean_s=float("nan"))
        stages[3] = replace(stages[3], ready_replicas=0, arrival_cv=-1.0)
        snap = replace(base, stages=tuple(stages))
        qna = propagation.QnaPredictor().predict(snap, reasons=False)
        want = propagation.qna_and_features(snap, qna)
        got = propagation.qna_and_features(snap)
        assert got == want
    first = replace(snap, stages=(replace(snap.stages[0], arrival_cv=None), *snap.stages[1:]))
    assert propagation.qna_and_features(first)[0][0].source == "assumed"

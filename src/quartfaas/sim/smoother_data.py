"""Training data for the smoother's CV predictor, generated with the simulator (seeded).

Neighbours: runs ``sim/run.simulate`` (engine, ``SimBackend``, ``SimCollector``, the shared
``ControlLoop``) on random pipelines and arrival processes; builds inputs with
``control/propagation.features`` - the very function ``control/gat.GatPredictor`` calls at
inference - and the QNA and persistence baselines from the same snapshots;
``sim/train_smoother.py`` trains and evaluates on the result. ``control/`` never imports
this module.

One *run* is one simulated pipeline:

* 2-16 stages (``min_stages``..``max_stages``); a mean arrival rate ``λ`` log-uniform in
  ``rate_range``; per stage a replica count in 1..``max_replicas``, 1 or 2 slots per replica,
  a utilisation ``ρ`` uniform in ``rho_range`` (the mean service time is then
  ``ρ·c·slots/λ``) and a service SCV uniform in [0, 1.5] (Gamma work, constant at 0);
* arrivals Poisson, Gamma renewal (CV log-uniform in ``cv_range``) or on-off MMPP (CV
  log-uniform in [max(1.2, lo), hi], on-fraction uniform in [0.1, 0.5]), one third each;
* in half the runs one stage changes its replica count by one mid-run (staying at ``ρ <=
  0.95``), so replica counts and utilisations also move within a run.

Replica counts follow that script (no autoscaler), so the data describe the pipeline, not a
policy. Every ``sample_every_s`` from ``window_s`` on, the snapshot's features are recorded
with the **target**: ``ln CV`` of each stage's arrival times over the *next* ``horizon_s``
(stage ``k``'s arrivals are stage ``k-1``'s departures), NaN when fewer than
``min_target_arrivals`` arrive (too few gaps for a CV that means anything).

Runs are split into train/validation/test as whole runs (a run's ticks are strongly
correlated; splitting rows would leak). Everything derives from one seed through numpy
``Generator``s, so the same ``DataConfig`` and seed give the same arrays.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from quartfaas.control.config import ControllerConfig
from quartfaas.control.loop import Applied
from quartfaas.control.policy import Decision, StageDecision
from quartfaas.control.smoother.propagation import (
    N_FEATURES,
    PersistencePredictor,
    QnaPredictor,
    features,
)
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.metrics.windows import gap_cv
from quartfaas.sim.cluster import GPU_TYPES, ClusterSpec, ServerSpec
from quartfaas.sim.pipelines import SimPipeline, SimStage
from quartfaas.sim.run import simulate
from quartfaas.workload.synthetic import gamma_renewal, mmpp, mmpp_for, poisson

# One big CPU-only server: the data should not depend on placement or GPU speed.
_CLUSTER = ClusterSpec("smoother-data", (ServerSpec("sim0", GPU_TYPES["V100"], 8, 1024.0, 4096),))
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True, slots=True)
class DataConfig:
    """What the generator draws from (recorded in the shipped metrics.json)."""

    n_runs: int = 300
    duration_s: float = 240.0
    window_s: float = 10.0
    horizon_s: float = 20.0
    sample_every_s: float = 5.0
    min_stages: int = 2
    max_stages: int = 16
    rate_range: tuple[float, float] = (5.0, 60.0)
    rho_range: tuple[float, float] = (0.2, 0.95)
    cv_range: tuple[float, float] = (0.5, 8.0)
    max_replicas: int = 8
    min_target_arrivals: int = 10
    split_frac: tuple[float, float, float] = (0.7, 0.15, 0.15)

    def __post_init__(self) -> None:
        if self.n_runs < 3:
            raise ValueError(f"n_runs ({self.n_runs}) must be >= 3 (one run per split)")
        if not 2 <= self.min_stages <= self.max_stages:
            raise ValueError(f"need 2 <= min_stages <= max_stages, got {self.min_stages}, "
                             f"{self.max_stages}")  # fmt: skip
        if self.duration_s < self.window_s + self.horizon_s + self.sample_every_s + 1:
            raise ValueError(
                f"duration_s ({self.duration_s}) must exceed window_s + horizon_s + "
                f"sample_every_s + 1 ({self.window_s + self.horizon_s + self.sample_every_s + 1})"
            )

    def to_json(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class RunSpec:
    run_id: int
    seed: int
    pipeline: SimPipeline
    replicas: tuple[int, ...]
    arrival: str  # e.g. "mmpp rate=12.3 cv=4.1 on_frac=0.22"
    change: tuple[float, int, int] | None  # (time, stage, new count)


@dataclass(frozen=True, slots=True, eq=False)
class RunData:
    """One run's rows: ``T`` sampled ticks × ``N`` stages."""

    spec: RunSpec
    times: np.ndarray  # (T,)
    x: np.ndarray  # (T, N, N_FEATURES) float32
    y: np.ndarray  # (T, N) ln CV over the next horizon; NaN where too few arrivals
    qna_cv: np.ndarray  # (T, N) QNA's predicted CV
    persist_cv: np.ndarray  # (T, N) the measured CV now (persistence)

    @property
    def n_stages(self) -> int:
        return self.spec.pipeline.num_stages


@dataclass(frozen=True, slots=True, eq=False)
class Dataset:
    config: DataConfig
    seed: int
    runs: tuple[RunData, ...]
    split: dict[str, tuple[int, ...]]  # split name -> indices into runs

    def part(self, name: str) -> list[RunData]:
        return [self.runs[i] for i in self.split[name]]

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for name in SPLITS:
            runs = self.part(name)
            out[name] = {
                "runs": len(runs),
                "rows": int(sum(np.isfinite(r.y).sum() for r in runs)),
            }
        return out


def _loguniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def random_run(rng: np.random.Generator, run_id: int, cfg: DataConfig) -> RunSpec:
    """Draw one run's pipeline, replica script and arrival description."""
    n = int(rng.integers(cfg.min_stages, cfg.max_stages + 1))
    lam = _loguniform(rng, *cfg.rate_range)
    stages, counts = [], []
    for k in range(n):
        c = int(rng.integers(1, cfg.max_replicas + 1))
        slots = int(rng.integers(1, 3))
        rho = float(rng.uniform(*cfg.rho_range))
        scv = float(rng.uniform(0.0, 1.5))
        stages.append(
            SimStage(
                name=f"s{k}",
                index=k,
                service_s=rho * c * slots / lam,
                service_scv=scv,
                max_concurrency=slots,
                min_replicas=1,
                max_replicas=cfg.max_replicas,
                queue_bound=10**7,  # no rejections: the data are about the flow
            )
        )
        counts.append(c)
    kind = ("poisson", "gamma", "mmpp")[int(rng.integers(0, 3))]
    if kind == "poisson":
        arrival = f"poisson rate={lam:.4g}"
    elif kind == "gamma":
        arrival = f"gamma rate={lam:.4g} cv={_loguniform(rng, *cfg.cv_range):.4g}"
    else:
        cv = _loguniform(rng, max(1.2, cfg.cv_range[0]), cfg.cv_range[1])
        arrival = f"mmpp rate={lam:.4g} cv={cv:.4g} on_frac={rng.uniform(0.1, 0.5):.4g}"
    change = None
    if rng.random() < 0.5:
        j = int(rng.integers(0, n))
        step = 1 if rng.random() < 0.5 else -1
        new = counts[j] + step
        st = stages[j]
        load = lam * st.service_s / st.max_concurrency  # busy slots' worth of replicas
        if 1 <= new <= cfg.max_replicas and load / new <= cfg.rho_range[1]:
            at = float(rng.uniform(0.3, 0.7)) * cfg.duration_s
            change = (round(at, 3), j, new)
    pipe = SimPipeline(
        name=f"run{run_id}",
        model="synthetic",
        variant=f"RANDOM-{n}",
        stages=tuple(stages),
        slo_p99_s=10.0,
    )
    seed = int(rng.integers(0, 2**31 - 1))
    return RunSpec(run_id, seed, pipe, tuple(counts), arrival, change)


def arrivals_for(spec: RunSpec, duration_s: float) -> np.ndarray:
    """The arrival times a run's description stands for (seeded by the run)."""
    kind, *params = spec.arrival.split()
    p = {k: float(v) for k, v in (item.split("=") for item in params)}
    if kind == "poisson":
        return poisson(p["rate"], duration_s, seed=spec.seed)
    if kind == "gamma":
        return gamma_renewal(p["rate"], p["cv"], duration_s, seed=spec.seed)
    process = mmpp_for(p["rate"], p["cv"], on_frac=p["on_frac"])
    return mmpp(process, duration_s, seed=spec.seed)


class _Script:
    """Policy holding the scripted replica counts (and the one mid-run change)."""

    name = "script"

    def __init__(self, spec: RunSpec) -> None:
        self.spec = spec

    def initial_state(self, snapshot: PipelineSnapshot) -> None:
        return None

    def decide(self, snapshot: PipelineSnapshot, state: None) -> tuple[Decision, None]:
        counts = list(self.spec.replicas)
        ch = self.spec.change
        if ch is not None and snapshot.now >= ch[0]:
            counts[ch[1]] = ch[2]
        out = tuple(
            StageDecision(s.name, s.replicas, counts[k], "scripted")
            for k, s in enumerate(snapshot.stages)
        )
        return Decision(snapshot.now, self.name, out), state


class _Sampler:
    """DecisionSink keeping the snapshots at the sampled tick times."""

    def __init__(self, cfg: DataConfig) -> None:
        self.cfg = cfg
        self.last = cfg.duration_s - cfg.horizon_s - 1.0
        self.snapshots: list[PipelineSnapshot] = []

    def record(self, snapshot: PipelineSnapshot, decision: Decision, applied: Applied) -> None:
        t = snapshot.now
        step = self.cfg.sample_every_s
        if self.cfg.window_s <= t <= self.last and abs(t / step - round(t / step)) < 1e-9:
            self.snapshots.append(snapshot)


def _targets(times: np.ndarray, at: np.ndarray, horizon: float, min_n: int) -> np.ndarray:
    lo = np.searchsorted(times, at, side="left")
    hi = np.searchsorted(times, at + horizon, side="left")
    out = np.full(at.size, np.nan)
    for i, (a, b) in enumerate(zip(lo, hi, strict=True)):
        if b - a >= min_n:
            cv = gap_cv(times[a:b])
            if cv is not None and cv > 0:
                out[i] = math.log(cv)
    return out


def simulate_run(spec: RunSpec, cfg: DataConfig) -> RunData:
    """Simulate one run and turn its sampled snapshots into feature/target rows."""
    arr = arrivals_for(spec, cfg.duration_s)
    ctl = ControllerConfig.model_validate({"interval_s": 1.0, "window_s": cfg.window_s})
    sampler = _Sampler(cfg)
    result = simulate(
        spec.pipeline,
        _CLUSTER,
        _Script(spec),
        arr,
        seed=spec.seed,
        controller=ctl,
        initial_replicas={
            s.name: c for s, c in zip(spec.pipeline.stages, spec.replicas, strict=True)
        },
        drain_limit_s=1.0,
        sinks=[sampler],
    )
    snaps = sampler.snapshots
    n = spec.pipeline.num_stages
    times = np.array([s.now for s in snaps])
    x = np.zeros((len(snaps), n, N_FEATURES), dtype=np.float32)
    qna_cv = np.zeros((len(snaps), n))
    persist_cv = np.zeros((len(snaps), n))
    qna, persist = QnaPredictor(), PersistencePredictor()
    for i, snap in enumerate(snaps):
        q = qna.predict(snap)
        x[i] = np.asarray(features(snap, q), dtype=np.float32)
        qna_cv[i] = [p.cv for p in q]
        persist_cv[i] = [p.cv for p in persist.predict(snap)]
    y = np.empty((len(snaps), n))
    for k in range(n):
        if k == 0:
            at_k = result.arrivals
        else:
            f = result.stage_finish[k - 1]
            at_k = np.sort(f[np.isfinite(f)])
        y[:, k] = _targets(at_k, times, cfg.horizon_s, cfg.min_target_arrivals)
    return RunData(spec, times, x, y, qna_cv, persist_cv)


def split_runs(
    n_runs: int, frac: tuple[float, float, float], seed: int
) -> dict[str, tuple[int, ...]]:
    """Whole runs to train/validation/test (at least one run each), shuffled by ``seed``."""
    order = np.random.default_rng(seed).permutation(n_runs)
    n_val = max(1, round(frac[1] * n_runs))
    n_test = max(1, round(frac[2] * n_runs))
    n_train = n_runs - n_val - n_test
    if n_train < 1:
        raise ValueError(f"{n_runs} runs leave none for training with split {frac}")
    parts = (order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])
    return {name: tuple(sorted(int(i) for i in p)) for name, p in zip(SPLITS, parts, strict=True)}


def generate_dataset(
    seed: int,
    cfg: DataConfig | None = None,
    *,
    progress: Callable[[int, int], None] | None = None,
) -> Dataset:
    """``cfg.n_runs`` simulated runs from ``seed``; ``progress(done, total)`` after each."""
    cfg = cfg or DataConfig()
    rng = np.random.default_rng(seed)
    runs = []
    for i in range(cfg.n_runs):
        runs.append(simulate_run(random_run(rng, i, cfg), cfg))
        if progress is not None:
            progress(i + 1, cfg.n_runs)
    split = split_runs(cfg.n_runs, cfg.split_frac, seed + 1)
    return Dataset(cfg, seed, tuple(runs), split)


__all__ = [
    "SPLITS",
    "DataConfig",
    "Dataset",
    "RunData",
    "RunSpec",
    "arrivals_for",
    "generate_dataset",
    "random_run",
    "simulate_run",
    "split_runs",
]

"""Experiments on the simulator: policy and placement comparisons, ablations, CV x load sweeps.

Neighbours: ``sim/run.simulate`` runs one policy; ``sim/report`` gives per-run rows and
plots; ``workload/`` builds arrivals; ``control/baselines`` and ``control/corrector`` are
the policies; ``control/placement`` the placers; ``sim/commands.py`` is the CLI on top.

Choices stated once, here:

- **SLO**: the pipeline's own ``slo_p99_s`` (presets: 5 x the total service time on the
  reference GPU, ``sim/pipelines.py``), unless ``slo_ms`` overrides it. Quart reads the
  SLO (it splits it into stage budgets); the baselines ignore it.
- **quart**: ``control/registry.make_policy("quart", cfg)`` (corrector -> smoother -> CPU
  compensator). Ablations switch parts off: ``quart-no-smoother`` (``cfg.smoother=False``),
  ``quart-no-compensator`` (``cfg.compensator=False``), ``quart-corrector`` (both off) and
  ``quart-no-cache``: the cluster's start delays charge a host-memory (fork) hit the cold
  tier's cost (disk or remote read), so the cache is gone while every other rule, the
  placer included, stays the same; ``quart-no-prewarm`` turns off Quart's cache
  management (``sim/cache_planner.py``: pre-warming host memory where the decision and
  the measured burstiness say replicas will start), which every other Quart variant
  runs after each tick. The compensator acts in the simulator only through a
  stage's ``cpu_frac``; the GPU-bound presets have none, so there it changes nothing.
- **static** is peak provisioning: per stage ``peak_replicas`` (control/baselines) for the
  workload's highest 1-second arrival rate at 70 % utilisation, with service times on the
  cluster's slowest GPU; the replicas are deployed before the run (no start delays).
- **placement**: every policy of a comparison uses the same placer (default ``quart``).
- **size**: a comparison is refused before it starts when requests x stages x runs exceeds
  ``max_visits`` (records cost ~28 bytes a visit; the engine does ~2M visits/s).
- Every other policy starts from each stage's ``min_replicas``.

Runs are deterministic: same arguments and seed, same rows (``Comparison.text`` is
byte-identical; wall-clock figures are never in a table).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, fields, replace

import numpy as np

from quartfaas.backends.base import StartTier
from quartfaas.control import registry
from quartfaas.control.baselines import BASELINES, make_policy, peak_replicas
from quartfaas.control.config import ControllerConfig
from quartfaas.control.placement import PLACERS, get_placer
from quartfaas.control.placement.cache_plan import CachePlanConfig
from quartfaas.control.policy import Policy
from quartfaas.errors import SimulationError, SpecError
from quartfaas.sim.cluster import ClusterSpec, GpuType, StartDelays
from quartfaas.sim.pipelines import SimPipeline
from quartfaas.sim.placement import CacheFirstPlacer, ControlPlacer, FirstFitPlacer, Placer
from quartfaas.sim.report import summary_row
from quartfaas.sim.run import SimResult, simulate
from quartfaas.workload.synthetic import Workload
from quartfaas.workload.traces import NAMED_TRACES

POLICIES = ("quart", "openfaas-ce", "openfaas-pro", "knative", "hpa", "ray", "uniform", "static")
ABLATIONS = (
    "quart-no-smoother", "quart-no-cache", "quart-no-compensator", "quart-no-prewarm",
    "quart-corrector",
)  # fmt: skip
SIM_PLACERS = ("first-fit", "cache-first")  # sim/placement.py's own, model anti-affinity
MAX_VISITS = 50_000_000
VISITS_PER_S = 2e6  # closed-loop engine speed on one core (benchmarks/sim_speed.py)
TICK_COST_S = 0.01  # a policy decision + snapshot on 21 stages, order of magnitude
STATIC_PEAK_WINDOW_S = 1.0
STATIC_TARGET_UTILISATION = 0.7


def policy_names() -> list[str]:
    return [*POLICIES, *ABLATIONS]


def placement_names() -> list[str]:
    return [*sorted(PLACERS), *SIM_PLACERS]


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """Run ``run`` of ``runs`` (labelled) has finished ``done`` of ``total`` requests."""

    run: int
    runs: int
    label: str
    done: int
    total: int


ProgressFn = Callable[[ProgressEvent], None]

# -- workloads ------------------------------------------------------------------------------


def make_workload(text: str, *, rate: float | None = None, seed: int = 0) -> Workload:
    """A workload from a trace name (``azure-code``) or a ``kind:key=value`` string.

    ``rate`` sets the mean rate: a trace is rescaled to it, a synthetic kind gets
    ``rate=`` (giving it in the string too is an error).
    """
    text = text.strip()
    if ":" not in text and text in NAMED_TRACES:
        text = f"trace:{text}"
    if rate is not None:
        kind, _, rest = text.partition(":")
        text = f"{kind}:{rest + ',' if rest else ''}rate={float(rate)!r}"
    try:
        return Workload.parse(text, seed=seed)
    except SpecError as exc:
        if text.partition(":")[0] in ("poisson", "gamma", "erlang", "hyperexp", "mmpp", "trace"):
            raise
        raise SpecError(
            f"unknown workload {text!r}: use a trace name ({', '.join(sorted(NAMED_TRACES))}) "
            f"or a generator such as mmpp:rate=20,cv=4, poisson:rate=20, gamma:rate=20,cv=2 "
            f"({exc})"
        ) from None


def arrivals_for(workload: Workload, duration_s: float | None) -> np.ndarray:
    """Arrival times; a trace without ``duration_s`` is replayed once."""
    return np.asarray(workload.arrivals(duration_s), dtype=np.float64)


def expected_requests(workload: Workload, duration_s: float | None) -> int:
    """Requests the workload will produce, known before generating (traces are read)."""
    if workload.kind == "trace":
        once = workload.trace(None)  # one replay; covering a long duration repeats it
        if duration_s is None or once.mean_rate is None:
            return len(once)
        return math.ceil(len(once) * duration_s / (once.duration_s + 1.0 / once.mean_rate))
    if duration_s is None:
        raise SpecError(f"workload {workload} needs a duration (--duration)")
    mean = workload.mmpp_process().mean_rate if workload.kind == "mmpp" else workload.get("rate")
    assert isinstance(mean, float)
    return math.ceil(mean * duration_s)


def peak_rate(arrivals: np.ndarray, window_s: float = STATIC_PEAK_WINDOW_S) -> float:
    """Highest arrival count in any ``[t, t + window_s)`` starting at an arrival, per second."""
    if arrivals.size == 0:
        return 0.0
    ends = np.searchsorted(arrivals, arrivals + window_s, side="left")
    return float(np.max(ends - np.arange(arrivals.size))) / window_s


# -- size and fit checks --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Estimate:
    requests: int
    stages: int
    runs: int
    ticks: int

    @property
    def visits(self) -> int:
        return self.requests * self.stages * self.runs

    @property
    def seconds(self) -> float:
        return self.visits / VISITS_PER_S + self.ticks * self.runs * TICK_COST_S

    def check(self, max_visits: int, what: str = "") -> None:
        if self.visits <= max_visits:
            return
        raise SimulationError(
            f"{what or 'this run'} would simulate {self.requests:,} requests x {self.stages} "
            f"stages x {self.runs} runs = {self.visits:,} stage visits (~{self.seconds:.0f} s), "
            f"over the limit of {max_visits:,}; shorten --duration, lower the rate (--rate, "
            "--loads), run fewer policies, or raise --max-visits"
        )


def check_fits(pipeline: SimPipeline, cluster: ClusterSpec, placement: str, initial: int) -> None:
    """Refuse, with the numbers, a cluster that cannot hold ``initial`` replicas in total."""
    need_mem = sum(s.gpu_memory_gib * s.min_replicas for s in pipeline.stages)
    have_mem = sum(s.gpu.memory_gib * s.gpus for s in cluster.servers)
    biggest = max((s.gpu_memory_gib for s in pipeline.stages), default=0.0)
    largest_gpu = max((s.gpu.memory_gib for s in cluster.servers), default=0.0)
    gpu_stages = sum(s.min_replicas for s in pipeline.stages if s.gpu_memory_gib > 0)
    one_per_gpu = placement in SIM_PLACERS and pipeline.anti_affinity == "model"
    problems = []
    if need_mem > have_mem:
        problems.append(f"{need_mem:.1f} GiB of GPU memory > the cluster's {have_mem:.1f} GiB")
    if biggest > largest_gpu:
        problems.append(f"a {biggest:.1f} GiB replica > the largest GPU ({largest_gpu:.1f} GiB)")
    if one_per_gpu and gpu_stages > cluster.total_gpus:
        problems.append(
            f"{gpu_stages} replicas need one GPU each (model-level anti-affinity with placer "
            f"{placement}) > {cluster.total_gpus} GPUs"
        )
    if problems:
        raise SimulationError(
            f"cluster {cluster.describe()} cannot hold pipeline {pipeline.name!r} at its "
            f"minimum replicas ({initial} in total): " + "; ".join(problems)
        )


# -- policies and placers -------------------------------------------------------------------


def _quart(cfg: ControllerConfig) -> Policy:
    return registry.make_policy("quart", cfg)


class NoForkDelays(StartDelays):
    """``StartDelays`` where a host-memory hit costs what a miss does (the no-cache ablation)."""

    __slots__ = ()

    def seconds(
        self, tier: StartTier, size_gib: float, gpu: GpuType | None, warmup_s: float
    ) -> float:
        if tier in (StartTier.FORK, StartTier.PREFORK):
            tier = StartTier.COLD
        return StartDelays.seconds(self, tier, size_gib, gpu, warmup_s)


@dataclass(frozen=True)
class PolicySetup:
    """How one named policy is run: the policy, the cluster, replicas deployed up front."""

    name: str
    policy: Policy
    cluster: ClusterSpec
    initial: dict[str, int] | None = None
    note: str = ""
    prewarm: bool = False  # Quart's cache management (sim/cache_planner.py) after each tick


def static_counts(
    pipeline: SimPipeline, cluster: ClusterSpec, arrivals: np.ndarray
) -> dict[str, int]:
    """Peak provisioning per stage (see the module docstring), within the stage's bounds."""
    slowest = min((s.gpu.speed for s in cluster.servers), default=1.0)
    rate = peak_rate(arrivals)
    raw = peak_replicas(
        {s.name: rate for s in pipeline.stages},
        {s.name: s.service_s / (slowest if s.gpu_memory_gib > 0 else 1.0) for s in pipeline.stages},
        STATIC_TARGET_UTILISATION,
        {s.name: s.max_concurrency for s in pipeline.stages},
    )
    return {s.name: max(s.min_replicas, min(s.max_replicas, raw[s.name])) for s in pipeline.stages}


def policy_setup(
    name: str,
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    arrivals: np.ndarray,
    cfg: ControllerConfig,
) -> PolicySetup:
    if name == "quart":
        return PolicySetup(name, _quart(cfg), cluster, prewarm=True)
    if name == "quart-no-smoother":
        pol = _quart(cfg.model_copy(update={"smoother": False}))
        return PolicySetup(name, pol, cluster, prewarm=True)
    if name == "quart-corrector":  # neither smoother nor compensator
        pol = registry.make_policy("quart-corrector", cfg)
        return PolicySetup(name, pol, cluster, prewarm=True)
    if name == "quart-no-compensator":
        pol = _quart(cfg.model_copy(update={"compensator": False}))
        return PolicySetup(name, pol, cluster, prewarm=True)
    if name == "quart-no-prewarm":
        return PolicySetup(name, _quart(cfg), cluster)
    if name == "quart-no-cache":
        d = cluster.delays
        delays = NoForkDelays(**{f.name: getattr(d, f.name) for f in fields(d)})
        note = "quart-no-cache: host-memory hits pay the cold tier (starts shown as cold)"
        return PolicySetup(name, _quart(cfg), replace(cluster, delays=delays), note=note)
    if name == "static":
        counts = static_counts(pipeline, cluster, arrivals)
        note = (
            f"static: peak 1-s rate {peak_rate(arrivals):.0f}/s at "
            f"{STATIC_TARGET_UTILISATION:.0%} utilisation -> {sum(counts.values())} replicas "
            f"({min(counts.values())}-{max(counts.values())} per stage)"
        )
        return PolicySetup(name, make_policy("static", replicas=counts), cluster, counts, note)
    if name in BASELINES:
        return PolicySetup(name, make_policy(name), cluster)
    raise SpecError(f"unknown policy {name!r}; valid policies: {', '.join(policy_names())}")


def make_placer(name: str, pipeline: SimPipeline) -> Placer:
    if name == "first-fit":
        return FirstFitPlacer()
    if name == "cache-first":
        return CacheFirstPlacer()
    if name not in PLACERS:
        raise SpecError(f"unknown placer {name!r}; valid placers: {', '.join(placement_names())}")
    return ControlPlacer(get_placer(name), pipeline)


def parse_list(text: str | Sequence[str], valid: Sequence[str], what: str) -> list[str]:
    """A comma list (or a sequence) of names, each checked against ``valid``."""
    items = [x.strip() for x in (text.split(",") if isinstance(text, str) else text)]
    items = [x for x in items if x]
    bad = [x for x in items if x not in valid]
    if bad or not items:
        raise SpecError(f"unknown {what} {', '.join(map(repr, bad)) or '(none given)'}; "
                        f"valid {what}: {', '.join(valid)}")  # fmt: skip
    if len(set(items)) != len(items):
        raise SpecError(f"{what} listed twice in {','.join(items)}")
    return items


# -- tables ---------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Row:
    """One line of a comparison: its column values and the run behind it."""

    name: str
    values: dict[str, object]
    result: SimResult = field(repr=False)


@dataclass(frozen=True, eq=False)
class Comparison:
    """Rows under a title, with notes; ``text``/``csv``/``json`` are deterministic."""

    title: str
    columns: tuple[tuple[str, str], ...]  # (name, format spec)
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    def cells(self) -> list[list[str]]:
        return [[fmt.format(r.values[c]) for c, fmt in self.columns] for r in self.rows]

    def text(self) -> str:
        head = [c for c, _ in self.columns]
        body = self.cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
        lines = [self.title, "  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in body]
        return "\n".join([*lines, *(f"note: {n}" for n in self.notes)]) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([c for c, _ in self.columns])
        w.writerows([[r.values[c] for c, _ in self.columns] for r in self.rows])
        return buf.getvalue()

    def json(self) -> str:
        data = {
            "title": self.title,
            "notes": list(self.notes),
            "rows": [{c: r.values[c] for c, _ in self.columns} for r in self.rows],
        }
        return json.dumps(data, indent=2, default=float, allow_nan=True) + "\n"

    @property
    def results(self) -> list[SimResult]:
        return [r.result for r in self.rows]


POLICY_COLUMNS = (
    ("policy", "{}"), ("requests", "{:d}"), ("completed", "{:d}"), ("rejected", "{:d}"),
    ("p50_ms", "{:.1f}"), ("p99_ms", "{:.1f}"), ("slo_attain_pct", "{:.2f}"),
    ("gpu_seconds", "{:.0f}"), ("scale_ups", "{:d}"), ("scale_downs", "{:d}"),
    ("refused", "{:d}"), ("starts", "{}"),
)  # fmt: skip
PLACEMENT_COLUMNS = (
    ("placer", "{}"), ("starts", "{:d}"), ("fork_hit_pct", "{:.1f}"), ("start_p50_s", "{:.2f}"),
    ("start_p99_s", "{:.2f}"), ("p99_ms", "{:.1f}"), ("slo_attain_pct", "{:.2f}"),
    ("gpu_seconds", "{:.0f}"),
)  # fmt: skip


def policy_values(name: str, r: SimResult, no_cache: bool) -> dict[str, object]:
    v = summary_row(r)
    v["policy"] = name
    v["refused"] = sum(1 for e in r.scale_events if e.error)
    if no_cache:  # those fork starts were charged the cold tier: show them as such
        tiers = r.starts_by_tier
        cold = tiers.pop("fork", 0) + tiers.pop("prefork", 0) + tiers.pop("cold", 0)
        tiers["cold"] = cold
        v["starts"] = " ".join(f"{k}:{n}" for k, n in sorted(tiers.items()) if n) or "-"
    return v


def _placement_values(name: str, r: SimResult) -> dict[str, object]:
    starts = [e for e in r.replica_events if e.kind == "start" and e.tier is not None]
    weighted = [e for e in starts if e.tier is not StartTier.NONE]
    hits = sum(1 for e in weighted if e.tier in (StartTier.FORK, StartTier.PREFORK))
    secs = np.array([e.seconds for e in starts])
    p50, p99 = np.percentile(secs, [50, 99]) if secs.size else (math.nan, math.nan)
    base = summary_row(r)
    return {
        "placer": name,
        "starts": len(starts),
        "fork_hit_pct": 100.0 * hits / len(weighted) if weighted else math.nan,
        "start_p50_s": float(p50),
        "start_p99_s": float(p99),
        "p99_ms": base["p99_ms"],
        "slo_attain_pct": base["slo_attain_pct"],
        "gpu_seconds": base["gpu_seconds"],
    }


# -- comparisons ----------------------------------------------------------------------------


def prepare_run(
    pipeline: SimPipeline, slo_ms: float | None, workload: Workload, duration_s: float | None
) -> tuple[SimPipeline, np.ndarray, str]:
    if slo_ms is not None:
        if not (slo_ms > 0 and math.isfinite(slo_ms)):
            raise SpecError(f"slo_ms ({slo_ms}) must be a finite number > 0")
        pipeline = replace(pipeline, slo_p99_s=slo_ms / 1000.0)
        slo_note = "given"
    else:
        slo_note = f"default: {pipeline.slo_p99_s / pipeline.total_service_s:.1f} x total service"
    arrivals = arrivals_for(workload, duration_s)
    span = float(arrivals[-1]) if arrivals.size else 0.0
    title = (
        f"pipeline {pipeline.name} ({pipeline.num_stages} stages, total service "
        f"{pipeline.total_service_s * 1000:.1f} ms) | workload {workload} "
        f"({arrivals.size} requests over {span:.0f} s, mean {arrivals.size / max(span, 1e-9):.1f}"
        f"/s) | SLO p99 {pipeline.slo_p99_s * 1000:.0f} ms ({slo_note})"
    )
    return pipeline, arrivals, title


def run_one(
    setup: PolicySetup, pipeline: SimPipeline, arrivals: np.ndarray, placer: Placer, *,
    seed: int, cfg: ControllerConfig, index: int, runs: int, progress: ProgressFn | None,
) -> SimResult:  # fmt: skip
    def tick(_t: float, done: int, total: int) -> None:
        assert progress is not None
        progress(ProgressEvent(index, runs, setup.name, done, total))

    with _quiet_loop():
        return simulate(
            pipeline,
            setup.cluster,
            setup.policy,
            arrivals,
            seed=seed,
            controller=cfg,
            placer=placer,
            initial_replicas=setup.initial,
            progress=tick if progress is not None else None,
            cache_planning=CachePlanConfig() if setup.prewarm else None,
        )


@contextlib.contextmanager
def _quiet_loop() -> Iterator[None]:
    # ControlLoop warns once per refused action; a simulated hour can refuse thousands
    # (a full server). They are counted in the "refused" column instead of flooding stderr.
    log = logging.getLogger("quartfaas.control.loop")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)


def compare_policies(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    workload: Workload,
    policies: Sequence[str],
    *,
    seed: int = 0,
    duration_s: float | None = None,
    slo_ms: float | None = None,
    placement: str = "quart",
    controller: ControllerConfig | None = None,
    progress: ProgressFn | None = None,
    max_visits: int = MAX_VISITS,
) -> Comparison:
    """One row per policy (p50/p99, SLO attainment, GPU-seconds, scale events, start tiers)."""
    names = parse_list(policies, policy_names(), "policies")
    make_placer(placement, pipeline)  # name check before any work
    cfg = controller or ControllerConfig.model_validate({})
    Estimate(
        expected_requests(workload, duration_s),
        pipeline.num_stages,
        len(names),
        int((duration_s or 0) / cfg.interval_s),
    ).check(max_visits, f"comparing {len(names)} policies")
    check_fits(pipeline, cluster, placement, sum(s.min_replicas for s in pipeline.stages))
    pipeline, arrivals, title = prepare_run(pipeline, slo_ms, workload, duration_s)
    rows, notes = [], []
    for i, name in enumerate(names):
        setup = policy_setup(name, pipeline, cluster, arrivals, cfg)
        if setup.note:
            notes.append(setup.note)
        placer = make_placer(placement, pipeline)  # fresh: placers may keep state
        r = run_one(setup, pipeline, arrivals, placer, seed=seed, cfg=cfg, index=i,
                 runs=len(names), progress=progress)  # fmt: skip
        r = replace(r, policy=name)  # plots label lines by the name the user typed
        rows.append(Row(name, policy_values(name, r, name == "quart-no-cache"), r))
    title += f"\ncluster {cluster.describe()} | placer {placement} | seed {seed}"
    return Comparison(title, POLICY_COLUMNS, tuple(rows), tuple(notes))


def compare_placements(
    pipeline: SimPipeline,
    cluster: ClusterSpec,
    workload: Workload,
    placers: Sequence[str],
    *,
    policy: str = "quart",
    seed: int = 0,
    duration_s: float | None = None,
    slo_ms: float | None = None,
    controller: ControllerConfig | None = None,
    progress: ProgressFn | None = None,
    max_visits: int = MAX_VISITS,
) -> Comparison:
    """One row per placer under one policy: start-tier hit ratio, start seconds, e2e tail."""
    names = parse_list(placers, placement_names(), "placers")
    cfg = controller or ControllerConfig.model_validate({})
    Estimate(
        expected_requests(workload, duration_s),
        pipeline.num_stages,
        len(names),
        int((duration_s or 0) / cfg.interval_s),
    ).check(max_visits, f"comparing {len(names)} placers")
    for name in names:
        check_fits(pipeline, cluster, name, sum(s.min_replicas for s in pipeline.stages))
    pipeline, arrivals, title = prepare_run(pipeline, slo_ms, workload, duration_s)
    rows = []
    for i, name in enumerate(names):
        setup = policy_setup(policy, pipeline, cluster, arrivals, cfg)
        setup = replace(setup, name=name)
        r = run_one(setup, pipeline, arrivals, make_placer(name, pipeline), seed=seed, cfg=cfg,
                 index=i, runs=len(names), progress=progress)  # fmt: skip
        r = replace(r, policy=name)  # plots label lines by placer
        rows.append(Row(name, _placement_values(name, r), r))
    title += f"\ncluster {cluster.describe()} | policy {policy} | seed {seed}"
    notes = ("fork_hit_pct: starts served from a host-memory copy of the weights",)
    return Comparison(title, PLACEMENT_COLUMNS, tuple(rows), notes)

"""How each named policy and placer of an experiment is built (the choices are stated in
``sim/experiments/__init__.py``), and the check that a cluster can hold a pipeline."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from quartfaas.control import registry
from quartfaas.control.backend import StartTier
from quartfaas.control.baselines import BASELINES, make_policy, peak_replicas
from quartfaas.control.config import ControllerConfig
from quartfaas.control.placement import PLACERS, get_placer
from quartfaas.control.policy import Policy
from quartfaas.errors import SimulationError, SpecError
from quartfaas.sim.choices import INFRAS, policy_names
from quartfaas.sim.cluster import ClusterSpec, GpuSharing, GpuType, StartDelays
from quartfaas.sim.experiments.workloads import peak_rate
from quartfaas.sim.gpu_accounting import static_peak_fit
from quartfaas.sim.pipelines import SimPipeline
from quartfaas.sim.placement import (
    CacheFirstPlacer,
    ControlPlacer,
    FirstFitPlacer,
    LeastAllocatedPlacer,
    Placer,
    RayDefaultPlacer,
)

# sim/placement.py's own: model anti-affinity (first two), platform defaults (last two)
SIM_PLACERS = ("first-fit", "cache-first", "least-allocated", "ray-default")


STATIC_TARGET_UTILISATION = 0.7


def placement_names() -> list[str]:
    return [*sorted(PLACERS), *SIM_PLACERS]


def check_fits(pipeline: SimPipeline, cluster: ClusterSpec, placement: str, initial: int) -> None:
    """Refuse, with the numbers, a cluster that cannot hold ``initial`` replicas in total."""
    need_mem = sum(s.gpu_memory_gib * s.min_replicas for s in pipeline.stages)
    have_mem = sum(s.gpu.memory_gib * s.gpus for s in cluster.servers)
    biggest = max((s.gpu_memory_gib for s in pipeline.stages), default=0.0)
    largest_gpu = max((s.gpu.memory_gib for s in cluster.servers), default=0.0)
    gpu_stages = sum(s.min_replicas for s in pipeline.stages if s.gpu_memory_gib > 0)
    exclusive = cluster.sharing is GpuSharing.EXCLUSIVE
    one_per_gpu = exclusive or (placement in SIM_PLACERS and pipeline.anti_affinity == "model")
    problems = []
    if need_mem > have_mem:
        problems.append(f"{need_mem:.1f} GiB of GPU memory > the cluster's {have_mem:.1f} GiB")
    if biggest > largest_gpu:
        problems.append(f"a {biggest:.1f} GiB replica > the largest GPU ({largest_gpu:.1f} GiB)")
    if one_per_gpu and gpu_stages > cluster.total_gpus:
        problems.append(
            f"{gpu_stages} replicas need one GPU each ("
            + ("exclusive GPUs" if exclusive else f"model-level anti-affinity, placer {placement}")
            + f") > {cluster.total_gpus} GPUs"
        )
    if problems:
        raise SimulationError(
            f"cluster {cluster.describe()} cannot hold pipeline {pipeline.name!r} at its "
            f"minimum replicas ({initial} in total): " + "; ".join(problems)
        )


def _quart(cfg: ControllerConfig) -> Policy:
    return registry.make_policy("quart", cfg)


@dataclass(frozen=True, slots=True)
class NoForkDelays(StartDelays):
    """``inner``'s delays where a host-memory hit costs what a miss does (no parameter cache)."""

    inner: StartDelays = field(default_factory=StartDelays)

    def seconds(
        self, tier: StartTier, size_gib: float, gpu: GpuType | None, warmup_s: float
    ) -> float:
        if tier in (StartTier.FORK, StartTier.PREFORK):
            tier = StartTier.COLD
        return self.inner.seconds(tier, size_gib, gpu, warmup_s)


@dataclass(frozen=True)
class PolicySetup:
    """How one named policy is run: the policy, the cluster, replicas deployed up front."""

    name: str
    policy: Policy
    cluster: ClusterSpec
    initial: dict[str, int] | None = None
    note: str = ""
    prewarm: bool = False  # Quart's cache management (sim/cache_planner.py) after each tick
    placer: str = "quart"  # the placer it runs on (infrastructure, see INFRAS)
    fork: bool = True  # host-memory hits start by fork (False: they pay the cold tier)
    infra: str = "cache"


def default_infra(base: str) -> str:
    """The platform a policy comes with: Quart its cache, Ray Ray's, the rest Kubernetes."""
    if base.startswith("quart"):
        return "cache"
    return "ray" if base == "ray" else "k8s"


def split_policy(name: str) -> tuple[str, str | None]:
    """``hpa+cache`` -> (``hpa``, ``cache``); ``hpa`` -> (``hpa``, None)."""
    base, plus, infra = name.partition("+")
    return base, (infra if plus else None)


def parse_policies(text: str | Sequence[str]) -> list[str]:
    """A comma list of ``POLICY[+INFRA]`` names, each part checked."""
    items = parse_list(text, [x.strip() for x in (text.split(",") if isinstance(text, str)
                                                  else text)], "policies")  # fmt: skip
    for item in items:
        base, infra = split_policy(item)
        if base not in policy_names():
            raise SpecError(
                f"unknown policy {base!r}; valid policies: "
                f"{', '.join(policy_names())} (each may take +{'|+'.join(INFRAS)})"
            )
        if infra is not None and infra not in INFRAS:
            raise SpecError(f"unknown infrastructure {infra!r} in {item!r}; valid: "
                            + "; ".join(f"{k} ({v.about})" for k, v in INFRAS.items()))  # fmt: skip
    return items


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
    """``POLICY[+INFRA]``: the policy, on its platform's infrastructure unless INFRA says."""
    base, infra = split_policy(name)
    setup = _base_setup(base, pipeline, cluster, arrivals, cfg)
    if infra is None:
        kind = default_infra(base)
        if kind == "cache":  # Quart and its ablations, as each one defines them
            return replace(setup, name=name, infra=kind)
    else:
        kind = infra
    inf = INFRAS[kind]
    delays = cluster.delays if inf.fork else NoForkDelays(inner=cluster.delays)
    return replace(
        setup,
        name=name,
        cluster=replace(setup.cluster, delays=delays),
        placer=inf.placer,
        fork=inf.fork,
        prewarm=inf.prewarm,
        infra=kind,
    )


def _base_setup(
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
        delays = NoForkDelays(inner=cluster.delays)
        note = "quart-no-cache: host-memory hits pay the cold tier (starts shown as cold)"
        return PolicySetup(name, _quart(cfg), replace(cluster, delays=delays), note=note,
                           fork=False)  # fmt: skip
    if name == "static":
        counts = static_counts(pipeline, cluster, arrivals)
        fit = static_peak_fit(pipeline, cluster, counts)
        note = (
            f"static: peak 1-s rate {peak_rate(arrivals):.0f}/s at "
            f"{STATIC_TARGET_UTILISATION:.0%} utilisation -> {sum(counts.values())} replicas "
            f"({min(counts.values())}-{max(counts.values())} per stage); "
            + ("fits: " if fit.fits else "DOES NOT FIT, the rest are refused: ")
            + fit.reason
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
    if name == "least-allocated":
        return LeastAllocatedPlacer()
    if name == "ray-default":
        return RayDefaultPlacer()
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

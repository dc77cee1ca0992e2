"""Experiments on the simulator: policy and placement comparisons, ablations, CV x load sweeps.

Neighbours: ``sim/run.simulate`` runs one policy; ``sim/report`` gives per-run rows and
plots; ``workload/`` builds arrivals; ``control/baselines`` and ``control/corrector`` are
the policies; ``control/placement`` the placers; ``cli/simulate.py`` is the CLI on top.

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
- **infrastructure** is a factor apart from the policy (``choices.INFRAS``): a policy name
  takes ``+cache`` (Quart's cache-aware placer, the fork tier and the cache pre-warm),
  ``+fork`` (Kubernetes placement with a fork tier), ``+k8s`` (Kubernetes least-allocated
  placement, every start loads its weights) or ``+ray`` (Ray's default scheduling). By
  default each policy runs on its platform's: Quart on ``cache``, ``ray`` on ``ray``, the
  other baselines on ``k8s``; ``placement=`` overrides the placer of all.
- **GPUs are exclusive** (``ClusterSpec.sharing``): a start that finds no free GPU is
  refused and counted in the ``refused`` column.
- **size**: a comparison is refused before it starts when requests x stages x runs exceeds
  ``max_visits`` (records cost ~28 bytes a visit; run time by the measured ``MEASURED_SPEED``).
- Every other policy starts from each stage's ``min_replicas``.

Runs are deterministic: same arguments and seed, same rows (``Comparison.text`` is
byte-identical; wall-clock figures are never in a table).

Modules: ``workloads`` (the workload and the size check), ``setups`` (each named policy and
placer, the fit check), ``tables`` (rows and their text/CSV/JSON), ``compare`` (the runs).
This package re-exports their public names; ``sim/sweep.py`` builds on the same pieces.
"""

from quartfaas.sim.choices import ABLATIONS, INFRAS, MAX_VISITS, POLICIES, Infra, policy_names
from quartfaas.sim.experiments.compare import (
    ProgressEvent,
    ProgressFn,
    compare_placements,
    compare_policies,
    prepare_run,
    run_one,
)
from quartfaas.sim.experiments.setups import (
    SIM_PLACERS,
    STATIC_TARGET_UTILISATION,
    NoForkDelays,
    PolicySetup,
    check_fits,
    default_infra,
    make_placer,
    parse_list,
    parse_policies,
    placement_names,
    policy_setup,
    static_counts,
)
from quartfaas.sim.experiments.tables import (
    PLACEMENT_COLUMNS,
    POLICY_COLUMNS,
    Comparison,
    Row,
    policy_values,
)
from quartfaas.sim.experiments.workloads import (
    MEASURED_SPEED,
    STATIC_PEAK_WINDOW_S,
    Estimate,
    arrivals_for,
    expected_requests,
    make_workload,
    peak_rate,
)

__all__ = [
    "ABLATIONS",
    "INFRAS",
    "MAX_VISITS",
    "MEASURED_SPEED",
    "PLACEMENT_COLUMNS",
    "POLICIES",
    "POLICY_COLUMNS",
    "SIM_PLACERS",
    "STATIC_PEAK_WINDOW_S",
    "STATIC_TARGET_UTILISATION",
    "Comparison",
    "Estimate",
    "Infra",
    "NoForkDelays",
    "PolicySetup",
    "ProgressEvent",
    "ProgressFn",
    "Row",
    "arrivals_for",
    "check_fits",
    "compare_placements",
    "compare_policies",
    "default_infra",
    "expected_requests",
    "make_placer",
    "make_workload",
    "parse_list",
    "parse_policies",
    "peak_rate",
    "placement_names",
    "policy_names",
    "policy_setup",
    "policy_values",
    "prepare_run",
    "run_one",
    "static_counts",
]  # fmt: skip

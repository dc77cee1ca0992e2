"""Infrastructure is a factor apart from the policy (issue #11 item 2)."""

from __future__ import annotations

import numpy as np
import pytest

from quartfaas.control.config import ControllerConfig
from quartfaas.errors import SpecError
from quartfaas.sim import experiments as ex
from quartfaas.sim.cluster import cluster_preset
from quartfaas.sim.pipelines import pipeline_preset
from quartfaas.sim.placement import (
    ClusterView,
    GpuView,
    LeastAllocatedPlacer,
    PlaceRequest,
    RayDefaultPlacer,
)

PIPE = pipeline_preset("whisper-time-3")
SMALL = cluster_preset("small")
CFG = ControllerConfig.model_validate({})


@pytest.mark.parametrize(
    ("name", "placer", "fork", "prewarm"),
    [
        ("quart", "quart", True, True),
        ("knative", "least-allocated", False, False),
        ("hpa", "least-allocated", False, False),
        ("ray", "ray-default", False, False),
        ("hpa+cache", "quart", True, True),
        ("quart+k8s", "least-allocated", False, False),
        ("knative+fork", "least-allocated", True, False),
    ],
)
def test_each_policy_runs_on_its_platform_unless_told(
    name: str, placer: str, fork: bool, prewarm: bool
) -> None:
    s = ex.policy_setup(name, PIPE, SMALL, np.arange(10.0), CFG)
    assert (s.placer, s.fork, s.prewarm) == (placer, fork, prewarm)
    assert isinstance(s.cluster.delays, ex.NoForkDelays) == (not fork)


def test_bad_infrastructure_is_refused_with_the_valid_ones() -> None:
    with pytest.raises(SpecError, match=r"cache .*k8s"):
        ex.parse_policies("hpa+gpu")


def test_cache_changes_how_a_baseline_starts() -> None:
    w = ex.make_workload("mmpp:rate=40,cv=4", seed=1)
    t = ex.compare_policies(PIPE, SMALL, w, "knative,knative+cache", seed=1, duration_s=60)
    assert "fork" not in str(t.rows[0].values["starts"])  # no fork tier: every start is cold
    assert "fork" in str(t.rows[1].values["starts"])
    assert "knative: least-allocated, no fork" in t.title
    assert "knative+cache: quart, fork, pre-warm" in t.title


def _view(occupied: dict[int, int], gpus: int = 4, servers: int = 3) -> ClusterView:
    g = SMALL.servers[0].gpu
    views = tuple(
        GpuView(f"s{j}", j, i, g, 32.0 if i >= occupied.get(j, 0) else 0.0, frozenset(),
                64.0, False, int(i < occupied.get(j, 0)))
        for j in range(servers) for i in range(gpus)
    )  # fmt: skip
    return ClusterView(views, (), (), True)


def test_least_allocated_takes_the_emptiest_server_and_ray_packs_to_half() -> None:
    req = PlaceRequest("s", "", 1.0, 1.0, exclusive=True)
    v = _view({0: 1, 1: 0, 2: 3})
    chosen = LeastAllocatedPlacer().place(req, v)
    assert chosen is not None and chosen.server_index == 1
    ray = RayDefaultPlacer().place(req, v)
    assert ray is not None and ray.server_index == 0  # 2 of 4 used after: still <= 50%
    full = RayDefaultPlacer().place(req, _view({0: 2, 1: 3, 2: 2}))
    assert full is not None and full.server_index == 0  # none stays <= 50%: least used

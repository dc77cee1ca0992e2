"""Quart as a Ray Serve application-level autoscaling policy, on a real Serve pipeline.

A 3-deployment Serve application (one per stage of a synthetic pipeline; the middle
stage sleeps ~60 ms a request with one slot per replica, the others do no work) on a
2-node cluster. Under ~25 req/s the policy (``QuartServePolicy``: Quart's corrector on
Serve's metrics and the replicas' own) scales the middle deployment up and leaves the
others at one replica; when the load stops it scales back down. Its decisions reach a
``DecisionLog`` actor with their reasons.
"""

from __future__ import annotations

import contextlib
import time

import pytest

ray = pytest.importorskip("ray")

from helpers import synthetic_spec  # noqa: E402
from ray_helpers import MIB, LocalCluster, local_cluster  # noqa: E402

# A last-resort guard only: the waits below are scaled to the host's measured speed.
pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

@pytest.fixture(scope="module")
def serve_cluster():
    from ray import serve

    head = {"num_cpus": 2, "object_store_memory": 150 * MIB}
    with local_cluster(head, [{"num_cpus": 4, "object_store_memory": 150 * MIB}]) as c:
        serve.start(http_options={"location": "NoServer"})
        try:
            yield c
        finally:
            with contextlib.suppress(Exception):
                serve.shutdown()


def replicas(app: str) -> dict[str, int]:
    from ray import serve

    deps = serve.status().applications[app].deployments
    return {name: d.replica_states.get("RUNNING", 0) for name, d in deps.items()}


def test_quart_policy_scales_the_bottleneck_deployment(serve_cluster: LocalCluster) -> None:
    import numpy as np

    from quartfaas.backends.ray.serve_app import deploy_pipeline
    from quartfaas.backends.ray.serve_policy import DecisionLog
    from quartfaas.dataplane import framing

    dl = serve_cluster.deadline  # deadlines scaled to the host's measured speed
    spec = synthetic_spec(
        3, name="sq", stage_overrides={1: {"synthetic": {"work": "sleep", "mean_ms": 60.0,
                                                          "scv": 0.0},
                                           "max_concurrency": 1}},
        slo={"p99_ms": 400, "timeout_budget_s": dl(30)},
    )  # fmt: skip
    spec = spec.model_copy(
        update={"stages": tuple(s.model_copy(update={"cpu": 0.1, "max_concurrency": 1})
                                for s in spec.stages)}
    )  # fmt: skip
    log = ray.remote(DecisionLog).options(name="quart-decisions", num_cpus=0).remote()
    handle = deploy_pipeline(
        spec,
        timeout_s=dl(120),
        quart_policy={
            # equal budgets: a zero-work stage's proportional share of the SLO would be a
            # few ms, which scheduling jitter on a busy 2-core machine alone exceeds
            "controller": {"down_cooldown_s": 1.0, "downscale_delay_s": 2.0,
                           "up_cooldown_s": 1.0, "stage_budget": "equal"},
            "decision_log": "quart-decisions",
        },
    )  # fmt: skip
    names = [s.name for s in spec.stages]
    assert replicas(spec.name) == dict.fromkeys(names, 1)

    ids = np.arange(1, 9, dtype=np.int64)[None, :]
    frame = framing.encode_numpy({"input_ids": ids, "attention_mask": np.ones_like(ids)})
    # ~25 req/s offered for up to 40 s (on a quiet host), until the middle deployment grew
    # Sends are scheduled (every 40 ms from the start), not paced by sleeping after each:
    # on a starved host the sender catches up on missed slots, so the offered rate stays
    # ~25 req/s instead of falling below the ~16.7 req/s one middle replica serves.
    pending = []
    peak = dict.fromkeys(names, 1)
    period = 0.04
    start = time.monotonic()
    end = start + dl(40)
    next_check = 25
    while time.monotonic() < end:
        due = int((time.monotonic() - start) / period) + 1
        while len(pending) < due:
            pending.append(handle.remote(frame))
        if len(pending) >= next_check:
            next_check = len(pending) + 25
            now = replicas(spec.name)
            peak = {n: max(peak[n], now.get(n, 0)) for n in names}
            if peak[names[1]] >= 2:
                break
        time.sleep(max(0.0, start + len(pending) * period - time.monotonic()))
    outs = [r.result(timeout_s=dl(60)) for r in pending]
    # synthetic stages pass the frame through: every accepted request came back whole
    assert all(o == frame for o in outs)
    assert peak[names[1]] >= 2, peak
    assert peak[names[0]] == 1 and peak[names[2]] == 1, peak

    # load gone: back to one replica of the middle stage
    deadline = time.monotonic() + dl(60)
    while replicas(spec.name)[names[1]] > 1:
        assert time.monotonic() < deadline, replicas(spec.name)
        time.sleep(0.5)

    decisions = ray.get(log.all.remote())
    assert decisions and all(d["policy"] == "quart-corrector" for d in decisions)
    ups = [s for d in decisions for s in d["stages"]
           if s["stage"] == names[1] and s["action"] == "scale-up"]  # fmt: skip
    assert ups and "λ=" in ups[0]["reason"], ups[:1]

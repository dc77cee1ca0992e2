"""A quartfaas pipeline as a Ray Serve application: one deployment per stage.

Each ``StageDeployment`` replica loads its stage like a local worker does
(``dataplane/worker.build_runner``: the safetensors file, mmap, one warm-up forward) and
answers tensor frames (bytes in, bytes out; ``dataplane/framing.py``). Stage ``i`` calls
stage ``i + 1`` through a deployment handle, so a request to the first deployment returns
the last stage's frame. This is how a Ray Serve user would deploy the pipeline; it is
used by the Quart autoscaling policy's test (``serve_policy.py``) and as the comparison
in ``benchmarks/ray_backend.py``.

``record_autoscaling_stats`` reports, per replica and over the last ``STATS_WINDOW_S``
seconds, what Quart's corrector needs and Serve does not measure: the arrival rate,
the mean and squared coefficient of variation of the service time, and the p99 of the
time a request spends in this stage (waiting for a slot in the replica + service).

``build_app(args)`` is the import path for a Serve config file
(``quartfaas.backends.ray.serve_app:build_app``) with ``args = {"spec_json": ...}`` or
``{"spec_path": ...}``; ``autoscaling`` in args overrides each deployment's
``autoscaling_config``.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from pathlib import Path
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from quartfaas.spec import PipelineSpec, load_spec

STATS_WINDOW_S = 10.0


def window_stats(
    samples: deque[tuple[float, float, float]],
    arrivals: deque[float],
    now: float,
    window_s: float,
) -> dict[str, float]:
    """The arrival rate of ``arrivals`` (times a request came in, in order), and the service
    mean/SCV and stage-time p99 of ``samples`` (``(done, service_s, stage_s)``, in the order
    they finished), over the last ``window_s`` seconds; old entries are dropped.

    Arrivals are counted when they come, services when they finish: a sample kept by its
    arrival time left the window before it finished once the queue was longer than the
    window, so a stage with a backlog (on a busy host) reported no service time and a
    fraction of its arrival rate."""
    cut = now - window_s
    while samples and samples[0][0] < cut:
        samples.popleft()
    while arrivals and arrivals[0] < cut:
        arrivals.popleft()
    rate = len(arrivals) / window_s
    n = len(samples)
    if n == 0:
        return {"quart_arrival_rate": rate}
    svc = [s for _, s, _ in samples]
    mean = sum(svc) / n
    var = sum((s - mean) ** 2 for s in svc) / n
    stage = sorted(t for _, _, t in samples)
    p99 = stage[min(n - 1, int(0.99 * n))]
    return {
        "quart_arrival_rate": rate,
        "quart_service_mean_s": mean,
        "quart_service_scv": var / mean**2 if mean > 0 else 0.0,
        "quart_latency_p99_s": p99,
        "quart_samples": float(n),
    }


class StageDeployment:
    """One stage of the pipeline (wrapped with ``serve.deployment`` in ``build_app``)."""

    def __init__(self, spec_json: str, index: int, next_stage: DeploymentHandle | None) -> None:
        from quartfaas.dataplane.worker import build_runner

        self.spec = PipelineSpec.model_validate_json(spec_json)
        self.index = index
        self.next = next_stage
        self.runner = build_runner(self.spec, index)
        self.slots = asyncio.Semaphore(self.spec.stages[index].max_concurrency)
        self.samples: deque[tuple[float, float, float]] = deque()
        self.arrivals: deque[float] = deque()

    async def __call__(self, frame: bytes) -> bytes:
        t0 = time.monotonic()
        self.arrivals.append(t0)
        async with self.slots:
            out, service_s = await self.runner(bytes(frame))
        done = time.monotonic()
        self.samples.append((done, service_s, done - t0))
        if self.next is not None:
            out = await self.next.remote(out)
        return out

    def record_autoscaling_stats(self) -> dict[str, float]:
        return window_stats(self.samples, self.arrivals, time.monotonic(), STATS_WINDOW_S)


def autoscaling_config(spec: PipelineSpec, index: int, **override: Any) -> dict[str, Any]:
    """A deployment's Serve autoscaling bounds from the stage spec; no Serve delays (the
    Quart policy has its own cooldowns and downscale delay)."""
    st = spec.stages[index]
    cfg: dict[str, Any] = {
        "min_replicas": st.min_replicas,
        "max_replicas": st.max_replicas,
        "initial_replicas": st.min_replicas,
        "upscale_delay_s": 0.0,
        "downscale_delay_s": 0.0,
        "look_back_period_s": 2.0,
        # Replicas push their metrics every ``metrics_interval_s`` (Serve's default 10 s)
        # and the policy reads the points of the last ``look_back_period_s``. With the
        # default, on a busy host (two busy loops on 2 cores) the policy never saw the
        # middle stage's service time in 494 decisions, so it never planned that stage
        # (tests/integration/ray/test_serve_policy.py). Deprecated in Serve 2.60 in favour
        # of RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S, which must be set before
        # the replicas start; this works per deployment.
        "metrics_interval_s": 0.5,
    }
    cfg.update(override)
    return cfg


def build_app(args: dict[str, Any]) -> Any:
    """The Serve application of a pipeline spec (first stage is the ingress)."""
    if "spec_json" in args:
        spec = PipelineSpec.model_validate_json(args["spec_json"])
    else:
        spec = load_spec(Path(args["spec_path"]))
    spec_json = spec.model_dump_json()
    override = dict(args.get("autoscaling") or {})
    actor_options = dict(args.get("ray_actor_options") or {})
    handle: Any = None
    for i in reversed(range(spec.num_stages)):
        st = spec.stages[i]
        dep: Any = serve.deployment(
            StageDeployment,
            name=st.name,
            # A stage that calls the next one holds its request while downstream works;
            # its own compute is limited by ``slots``, so Serve must not cap it lower
            # (else upstream queues grow at handles because downstream is slow).
            max_ongoing_requests=(
                max(2, st.max_concurrency * 2) if handle is None else 64 + st.max_concurrency
            ),
            autoscaling_config=autoscaling_config(spec, i, **override),
            ray_actor_options={"num_cpus": st.cpu, **actor_options},
        )
        handle = dep.bind(spec_json, i, handle)
    return handle


POLICY_PATH = "quartfaas.backends.ray.serve_policy:QuartServePolicy"


def deploy_pipeline(
    spec: PipelineSpec,
    *,
    app_name: str | None = None,
    quart_policy: dict[str, Any] | None = None,
    autoscaling: dict[str, Any] | None = None,
    ray_actor_options: dict[str, Any] | None = None,
    timeout_s: float = 120.0,
) -> DeploymentHandle:
    """Deploy ``spec`` as a Serve application from a config (the way an app-level policy
    is set), wait until it runs, and return the ingress handle.

    ``quart_policy``: extra ``QuartServePolicy`` kwargs; ``None`` keeps Serve's default
    per-deployment policy. Serve must be started (``serve.start``).
    """
    from ray.serve.context import _get_global_client
    from ray.serve.schema import ServeDeploySchema

    name = app_name or spec.name
    app: dict[str, Any] = {
        "name": name,
        "route_prefix": f"/{name}",
        "import_path": "quartfaas.backends.ray.serve_app:build_app",
        "args": {
            "spec_json": spec.model_dump_json(),
            "autoscaling": autoscaling or {},
            "ray_actor_options": ray_actor_options or {},
        },
    }
    if quart_policy is not None:
        kwargs = {
            "stages": [s.name for s in spec.stages],
            "slo_p99_ms": spec.slo.p99_ms,
            "max_concurrency": {s.name: s.max_concurrency for s in spec.stages},
            "pipeline": spec.name,
            **quart_policy,
        }
        app["autoscaling_policy"] = {"policy_function": POLICY_PATH, "policy_kwargs": kwargs}
    client = _get_global_client()
    if client is None:
        raise RuntimeError("Serve is not running: call serve.start() first")
    client.deploy_apps(ServeDeploySchema.model_validate({"applications": [app]}))
    deadline = time.monotonic() + timeout_s
    while True:
        status = serve.status().applications.get(name)
        if status is not None and status.status == "RUNNING":
            return serve.get_app_handle(name)
        if status is not None and status.status == "DEPLOY_FAILED":
            raise RuntimeError(f"Serve could not deploy {name}: {status.message}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{name} not running within {timeout_s:.0f} s: {status}")
        time.sleep(0.2)

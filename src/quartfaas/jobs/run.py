"""The main job: serve a pipeline with its controller, replay a workload, write a report.

``quartfaas run [SPEC] [--workload ...] [--policy quart|static|...]`` starts the embedded
runtime (gateway, stage workers, controller), replays the workload open-loop from a
separate process (so the load generator does not share the gateway's event loop or
interpreter), samples the stages' replicas and queues every half second, and writes a
report directory:

- ``summary.json``   latency percentiles, SLO attainment, errors, replica-seconds per
  stage, scale events, start tiers;
- ``requests.csv``   one row per request (schedule, send time, latency, status, timings);
- ``decisions.jsonl`` the controller's decisions with their reasons;
- ``timeline.csv``   replicas (ready/starting), queue length, in-flight per stage;
- ``latency.png``, ``replicas.png``, ``queues.png`` (``jobs/report.py``).

With no arguments it runs the bundled ``examples/demo.yaml`` on a 150 s slice of the Azure
``code`` trace rescaled to 8 req/s (bursts of ~48 req/s), in about two minutes.
"""

from __future__ import annotations

import asyncio
import csv
import json
import multiprocessing as mp
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from quartfaas.control.backend import ReplicaState
from quartfaas.errors import SpecError
from quartfaas.runtime import EmbeddedRuntime
from quartfaas.spec import PipelineSpec
from quartfaas.workload import Workload

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DEFAULT_SPEC = EXAMPLES / "demo.yaml"
# method=squeeze: the slice compressed to 8 req/s, as the README's measured demo figures were
# taken (the default for rate= is now thinning at the trace's own time scale).
DEFAULT_WORKLOAD = "trace:azure-code,start=520,end=670,rate=8,method=squeeze"
SAMPLE_EVERY_S = 0.5


@dataclass(frozen=True)
class RunConfig:
    spec: PipelineSpec
    workload: Workload
    out_dir: Path
    duration_s: float | None = None
    policy: str | None = None
    smoother: bool | None = None
    compensator: bool | None = None
    input_mode: Literal["text", "tokens"] = "text"
    request_timeout_s: float = 30.0
    progress: bool = True
    # (spec, decision_log) -> a runtime like EmbeddedRuntime (``async with``; gateway,
    # backend, loop, clock); None: EmbeddedRuntime. The Ray backend passes its own.
    runtime: Callable[[PipelineSpec, Path], Any] | None = None


def example_spec(name: str) -> Path:
    """A bundled example by name (``demo``, ``tiny``, ``minilm``, ...) or a path."""
    p = Path(name)
    if p.is_file():
        return p
    candidate = EXAMPLES / f"{name}.yaml"
    if candidate.is_file():
        return candidate
    names = sorted(x.stem for x in EXAMPLES.glob("*.yaml"))
    raise SpecError(f"spec {name!r} is neither a file nor a bundled example; examples: {names}")


def prepare_spec(cfg: RunConfig) -> PipelineSpec:
    ctl = cfg.spec.controller
    updates: dict[str, Any] = {"enabled": cfg.policy != "none"}
    if cfg.policy not in (None, "none"):
        updates["policy"] = cfg.policy
    if cfg.smoother is not None:
        updates["smoother"] = cfg.smoother
    if cfg.compensator is not None:
        updates["compensator"] = cfg.compensator
    return cfg.spec.model_copy(
        update={
            "gateway": cfg.spec.gateway.model_copy(update={"port": 0}),
            "controller": ctl.model_copy(update=updates),
        }
    )


def _load_process(job: dict[str, Any], out: Any) -> None:
    """Runs in a child process: the open-loop load generator."""
    from dataclasses import asdict

    from quartfaas.workload.loadgen import run_load

    res = run_load(**job)
    out.put(json.loads(json.dumps(asdict(res.summary), default=str)))


class Sampler:
    """Replicas, queues and in-flight per stage every ``SAMPLE_EVERY_S`` (timeline.csv)."""

    def __init__(self, rt: Any) -> None:  # EmbeddedRuntime or another backend's runtime
        self.rt = rt
        self.rows: list[dict[str, Any]] = []
        self.t0 = rt.clock.now()

    def sample(self) -> None:
        now = self.rt.clock.now()
        gauges = self.rt.gateway.gauges()
        decision = self.rt.loop.last_decision if self.rt.loop is not None else None
        for stage in self.rt.spec.stages:
            g = gauges[stage.name]
            reps = self.rt.backend.list_replicas(stage.name)
            target = decision.target(stage.name) if decision is not None else None
            self.rows.append({
                "t_s": round(now - self.t0, 3), "stage": stage.name, "ready": g.ready,
                "starting": sum(r.state is ReplicaState.STARTING for r in reps),
                "queue": g.queue_len, "inflight": g.inflight, "target": target,
                "cpu": next((r.cpu for r in reps if r.cpu is not None), stage.cpu),
            })  # fmt: skip

    async def run(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)


async def _run_async(cfg: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    spec = prepare_spec(cfg)
    trace = cfg.workload.trace(cfg.duration_s)
    from quartfaas.workload.loadgen import keepalive_for
    from quartfaas.workload.payloads import inputs_for

    max_words = max(1, spec.model.max_seq_len - 2)
    inputs = inputs_for(trace.prompt_tokens, len(trace.arrivals_s), mode=cfg.input_mode,
                        max_len=max_words)  # fmt: skip
    out = cfg.out_dir
    policy = spec.controller.policy if spec.controller.enabled else "none"
    log(
        f"{spec.name}: {len(trace.arrivals_s)} requests over {trace.duration_s:.0f} s "
        f"({cfg.workload}); policy {policy}"
    )
    t_start = time.time()
    make = cfg.runtime or (lambda s, log_path: EmbeddedRuntime(s, decision_log=log_path))
    async with make(spec, out / "decisions.jsonl") as rt:
        log(f"serving at {rt.url}; replaying the workload")
        sampler = Sampler(rt)
        task = asyncio.get_running_loop().create_task(sampler.run())
        ctx = mp.get_context("spawn")
        queue = ctx.Queue()
        job = {
            "url": f"{rt.url}/function/{spec.name}",
            "arrivals_s": [float(x) for x in trace.arrivals_s],
            "inputs": list(inputs),
            "slo_s": spec.slo.p99_ms / 1000.0,
            "csv_path": str(out / "requests.csv"),
            "timeout_s": cfg.request_timeout_s,
            "progress": cfg.progress,
            "keepalive_s": keepalive_for(spec.gateway.header_timeout_s),
        }
        proc = ctx.Process(target=_load_process, args=(job, queue))
        proc.start()
        summary = await asyncio.get_running_loop().run_in_executor(None, queue.get)
        await asyncio.get_running_loop().run_in_executor(None, proc.join)
        task.cancel()
        sampler.sample()
        tiers: dict[str, int] = {}
        reg = rt.gateway.metrics.registry
        for metric in reg.collect():
            if metric.name == "quartfaas_replica_start_seconds":
                for s in metric.samples:
                    if s.name.endswith("_count") and s.value:
                        tiers[s.labels["tier"]] = tiers.get(s.labels["tier"], 0) + int(s.value)
    rows = sampler.rows
    with open(out / "timeline.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    report = {
        "pipeline": spec.name,
        "policy": spec.controller.policy if spec.controller.enabled else "none",
        "smoother": spec.controller.smoother,
        "compensator": spec.controller.compensator,
        "workload": str(cfg.workload),
        "slo_p99_ms": spec.slo.p99_ms,
        "wall_s": round(time.time() - t_start, 1),
        "load": summary,
        "replica_seconds": replica_seconds(rows),
        "max_replicas": {
            s.name: max(r["ready"] for r in rows if r["stage"] == s.name) for s in spec.stages
        },
        "scale_events": scale_events(out / "decisions.jsonl"),
        "start_tiers": tiers,
    }
    (out / "summary.json").write_text(json.dumps(report, indent=2))
    return report


def replica_seconds(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Integral over time of (ready + starting) replicas per stage, from the samples."""
    out: dict[str, float] = {}
    last: dict[str, tuple[float, int]] = {}
    for r in rows:
        n = int(r["ready"]) + int(r["starting"])
        if r["stage"] in last:
            t0, n0 = last[r["stage"]]
            out[r["stage"]] = out.get(r["stage"], 0.0) + n0 * (r["t_s"] - t0)
        last[r["stage"]] = (r["t_s"], n)
    return {k: round(v, 1) for k, v in out.items()}


def scale_events(path: Path) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    if not path.is_file():
        return out
    for line in path.read_text().splitlines():
        rec = json.loads(line)
        for s in rec.get("stages", []):
            action = s.get("action")
            if action in ("scale-up", "scale-down"):
                d = out.setdefault(s["stage"], {"scale-up": 0, "scale-down": 0})
                d[action] += 1
    return out


def run_job(cfg: RunConfig, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Make weights if needed, run, write the report and the plots; returns the summary."""
    from quartfaas.jobs.report import write_plots
    from quartfaas.models import make_weights

    cfg.out_dir.mkdir(parents=True, exist_ok=True)
    if make_weights(cfg.spec):
        log(f"weights ready in {cfg.spec.weights_dir}")
    report = _run_async_entry(cfg, log)
    write_plots(cfg.out_dir, slo_ms=report["slo_p99_ms"])
    return report


def _run_async_entry(cfg: RunConfig, log: Callable[[str], None]) -> dict[str, Any]:
    try:
        import uvloop

        return uvloop.run(_run_async(cfg, log))
    except ImportError:
        return asyncio.run(_run_async(cfg, log))

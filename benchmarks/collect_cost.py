"""Cost of one in-process snapshot collect for a 64-stage pipeline with full windows.

Builds a gateway view (real ``GatewayMetrics`` windows, fixed gauges, no backend) whose
every stage and the end-to-end window hold ``--per-window`` arrivals, departures,
service and latency samples in each 10 s window, then times ``--repeats`` calls of
``InProcessCollector.snapshot`` (each at a new ``now``, so nothing is reused from the
call before) and prints the min, median and max in ms, with the load average. Exits 1 if
the median exceeds ``--limit-ms`` (50 ms: a collect runs every controller tick, 1 s by
default, next to the tick itself).

    python benchmarks/collect_cost.py [--stages 64] [--per-window 1000] [--repeats 15]

(It replaces a timed unit test: speed targets live in benchmarks, and the test suite keeps
only the collector's correctness on the same windows.)
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

from quartfaas.metrics.collector import InProcessCollector
from quartfaas.metrics.gateway_metrics import GatewayMetrics, StageGauges
from quartfaas.spec import PipelineSpec, parse_spec


class _View:
    """The ``GatewayView`` the collector reads: spec, metrics, gauges, no backend."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.backend = None
        self._gauges = {s.name: StageGauges(0, 0, 0, 0) for s in spec.stages}
        self.metrics = GatewayMetrics(
            spec.name,
            [s.name for s in spec.stages],
            window_s=spec.controller.window_s,
            now=0.0,
            read_gauges=self.gauges,
        )

    def gauges(self) -> dict[str, StageGauges]:
        return dict(self._gauges)


def build(n_stages: int, per_window: int, window_s: float = 10.0, seed: int = 0) -> _View:
    spec = parse_spec(
        {
            "name": "p",
            "model": {"kind": "synthetic"},
            "controller": {"enabled": False, "window_s": window_s, "interval_s": 1.0},
            "slo": {"p99_ms": 250.0},
            "stages": [
                {"name": f"p-s{i}", "synthetic": {"work": "none"}, "max_replicas": 4}
                for i in range(n_stages)
            ],
        }
    )
    view = _View(spec)
    rng = np.random.default_rng(seed)
    ts = np.sort(rng.uniform(0.0, 2 * window_s, 2 * per_window)).tolist()
    vals = rng.exponential(0.02, len(ts)).tolist()
    for m in [*view.metrics.stages.values(), view.metrics.e2e]:
        for t, v in zip(ts, vals, strict=True):
            m.arrivals.append(t)
            m.departures.append(t)
            m.service_s.append(t, v)
            m.latency_s.append(t, v)
    return view


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--stages", type=int, default=64)
    ap.add_argument("--per-window", type=int, default=1000)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--limit-ms", type=float, default=50.0)
    args = ap.parse_args(argv)
    if args.stages < 1 or args.per_window < 1 or args.repeats < 1:
        ap.error("--stages, --per-window and --repeats must be >= 1")
    view = build(args.stages, args.per_window)
    collector = InProcessCollector(view)
    now = 20.0
    first = collector.snapshot(now)
    got = first.stages[-1].arrivals
    if got is None or abs(got - args.per_window) > 0.15 * args.per_window:
        print(f"FAIL: the windows hold {got} arrivals, expected ~{args.per_window}")
        return 1
    costs = []
    for k in range(args.repeats):
        t0 = time.perf_counter()
        collector.snapshot(now + 1e-6 * (k + 1))
        costs.append((time.perf_counter() - t0) * 1e3)
    load = "/".join(f"{x:.2f}" for x in os.getloadavg())
    median = statistics.median(costs)
    print(
        f"collect, {args.stages} stages x ~{args.per_window} samples/window, "
        f"{args.repeats} repeats, load average {load}: min {min(costs):.2f} ms, "
        f"median {median:.2f} ms, max {max(costs):.2f} ms"
    )
    if median > args.limit_ms:
        print(f"FAIL: median {median:.2f} ms > {args.limit_ms} ms", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

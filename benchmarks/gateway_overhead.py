"""Gateway overhead: per-hop latency and max throughput of zero-work pipelines.

Runs the embedded runtime (gateway + one worker process per stage, stages that do no
work) in a child process and drives it over HTTP from this process, so client and
server do not share an interpreter. For 1-stage and 3-stage pipelines it measures

- latency with one request outstanding (p50/p99 over ``--requests``), and from it the
  per-hop overhead two ways: e2e/(stages+1) (client->gateway plus one hop per stage, as
  Ray Serve's "~3-4 ms per hop" was derived) and the marginal cost of one more stage
  ((p50_3 - p50_1) / 2);
- throughput: closed loop with ``--concurrency`` clients for ``--seconds``.

Each measurement is repeated ``--repeats`` times and the median is reported (the two
vCPUs here are noisy; see shared/reference/host-facts.md). For context, Ray Serve 2.60
measured on this machine: 15.5 ms per request (~3-4 ms per hop), 62 req/s for a
zero-work 3-stage pipeline. Targets: per-hop p50 <= 1 ms; >= 5x Ray's throughput.

    python benchmarks/gateway_overhead.py [--requests 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing as mp
import statistics
import sys
import time
from typing import Any

RAY_MS_PER_REQUEST = 15.5  # measured on this machine kind, shared/reference/host-facts.md
RAY_RPS = 62.0


def _spec(stages: int) -> dict[str, Any]:
    return {
        "name": f"zero{stages}",
        "model": {"kind": "synthetic"},
        "gateway": {"port": 0, "max_queue_len": 100000},
        "controller": {"enabled": False},
        "stages": [
            {"name": f"zero{stages}-s{i}", "synthetic": {"work": "none"}, "max_concurrency": 64}
            for i in range(stages)
        ],
    }


def _serve(spec_data: dict[str, Any], conn: Any) -> None:
    import uvloop

    from quartfaas.runtime import EmbeddedRuntime
    from quartfaas.spec import parse_spec

    async def main() -> None:
        rt = EmbeddedRuntime(parse_spec(spec_data))
        await rt.start()
        conn.send(rt.url)
        await rt.serve_forever()

    uvloop.run(main())


async def _latency(url: str, n: int, body: bytes) -> list[float]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as s:
        for i in range(n + 200):
            t0 = time.perf_counter()
            async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                assert r.status == 200, r.status
            if i >= 200:  # warm-up
                out.append(time.perf_counter() - t0)
    return out


async def _throughput(url: str, clients: int, seconds: float, body: bytes) -> tuple[float, int]:
    import aiohttp

    done = 0
    errors = 0
    stop_at = time.perf_counter() + seconds

    async def client(s: aiohttp.ClientSession) -> None:
        nonlocal done, errors
        while time.perf_counter() < stop_at:
            async with s.post(url, data=body, headers={"Content-Type": "application/json"}) as r:
                await r.read()
                if r.status == 200:
                    done += 1
                else:
                    errors += 1

    conn = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=conn) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s) for _ in range(clients)))
        elapsed = time.perf_counter() - t0
    return done / elapsed, errors


def _pct(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(q * len(s)))]


def measure(stages: int, args: argparse.Namespace) -> dict[str, float]:
    import uvloop

    ctx = mp.get_context("spawn")
    parent, child = ctx.Pipe()
    proc = ctx.Process(target=_serve, args=(_spec(stages), child), daemon=True)
    proc.start()
    try:
        base = parent.recv()
        url = f"{base}/function/zero{stages}"
        body = json.dumps({"inputs": [[101, 2023, 2003, 102]]}).encode()
        p50s, p99s, rps = [], [], []
        for _ in range(args.repeats):
            lat = uvloop.run(_latency(url, args.requests, body))
            p50s.append(_pct(lat, 0.5) * 1000)
            p99s.append(_pct(lat, 0.99) * 1000)
            r, errors = uvloop.run(_throughput(url, args.concurrency, args.seconds, body))
            if errors:
                print(f"warning: {errors} errors during the throughput run", file=sys.stderr)
            rps.append(r)
        return {
            "p50_ms": statistics.median(p50s),
            "p99_ms": statistics.median(p99s),
            "rps": statistics.median(rps),
        }
    finally:
        proc.terminate()
        proc.join(15)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=5.0)
    args = ap.parse_args()
    one = measure(1, args)
    three = measure(3, args)
    per_hop = three["p50_ms"] / 4
    per_hop_p99 = three["p99_ms"] / 4
    marginal = (three["p50_ms"] - one["p50_ms"]) / 2
    print(f"{'pipeline':<10}{'p50 ms':>10}{'p99 ms':>10}{'req/s':>10}")
    for name, m in (("1 stage", one), ("3 stages", three)):
        print(f"{name:<10}{m['p50_ms']:>10.2f}{m['p99_ms']:>10.2f}{m['rps']:>10.0f}")
    print()
    print(f"per hop, 3 stages, e2e/4 hops: p50 {per_hop:.2f} ms, p99 {per_hop_p99:.2f} ms "
          f"(Ray Serve: ~{RAY_MS_PER_REQUEST / 4:.1f} ms)")  # fmt: skip
    print(f"marginal cost of one more stage (p50): {marginal:.2f} ms")
    print(f"throughput, 3 stages: {three['rps']:.0f} req/s = {three['rps'] / RAY_RPS:.1f}x "
          f"Ray Serve's {RAY_RPS:.0f} req/s")  # fmt: skip
    ok = per_hop <= 1.0 and three["rps"] >= 5 * RAY_RPS
    print("targets (per-hop p50 <= 1 ms, >= 5x Ray throughput):", "met" if ok else "NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""The controller on the live runtime: a burst makes it scale the bottleneck up, then down.

Real gateway and worker processes; the stages are synthetic sleeps (accelerator-like
time that uses no CPU), so the test's outcome does not hinge on this noisy 2-vCPU box.
The assertions read the JSONL decision log, as a user would.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import numpy as np
import pytest

from helpers import synthetic_spec
from quartfaas.runtime import EmbeddedRuntime
from quartfaas.workload.loadgen import run_open_loop

pytestmark = [pytest.mark.slow, pytest.mark.timeout(180)]


def _arrivals(seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    burst = np.cumsum(rng.exponential(1 / 60.0, 600))
    burst = burst[burst < 8.0]  # 60 req/s for 8 s: the 40 ms stage needs >= 3 replicas
    calm = 8.0 + np.cumsum(rng.exponential(1 / 2.0, 60))
    return np.concatenate([burst, calm[calm < 30.0]])


@pytest.mark.parametrize("policy", ["quart-corrector", "quart"])
def test_burst_scales_the_bottleneck_up_then_down(
    policy: str, tmp_path: Path, kill_leftovers: list[str]
) -> None:
    from quartfaas.control.registry import policy_names

    if policy not in policy_names():
        pytest.skip(f"policy {policy} is not available in this build")
    spec = synthetic_spec(
        3, name="burst", work="sleep", mean_ms=5.0,
        stage_overrides={1: {"synthetic": {"work": "sleep", "mean_ms": 40.0, "scv": 0.2},
                             "max_concurrency": 1, "max_replicas": 6}},
        slo={"p99_ms": 400},
        controller={"enabled": True, "policy": policy, "interval_s": 0.5, "window_s": 3.0,
                    "up_cooldown_s": 1.0, "down_cooldown_s": 3.0, "downscale_delay_s": 4.0},
    )  # fmt: skip
    log_path = tmp_path / "decisions.jsonl"

    async def main() -> None:
        async with EmbeddedRuntime(spec, decision_log=log_path) as rt:
            kill_leftovers.append(str(rt.files.dir))
            records = await run_open_loop(
                f"{rt.url}/function/burst", _arrivals(), fixed_input=[[1, 2, 3]], timeout_s=20
            )
            assert sum(r.ok for r in records) == len(records), [
                (r.status, r.error) for r in records if not r.ok
            ]
            await asyncio.sleep(2.0)  # a few more ticks after the calm phase

    asyncio.run(main())
    ticks = [json.loads(line) for line in log_path.read_text().splitlines()]
    assert ticks, "no decisions were logged"
    t0 = ticks[0]["time"]

    def actions(stage: str, kind: str) -> list[tuple[float, int, str]]:
        return [
            (t["time"] - t0, s["target"], s["reason"])
            for t in ticks
            for s in t["stages"]
            if s["stage"] == stage and s["action"] == kind
        ]

    ups = actions("burst-s1", "scale-up")
    downs = actions("burst-s1", "scale-down")
    assert ups, "the bottleneck was never scaled up"
    assert max(target for _, target, _ in ups) >= 3
    assert downs and downs[-1][0] > ups[0][0], "the bottleneck was not scaled back down"
    peak = max(target for _, target, _ in ups)
    final = next(s["target"] for s in reversed(ticks[-1]["stages"]) if s["stage"] == "burst-s1")
    assert final < peak
    # Every decision says why.
    assert all(s["reason"] for t in ticks for s in t["stages"])

"""``stage_quantiles`` (the feedback's batch) against ``stage_quantile`` one stage at a time."""

from __future__ import annotations

import math
import random

import pytest

from quartfaas.control.corrector.stagetails import stage_quantiles
from quartfaas.control.corrector.tailmodel import StageLoad, stage_quantile


def _random_stages(rng: random.Random, n: int) -> tuple[list[StageLoad], list[int]]:
    stages, counts = [], []
    for i in range(n):
        scv = rng.choice([0.0, 1e-7, 0.05, 0.3, 1.0, 2.5, 100.0, rng.uniform(0.0, 3.0)])
        rate = 0.0 if rng.random() < 0.1 else rng.uniform(0.1, 300.0)
        stages.append(
            StageLoad(
                f"s{i}",
                rate,
                rng.uniform(0.001, 0.2),
                service_scv=scv,
                arrival_scv=rng.uniform(0.0, 4.0),
                burst_factor=rng.choice([None, rng.uniform(0.0, 6.0)]),
                servers_per_replica=rng.choice([1, 2]),
            )
        )
        counts.append(rng.randint(0, 30))  # 0 and too few replicas: unstable stages too
    return stages, counts


@pytest.mark.parametrize("seed", range(6))
def test_batch_equals_one_stage_at_a_time(seed: int) -> None:
    """Bit for bit: the feedback must learn the same factors as with ``stage_quantile``."""
    rng = random.Random(seed)
    seen: list[float] = []
    for _ in range(15):
        stages, counts = _random_stages(rng, rng.randint(1, 64))
        q = rng.choice([0.5, 0.95, 0.99])
        grid = rng.choice([64, 128, 256])
        want = [stage_quantile(s, c, q, grid=grid) for s, c in zip(stages, counts, strict=True)]
        got = stage_quantiles(stages, counts, q, grid=grid)
        assert got == want
        seen += want
    # The cases cover unstable stages (inf) as well as finite quantiles.
    assert any(math.isinf(v) for v in seen) and any(math.isfinite(v) for v in seen)


def test_empty_and_bad_input() -> None:
    assert stage_quantiles([], [], 0.99) == []
    with pytest.raises(ValueError, match="replica counts"):
        stage_quantiles([StageLoad("a", 1.0, 0.1)], [], 0.99)
    with pytest.raises(ValueError, match="quantile"):
        stage_quantiles([StageLoad("a", 1.0, 0.1)], [1], 1.5)

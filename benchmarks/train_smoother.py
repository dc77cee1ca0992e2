"""Train the smoother's GAT and print held-out errors of GAT, QNA and persistence.

The weights shipped in ``src/quartfaas/data/smoother/`` were produced by::

    python benchmarks/train_smoother.py --out src/quartfaas/data/smoother --seed 0

(defaults: 300 simulated runs, up to 300 epochs; a few minutes on 2 CPU cores). Then it
times GAT inference on a 64-stage snapshot from the written weights. Also reachable as
``quartfaas train-smoother`` (the CLI calls the same ``train_smoother``).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from quartfaas.control.smoother.gat import GatPredictor
from quartfaas.control.snapshot import make_snapshot, make_stage
from quartfaas.sim.train_smoother import train_smoother


def _progress(phase: str, done: int, total: int, message: str) -> None:
    if phase == "done" or done == total or done % 25 == 0:
        print(f"[{phase} {done}/{total}] {message}", file=sys.stderr, flush=True)


def inference_ms(directory: Path, n_stages: int = 64, repeat: int = 200) -> tuple[float, float]:
    """Median and p90 milliseconds of ``GatPredictor.predict`` (features + model)."""
    gat = GatPredictor(directory)
    stages = tuple(
        make_stage(
            f"s{i}",
            i,
            arrival_rate=20.0,
            arrival_cv=1.0 + 0.05 * i,
            service_mean_s=0.05,
            service_scv=0.3,
            ready_replicas=2,
            max_concurrency=2,
            max_replicas=8,
        )
        for i in range(n_stages)
    )
    snap = make_snapshot(stages=stages, now=10.0)
    gat.predict(snap)  # load + warm-up
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        gat.predict(snap)
        times.append((time.perf_counter() - t) * 1e3)
    times.sort()
    return statistics.median(times), times[int(0.9 * (len(times) - 1))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path("smoother-out"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--epochs", type=int, default=300)
    args = ap.parse_args()
    m = train_smoother(
        args.out, seed=args.seed, n_runs=args.runs, epochs=args.epochs, progress=_progress
    )
    print(f"test split: {m['dataset']['test']['runs']} runs, {m['test']['gat']['n']} stage-ticks")
    print(f"{'predictor':<12} {'CV MAE':>8} {'CV RMSE':>8} {'lnCV MAE':>9} {'down MAE':>9}")
    for name in ("gat", "qna", "persistence"):
        t = m["test"][name]
        print(
            f"{name:<12} {t['mae']:>8.4f} {t['rmse']:>8.4f} {t['mae_log']:>9.4f} "
            f"{t['downstream']['mae']:>9.4f}"
        )
    print(f"winner (shipped default of predictor='auto'): {m['winner']}")
    med, p90 = inference_ms(args.out)
    print(f"GAT inference, 64 stages: median {med:.2f} ms, p90 {p90:.2f} ms")


if __name__ == "__main__":
    main()

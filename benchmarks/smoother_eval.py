"""Re-evaluate the smoother's predictors (GAT, QNA, persistence) on data with bursts arriving.

Issue 12: the shipped GAT was trained on MMPP runs whose on-periods last 0.17-0.8 s, far
shorter than the 10 s measurement window, so a burst "arriving" at a stage hardly ever
happens in its data. This draws runs exactly as ``sim/smoother_data.random_run`` does
(random pipelines, replica counts and load), but replaces every run's arrivals by an on-off
MMPP whose mean on-period is 5-30 s (share of time on 0.1-0.4; the CV follows from both,
``workload.synthetic.mmpp_for``), simulates them with ``smoother_data.simulate_run`` and
scores each predictor's CV over the next horizon (the same target and MAE as
``sim/train_smoother.py``). Nothing is trained here: the runs are split into validation
and test halves; the choice is made on validation, test is only reported.

    python benchmarks/smoother_eval.py [--runs 40] [--seed 11]

Prints a table (CV MAE, all stages and downstream ones, per split) and the choice.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time

import numpy as np

from quartfaas.control.smoother.gat import GatPredictor
from quartfaas.sim.smoother_data import DataConfig, RunData, random_run, simulate_run


def long_burst_arrival(rng: np.random.Generator, rate: float) -> str:
    """An on-off MMPP description with a mean on-period of 5-30 s."""
    on_s = float(rng.uniform(5.0, 30.0))
    f = float(rng.uniform(0.1, 0.4))
    cv = math.sqrt(1.0 + 2.0 * rate * on_s * (1.0 - f) ** 2 / f)  # mmpp_for's relation
    return f"mmpp rate={rate:.4g} cv={cv:.4g} on_frac={f:.4g}"


def _rate(arrival: str) -> float:
    return float(dict(p.split("=") for p in arrival.split()[1:])["rate"])


def _mae(pred: np.ndarray, true_log: np.ndarray) -> tuple[int, float]:
    ok = np.isfinite(true_log)
    if not ok.any():
        return 0, math.nan
    return int(ok.sum()), float(np.mean(np.abs(pred[ok] - np.exp(true_log[ok]))))


def score(runs: list[RunData], gat: GatPredictor) -> dict[str, dict[str, tuple[int, float]]]:
    preds: dict[str, list[np.ndarray]] = {"gat": [], "qna": [], "persistence": []}
    trues, down = [], []
    for r in runs:
        g = np.array([np.exp(gat.predict_log_cv(r.x[i].tolist())) for i in range(len(r.times))])
        preds["gat"].append(g.ravel())
        preds["qna"].append(r.qna_cv.ravel())
        preds["persistence"].append(r.persist_cv.ravel())
        trues.append(r.y.ravel())
        down.append((np.arange(r.n_stages)[None, :] >= 1).repeat(r.y.shape[0], 0).ravel())
    true = np.concatenate(trues)
    is_down = np.concatenate(down)
    out = {}
    for name, parts in preds.items():
        p = np.concatenate(parts)
        out[name] = {"all": _mae(p, true), "downstream": _mae(p[is_down], true[is_down])}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=40)
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--duration-s", type=float, default=240.0)
    args = ap.parse_args(argv)
    cfg = DataConfig(n_runs=max(3, args.runs), duration_s=args.duration_s)
    rng = np.random.default_rng(args.seed)
    gat = GatPredictor()
    gat.load()
    t0 = time.perf_counter()
    runs: list[RunData] = []
    for i in range(args.runs):
        spec = random_run(rng, i, cfg)
        spec = dataclasses.replace(spec, arrival=long_burst_arrival(rng, _rate(spec.arrival)))
        runs.append(simulate_run(spec, cfg))
    order = np.random.default_rng(args.seed + 1).permutation(len(runs))
    half = len(runs) // 2
    splits = {
        "validation": [runs[i] for i in order[:half]],
        "test": [runs[i] for i in order[half:]],
    }
    print(
        f"{args.runs} runs of {args.duration_s:g}s, on-periods 5-30 s, "
        f"{time.perf_counter() - t0:.0f}s to simulate; target: CV over the next "
        f"{cfg.horizon_s:g}s"
    )
    print(f"{'split':<11}{'predictor':<13}{'rows':>7}{'CV MAE':>9}{'downstream':>12}")
    scores = {name: score(part, gat) for name, part in splits.items()}
    for name, sc in scores.items():
        for pred, v in sc.items():
            print(f"{name:<11}{pred:<13}{v['all'][0]:>7}{v['all'][1]:>9.3f}"
                  f"{v['downstream'][1]:>12.3f}")  # fmt: skip
    val = scores["validation"]
    winner = min(val, key=lambda k: val[k]["all"][1])
    print(f"choice on validation (lowest CV MAE): {winner}")
    gat_wins = val["gat"]["all"][1] < val["persistence"]["all"][1]
    print(f"GAT beats persistence on validation: {gat_wins}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

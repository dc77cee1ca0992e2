"""Train the smoother's GAT on simulator data and compare it with QNA and persistence.

Neighbours: ``sim/smoother_data.py`` generates the seeded dataset (whole runs split into
train/validation/test); ``control/smoother/gat.py`` defines the model and loads what this writes;
the CLI's ``quartfaas train-smoother`` calls ``train_smoother``; ``benchmarks/
train_smoother.py`` is the command that produced the weights shipped in
``quartfaas/data/smoother/``.

Training minimises the mean squared error of ``ln CV`` (the target's spread covers two
orders of magnitude, and bursts would otherwise dominate the loss) with Adam, one step per
batch of whole runs, and keeps the weights of the epoch with the lowest validation loss
(early stopping after ``patience`` epochs without improvement). The test split is touched
once, at the end, for every predictor alike:

* ``gat``: the trained model;
* ``qna``: ``control/propagation.QnaPredictor``;
* ``persistence``: each stage's next CV is its currently measured CV.

Errors are reported on the CV itself (MAE, RMSE) and on ``ln CV`` (MAE), over all stages
and over downstream stages only (``k >= 1``, where QNA differs from persistence).
``metrics.json`` records them with the data and training settings, the seed and library
versions; ``winner`` is the predictor with the lowest test CV MAE among GAT and QNA, which
``control/quart.py``'s ``"auto"`` choice follows.

Reproducible: the data come from numpy ``Generator``s seeded from ``seed``; torch runs with
``manual_seed(seed)``, deterministic algorithms and ``threads`` intra-op threads (the
previous settings are restored afterwards).
"""

from __future__ import annotations

import json
import math
import platform
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from quartfaas.control.smoother.gat import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    GatConfig,
    build_model,
    path_edges,
)
from quartfaas.sim.smoother_data import DataConfig, Dataset, RunData, generate_dataset

ProgressFn = Callable[[str, int, int, str], None]  # (phase, done, total, message)


@dataclass(frozen=True, slots=True)
class TrainConfig:
    epochs: int = 300
    patience: int = 30
    lr: float = 3e-3
    weight_decay: float = 1e-4
    runs_per_batch: int = 4
    hidden: int = 16
    heads: int = 4
    dropout: float = 0.0
    threads: int = 1


def _batch(runs: Sequence[RunData]) -> tuple[Any, Any, Any, Any]:
    """Concatenate every tick of ``runs`` into one graph batch: x, edge_index, y, mask."""
    import torch

    xs, ys, src, dst = [], [], [], []
    offset = 0
    for r in runs:
        t, n, f = r.x.shape
        xs.append(r.x.reshape(t * n, f))
        ys.append(r.y.reshape(t * n))
        for _ in range(t):
            s, d = path_edges(n, offset)
            src += s
            dst += d
            offset += n
    x = torch.from_numpy(np.concatenate(xs).astype(np.float32))
    y_np = np.concatenate(ys)
    mask = torch.from_numpy(np.isfinite(y_np))
    y = torch.from_numpy(np.nan_to_num(y_np).astype(np.float32))
    return x, torch.tensor([src, dst], dtype=torch.long), y, mask


def _errors(pred_cv: np.ndarray, true_log: np.ndarray) -> dict[str, float]:
    ok = np.isfinite(true_log)
    p, t = pred_cv[ok], np.exp(true_log[ok])
    if p.size == 0:
        return {"n": 0, "mae": math.nan, "rmse": math.nan, "mae_log": math.nan}
    return {
        "n": int(p.size),
        "mae": float(np.mean(np.abs(p - t))),
        "rmse": float(np.sqrt(np.mean((p - t) ** 2))),
        "mae_log": float(np.mean(np.abs(np.log(p) - true_log[ok]))),
    }


def _evaluate(model: Any, runs: Sequence[RunData]) -> dict[str, dict[str, Any]]:
    import torch

    preds: dict[str, list[np.ndarray]] = {"gat": [], "qna": [], "persistence": []}
    trues, down = [], []
    with torch.inference_mode():
        for r in runs:
            x, ei, _, _ = _batch([r])
            out = model(x, ei).numpy().reshape(r.y.shape)
            preds["gat"].append(np.exp(np.clip(out, math.log(0.05), math.log(20.0))).ravel())
            preds["qna"].append(r.qna_cv.ravel())
            preds["persistence"].append(r.persist_cv.ravel())
            trues.append(r.y.ravel())
            down.append((np.arange(r.n_stages)[None, :] >= 1).repeat(r.y.shape[0], 0).ravel())
    true = np.concatenate(trues)
    is_down = np.concatenate(down)
    result: dict[str, dict[str, Any]] = {}
    for name, parts in preds.items():
        p = np.concatenate(parts)
        result[name] = _errors(p, true)
        result[name]["downstream"] = _errors(p[is_down], true[is_down])
    return result


def _loss(model: Any, batch: tuple[Any, Any, Any, Any]) -> Any:
    x, ei, y, mask = batch
    diff = model(x, ei)[mask] - y[mask]
    return (diff * diff).mean()


def _versions() -> dict[str, str]:
    import safetensors
    import torch
    import torch_geometric

    return {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "torch": torch.__version__,
        "torch_geometric": torch_geometric.__version__,
        "safetensors": safetensors.__version__,
    }


def train_smoother(
    out_dir: Path | str,
    *,
    seed: int = 0,
    n_runs: int = 300,
    epochs: int = 300,
    data: DataConfig | None = None,
    train: TrainConfig | None = None,
    progress: ProgressFn | None = None,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """Generate data, train, evaluate, write the three files to ``out_dir``; returns metrics.

    ``n_runs``/``epochs`` override ``data.n_runs``/``train.epochs``; a ready ``dataset``
    (from ``generate_dataset``) skips generation.
    """
    import torch
    from safetensors.torch import save_file

    data = DataConfig(**{**asdict(data or DataConfig()), "n_runs": n_runs})
    train = TrainConfig(**{**asdict(train or TrainConfig()), "epochs": epochs})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda *_: None)
    t0 = time.perf_counter()
    if dataset is None:
        dataset = generate_dataset(
            seed, data, progress=lambda i, n: say("data", i, n, f"simulated run {i}/{n}")
        )
    data = dataset.config
    t_data = time.perf_counter() - t0

    prev_threads = torch.get_num_threads()
    prev_det = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(train.threads)
    torch.use_deterministic_algorithms(True)
    try:
        torch.manual_seed(seed)
        rng = np.random.default_rng(seed + 2)
        cfg = GatConfig(
            hidden=train.hidden,
            heads=train.heads,
            dropout=train.dropout,
            horizon_s=data.horizon_s,
            window_s=data.window_s,
        )
        model = build_model(cfg)
        opt = torch.optim.Adam(model.parameters(), lr=train.lr, weight_decay=train.weight_decay)
        train_runs = dataset.part("train")
        val_batch = _batch(dataset.part("validation"))
        best = (math.inf, -1)
        best_state = {k: v.clone() for k, v in model.state_dict().items()}
        history: list[tuple[int, float, float]] = []
        for epoch in range(1, train.epochs + 1):
            model.train()
            order = rng.permutation(len(train_runs))
            total, count = 0.0, 0
            for i in range(0, len(order), train.runs_per_batch):
                batch = _batch([train_runs[j] for j in order[i : i + train.runs_per_batch]])
                opt.zero_grad()
                loss = _loss(model, batch)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * int(batch[3].sum())
                count += int(batch[3].sum())
            model.eval()
            with torch.inference_mode():
                val = float(_loss(model, val_batch))
            history.append((epoch, total / max(count, 1), val))
            say("train", epoch, train.epochs, f"train {total / max(count, 1):.4f} val {val:.4f}")
            if val < best[0] - 1e-6:
                best = (val, epoch)
                best_state = {k: v.clone() for k, v in model.state_dict().items()}
            elif epoch - best[1] >= train.patience:
                break
        model.load_state_dict(best_state)
        model.eval()
        val_metrics = _evaluate(model, dataset.part("validation"))
        test_metrics = _evaluate(model, dataset.part("test"))
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        save_file(state, str(out / MODEL_FILE), metadata={"format": "pt"})
        (out / MODEL_FILE).chmod(0o644)  # safetensors writes 0600; the file ships in a wheel
    finally:
        torch.set_num_threads(prev_threads)
        torch.use_deterministic_algorithms(prev_det)

    winner = "gat" if test_metrics["gat"]["mae"] < test_metrics["qna"]["mae"] else "qna"
    metrics: dict[str, Any] = {
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "seed": seed,
        "target": f"ln CV of each stage's arrivals over the next {data.horizon_s:g}s",
        "winner": winner,
        "winner_rule": "lowest test CV MAE among gat and qna",
        "test": test_metrics,
        "validation": val_metrics,
        "best_epoch": best[1],
        "best_val_loss": best[0],
        "epochs_run": len(history),
        "history": [[e, round(a, 6), round(b, 6)] for e, a, b in history],
        "dataset": {"config": data.to_json(), "seed": dataset.seed, **dataset.summary()},
        "training": asdict(train),
        "n_parameters": int(sum(v.numel() for v in state.values())),
        "seconds": {"data": round(t_data, 2), "total": round(time.perf_counter() - t0, 2)},
        "versions": _versions(),
    }
    (out / CONFIG_FILE).write_text(json.dumps(cfg.to_json(), indent=2) + "\n", encoding="utf-8")
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    say("done", 1, 1, f"winner {winner}: test CV MAE gat {test_metrics['gat']['mae']:.4f}, "
        f"qna {test_metrics['qna']['mae']:.4f}, persistence "
        f"{test_metrics['persistence']['mae']:.4f}")  # fmt: skip
    return metrics


__all__ = ["TrainConfig", "train_smoother"]

"""Smoother training data and training: seeded, split by whole runs, reproducible."""

from __future__ import annotations

import json

import numpy as np
import pytest

from quartfaas.control.smoother.gat import CONFIG_FILE, METRICS_FILE, MODEL_FILE, GatPredictor
from quartfaas.control.smoother.propagation import N_FEATURES
from quartfaas.control.snapshot import make_snapshot, make_stage
from quartfaas.sim.smoother_data import (
    DataConfig,
    arrivals_for,
    generate_dataset,
    random_run,
    simulate_run,
    split_runs,
)
from quartfaas.sim.train_smoother import TrainConfig, train_smoother

TINY = DataConfig(
    n_runs=6,
    duration_s=60.0,
    window_s=10.0,
    horizon_s=10.0,
    sample_every_s=5.0,
    max_stages=4,
    rate_range=(10.0, 30.0),
)


def test_runs_are_seeded_and_targets_look_ahead():
    a = random_run(np.random.default_rng(5), 0, TINY)
    b = random_run(np.random.default_rng(5), 0, TINY)
    assert a == b
    assert np.array_equal(arrivals_for(a, 60.0), arrivals_for(b, 60.0))
    data = simulate_run(a, TINY)
    t, n = data.y.shape
    assert data.x.shape == (t, n, N_FEATURES) and n == a.pipeline.num_stages
    assert data.times[0] == 10.0 and data.times[-1] <= 60.0 - 10.0 - 1.0
    assert np.isfinite(data.y).mean() > 0.8
    # the target is the *next* horizon's CV, not the window the features saw
    assert not np.allclose(
        np.exp(data.y[np.isfinite(data.y)]), data.persist_cv[np.isfinite(data.y)]
    )
    again = simulate_run(a, TINY)
    assert np.array_equal(data.x, again.x) and np.array_equal(data.y, again.y, equal_nan=True)


def test_split_is_by_whole_runs():
    split = split_runs(20, (0.7, 0.15, 0.15), seed=1)
    parts = [set(v) for v in split.values()]
    assert sum(len(p) for p in parts) == 20 and set().union(*parts) == set(range(20))
    assert all(not (p & q) for i, p in enumerate(parts) for q in parts[i + 1 :])
    assert split == split_runs(20, (0.7, 0.15, 0.15), seed=1)
    ds = generate_dataset(3, TINY)
    assert (
        ds.summary()["train"]["runs"]
        + ds.summary()["test"]["runs"]
        + ds.summary()["validation"]["runs"]
        == 6
    )
    with pytest.raises(ValueError, match="n_runs"):
        DataConfig(n_runs=2)


def test_tiny_training_is_reproducible(tmp_path):
    cfg = TrainConfig(epochs=3, patience=3, runs_per_batch=2)
    seen: list[str] = []
    m1 = train_smoother(
        tmp_path / "a",
        seed=7,
        n_runs=6,
        epochs=3,
        data=TINY,
        train=cfg,
        progress=lambda phase, i, n, msg: seen.append(phase),
    )
    m2 = train_smoother(tmp_path / "b", seed=7, n_runs=6, epochs=3, data=TINY, train=cfg)
    assert m1["test"] == m2["test"] and m1["history"] == m2["history"]
    assert (tmp_path / "a" / MODEL_FILE).read_bytes() == (tmp_path / "b" / MODEL_FILE).read_bytes()
    assert {"data", "train", "done"} <= set(seen)
    for name in ("gat", "qna", "persistence"):
        assert m1["test"][name]["n"] > 0 and m1["test"][name]["mae"] >= 0
    assert m1["winner"] in ("gat", "qna")
    written = json.loads((tmp_path / "a" / METRICS_FILE).read_text())
    assert written["seed"] == 7 and written["dataset"]["config"]["n_runs"] == 6
    assert written["versions"]["torch"] and written["training"]["epochs"] == 3
    assert json.loads((tmp_path / "a" / CONFIG_FILE).read_text())["horizon_s"] == 10.0
    # what was written loads and predicts
    snap = make_snapshot(
        stages=tuple(
            make_stage(f"s{i}", i, arrival_rate=20.0, arrival_cv=2.0, service_mean_s=0.05)
            for i in range(3)
        )
    )
    assert len(GatPredictor(tmp_path / "a").predict(snap)) == 3
    m3 = train_smoother(tmp_path / "c", seed=8, n_runs=6, epochs=3, data=TINY, train=cfg)
    assert m3["test"] != m1["test"]

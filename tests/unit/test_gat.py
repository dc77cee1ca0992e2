"""The shipped GAT: loads, is deterministic, really uses the CV, is small and fast."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest

from quartfaas.control.smoother.gat import (
    CONFIG_FILE,
    METRICS_FILE,
    MODEL_FILE,
    GatConfig,
    GatPredictor,
    gat_beats_qna,
    load_metrics,
    path_edges,
    shipped_dir,
)
from quartfaas.control.smoother.propagation import CV_FEATURE, FEATURE_NAMES, CvPredictor, features
from quartfaas.control.snapshot import make_snapshot, make_stage
from quartfaas.errors import WeightsError


@pytest.fixture(scope="module")
def gat() -> GatPredictor:
    g = GatPredictor()
    g.load()
    return g


def _snapshot(n: int = 4, cv0: float = 1.0):
    stages = tuple(
        make_stage(
            f"s{i}",
            i,
            arrival_rate=20.0,
            arrival_cv=cv0 if i == 0 else 1.0,
            service_mean_s=0.05 + 0.01 * (i % 3),
            service_scv=0.3,
            ready_replicas=2,
            max_concurrency=2,
            max_replicas=8,
        )
        for i in range(n)
    )
    return make_snapshot(stages=stages, now=30.0)


def test_shipped_files_are_small_and_consistent(gat):
    d = shipped_dir()
    sizes = {f: (d / f).stat().st_size for f in (MODEL_FILE, CONFIG_FILE, METRICS_FILE)}
    assert all(0 < s < 100_000 for s in sizes.values()), sizes
    assert gat.config.feature_names == FEATURE_NAMES
    assert gat.config.n_features == 8 and gat.config.heads == 4 and gat.config.hidden == 16
    metrics = load_metrics()
    assert metrics is not None
    for name in ("gat", "qna", "persistence"):
        t = metrics["test"][name]
        assert t["n"] > 1000 and t["mae"] > 0 and t["rmse"] >= t["mae"]
    assert metrics["winner"] == ("gat" if gat_beats_qna(metrics) else "qna")
    assert metrics["dataset"]["test"]["runs"] >= 1 and metrics["seed"] == 0


def test_predicts_one_cv_per_stage(gat):
    assert isinstance(gat, CvPredictor)
    p = gat.predict(_snapshot(5))
    assert [x.stage for x in p] == [f"s{i}" for i in range(5)]
    assert all(0.05 <= x.cv <= 20 and x.source == "gat" and "GAT" in x.reason for x in p)
    assert gat.predict(make_snapshot(stages=())) == ()


def test_deterministic(gat):
    import torch

    snap = _snapshot(7, cv0=3.0)
    first = gat.predict(snap)
    assert all(gat.predict(snap) == first for _ in range(5))
    threads = torch.get_num_threads()
    gat.predict_log_cv_torch(features(snap))
    assert torch.get_num_threads() == threads  # the torch forward runs on one thread, then restores
    other = GatPredictor()  # a fresh load gives the same answer
    assert other.predict(snap) == first


def test_cv_changes_the_output(gat):
    """The prototype's defect (CV added to softmax logits, a no-op) must be absent."""
    calm = gat.predict(_snapshot(4, cv0=1.0))
    bursty = gat.predict(_snapshot(4, cv0=4.0))
    assert bursty[0].cv > calm[0].cv
    assert bursty[1].cv > calm[1].cv  # the burst propagates downstream

    # Only the stage's own CV feature changes, every other input fixed: the output moves.
    rows = features(_snapshot(4))
    base = gat.predict_log_cv(rows)
    for k in range(4):
        bumped = [list(r) for r in rows]
        bumped[k][CV_FEATURE] += math.log(4.0)
        out = gat.predict_log_cv(bumped)
        assert abs(out[k] - base[k]) > 1e-3
        # ... and reaches a neighbour through the attention layers
        nb = k + 1 if k < 3 else k - 1
        assert abs(out[nb] - base[nb]) > 1e-6


def test_path_edges_both_directions_with_self_loops():
    src, dst = path_edges(3, offset=10)
    pairs = set(zip(src, dst, strict=True))
    assert pairs == {(10, 10), (11, 11), (12, 12), (10, 11), (11, 10), (11, 12), (12, 11)}
    assert path_edges(1) == ([0], [0])


def test_config_roundtrip():
    cfg = GatConfig(hidden=8, horizon_s=15.0)
    assert GatConfig.from_json(cfg.to_json()) == cfg


def test_missing_or_mismatched_weights(tmp_path):
    with pytest.raises(WeightsError, match="qna predictor"):
        GatPredictor(tmp_path).load()
    assert load_metrics(tmp_path) is None and not gat_beats_qna(None)
    d = shipped_dir()
    (tmp_path / MODEL_FILE).write_bytes((d / MODEL_FILE).read_bytes())
    cfg = GatConfig(hidden=8).to_json()
    (tmp_path / CONFIG_FILE).write_text(__import__("json").dumps(cfg))
    with pytest.raises(WeightsError, match=r"does not fit.*inp\.weight has shape \[16, 8\]"):
        GatPredictor(tmp_path).load()


def test_weights_are_checked_as_the_torch_module_would(tmp_path):
    """``load`` reads the weights without torch, so it checks what ``load_state_dict``
    (strict) would: every tensor present, none extra, each of its shape; and finite."""
    import numpy as np
    from safetensors.numpy import load_file, save_file

    d = shipped_dir()
    (tmp_path / CONFIG_FILE).write_bytes((d / CONFIG_FILE).read_bytes())
    good = load_file(str(d / MODEL_FILE))

    def fails(state, match):
        save_file(state, str(tmp_path / MODEL_FILE))
        with pytest.raises(WeightsError, match=match):
            GatPredictor(tmp_path).load()

    fails({k: v for k, v in good.items() if k != "conv2.att"}, r"missing tensors \['conv2\.att'\]")
    fails({**good, "conv3.bias": good["conv2.bias"]}, r"unexpected tensors \['conv3\.bias'\]")
    fails({**good, "head.bias": np.zeros(2, np.float32)}, r"head\.bias has shape \[2\]")
    bad = good["conv1.att"].copy()
    bad[0, 1, 2] = np.nan
    fails({**good, "conv1.att": bad}, r"conv1\.att holds values that are not finite")
    save_file(good, str(tmp_path / MODEL_FILE))
    GatPredictor(tmp_path).load()  # the same tensors back: loads


@pytest.mark.parametrize("cfg", [GatConfig(), GatConfig(hidden=8, heads=2), GatConfig(heads=1)])
def test_state_shapes_are_the_torch_module_s(cfg):
    from quartfaas.control.smoother.gat import build_model, state_shapes

    sd = build_model(cfg).state_dict()
    assert state_shapes(cfg) == {k: tuple(v.shape) for k, v in sd.items()}


def test_loading_and_predicting_import_neither_torch_nor_torch_geometric(tmp_path):
    """The controller's first tick used to build the torch module (~3 s importing torch
    and torch_geometric), and torch_geometric left two generated files in the temporary
    directory per process; loading and predicting now need neither."""
    code = (
        "import sys\n"
        "from quartfaas.control.smoother.gat import GatPredictor\n"
        "from quartfaas.control.snapshot import make_snapshot, make_stage\n"
        "stages = tuple(make_stage(f's{i}', i, arrival_rate=10.0, service_mean_s=0.05,"
        " ready_replicas=1) for i in range(3))\n"
        "p = GatPredictor().predict(make_snapshot(stages=stages, now=30.0))\n"
        "print(len(p), 'torch' in sys.modules, 'torch_geometric' in sys.modules)\n"
    )
    env = {**__import__("os").environ, "TMPDIR": str(tmp_path)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env
    )
    assert out.stdout.split() == ["3", "False", "False"]
    assert list(tmp_path.iterdir()) == []


def test_control_imports_without_torch():
    code = (
        "import sys, quartfaas.control.registry, quartfaas.control.quart, "
        "quartfaas.control.smoother.gat, quartfaas.control.smoother; "
        "print('torch' in sys.modules, 'torch_geometric' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


@pytest.mark.parametrize("n", [1, 2, 5, 21, 64])
def test_numpy_forward_equals_the_torch_module(gat, n):
    """predict_log_cv runs NumpyGat; it must give the torch module's outputs (1e-5)."""
    import numpy as np

    rng = np.random.default_rng(n)
    for _ in range(5):
        rows = rng.normal(0.0, 1.5, (n, len(FEATURE_NAMES))).tolist()
        fast, ref = gat.predict_log_cv(rows), gat.predict_log_cv_torch(rows)
        assert fast == pytest.approx(ref, abs=1e-5)
    rows = features(_snapshot(n, cv0=3.0), gat._qna.predict(_snapshot(n, cv0=3.0)))
    assert gat.predict_log_cv(rows) == pytest.approx(gat.predict_log_cv_torch(rows), abs=1e-5)


@pytest.mark.parametrize("n", [1, 2, 3, 21, 64])
def test_the_compiled_attention_equals_the_numpy_forward(gat, n):
    """``NumpyGat.__call__`` (linear maps in numpy, attention in ``_attend``) gives
    ``forward_arrays``'s numbers up to the order of the sums, at the path's ends too."""
    import numpy as np

    gat.load()
    model = gat._numpy
    rng = np.random.default_rng(100 + n)
    for _ in range(5):
        x = rng.normal(0.0, 2.0, (n, len(FEATURE_NAMES)))
        assert np.allclose(model(x), model.forward_arrays(x), rtol=0.0, atol=1e-12)

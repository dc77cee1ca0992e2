"""The learned CV predictor: a small graph attention network over the stage graph.

Neighbours: implements ``propagation.CvPredictor`` on the feature rows of
``propagation.features`` (the same function builds the training inputs in
``sim/smoother_data.py``); ``sim/train_smoother.py`` trains it and writes the files this
module loads; ``quart.py`` picks it over QNA only when its shipped held-out metrics say it
is better (``gat_beats_qna``).

**Model.** A path graph over the stages in pipeline order, edges in both directions plus a
self loop per stage. Each stage's 8 normalised features go through ``Linear(8, 16)`` + ELU,
two ``torch_geometric`` ``GATv2Conv`` layers (4 heads of 16 concatenated, then 1 head of 16),
each followed by ELU, and a linear head fed with the last hidden state *and* the raw features.
The output is a correction to QNA's log-CV (feature ``log_qna_cv``), so an untrained head
starts from the analytical answer and training only has to learn where QNA is wrong. The
target is ``ln CV`` of the stage's arrivals over the next ``horizon_s``. The CV enters as
node features (``log_cv``, ``log_upstream_cv``, ``log_qna_cv``) and so changes the output;
the prototype added it to every attention logit of a row, which a softmax cancels (reference
§2), and shipped random weights.

**Weights.** ``model.safetensors`` (state dict), ``config.json`` (``GatConfig``) and
``metrics.json`` (held-out errors, dataset and training settings) under
``quartfaas/data/smoother/``; a few tens of KB. They are loaded on the first ``predict`` or
``load`` (a Quart controller loads them when it is built, to fail early).

**Cost.** ``torch`` and ``torch_geometric`` are imported only to build the torch module
(training, and the reference forward ``predict_log_cv_torch``), never to load or run the
shipped model: ``load`` reads the weights with ``safetensors.numpy`` and checks their
names and shapes against ``state_shapes`` (the torch module's state dict, tested equal).
Loading used to build the module, so every Quart controller (``quart.choose_predictor``
loads the weights) imported torch and torch_geometric: ~3 s on a 2-vCPU host and ~290 MB
more memory in the gateway's process (``benchmarks/controller_start.py``), and
torch_geometric rendered each ``GATv2Conv``'s message passing into a new file in the
temporary directory and never removed it (``torch_geometric/template.py``: two files per
process, beside torch's empty ``torchinductor_<user>`` directory). Inference
(``predict_log_cv``) runs the same forward in numpy (``NumpyGat``, float64, attention over
the path graph's edge list): a few dozen array operations instead of the torch modules'
dispatch, which the simulator pays every tick. It equals the torch module's output
(``predict_log_cv_torch``, eval mode, no dropout) within 1e-5 (tests/unit/test_gat.py);
the same snapshot gives the same prediction.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from quartfaas.control.smoother.propagation import (
    CV_MAX,
    CV_MIN,
    FEATURE_NAMES,
    QNA_FEATURE,
    CvPrediction,
    QnaPredictor,
    _qna_and_features_array,
)
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.errors import WeightsError
from quartfaas.jit import jit

MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.json"
_LOG_MIN, _LOG_MAX = math.log(CV_MIN), math.log(CV_MAX)


@dataclass(frozen=True, slots=True)
class GatConfig:
    """Architecture and the data contract of a trained model (``config.json``)."""

    n_features: int = len(FEATURE_NAMES)
    hidden: int = 16
    heads: int = 4
    dropout: float = 0.0  # attention dropout while training; none at inference
    feature_names: tuple[str, ...] = FEATURE_NAMES
    qna_feature: int = QNA_FEATURE
    horizon_s: float = 20.0  # the target: arrival CV over the next horizon_s
    window_s: float = 10.0  # the snapshot window the features were measured over

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["feature_names"] = list(self.feature_names)
        return d

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GatConfig:
        known = {k: v for k, v in data.items() if k in cls.__dataclass_fields__}
        if "feature_names" in known:
            known["feature_names"] = tuple(known["feature_names"])
        return cls(**known)


def shipped_dir() -> Path:
    """The directory of the weights shipped in the package."""
    return Path(str(resources.files("quartfaas.data").joinpath("smoother")))


def load_metrics(directory: Path | None = None) -> dict[str, Any] | None:
    """``metrics.json`` of a trained model (no torch import); None when absent or unreadable."""
    path = (directory or shipped_dir()) / METRICS_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def gat_beats_qna(metrics: dict[str, Any] | None) -> bool:
    """True when the held-out (test) CV MAE of the GAT is below QNA's."""
    try:
        test = metrics["test"] if metrics else None
        return bool(test and float(test["gat"]["mae"]) < float(test["qna"]["mae"]))
    except (KeyError, TypeError, ValueError):
        return False


def path_edges(n: int, offset: int = 0) -> tuple[list[int], list[int]]:
    """Edges of a path graph over ``n`` stages: both directions and a self loop per stage."""
    src: list[int] = []
    dst: list[int] = []
    for i in range(n):
        src.append(offset + i)
        dst.append(offset + i)
        if i + 1 < n:
            src += [offset + i, offset + i + 1]
            dst += [offset + i + 1, offset + i]
    return src, dst


@cache
def _model_class() -> type:
    import torch
    from torch import nn
    from torch.nn import functional
    from torch_geometric.nn import GATv2Conv

    class CvGat(nn.Module):
        """Stage features -> predicted ln CV of arrivals over the next horizon."""

        def __init__(self, cfg: GatConfig) -> None:
            super().__init__()
            self.qna_feature = cfg.qna_feature
            self.inp = nn.Linear(cfg.n_features, cfg.hidden)
            self.conv1 = GATv2Conv(
                cfg.hidden,
                cfg.hidden,
                heads=cfg.heads,
                concat=True,
                dropout=cfg.dropout,
                add_self_loops=False,  # path_edges has them, so batching stays explicit
            )
            self.conv2 = GATv2Conv(
                cfg.hidden * cfg.heads,
                cfg.hidden,
                heads=1,
                concat=False,
                dropout=cfg.dropout,
                add_self_loops=False,
            )
            self.head = nn.Linear(cfg.hidden + cfg.n_features, 1)

        def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
            h = functional.elu(self.inp(x))
            h = functional.elu(self.conv1(h, edge_index))
            h = functional.elu(self.conv2(h, edge_index))
            out = self.head(torch.cat([h, x], dim=-1)).squeeze(-1)
            return x[:, self.qna_feature] + out

    return CvGat


def build_model(cfg: GatConfig) -> Any:
    """A fresh (untrained) ``CvGat`` module; imports torch."""
    return _model_class()(cfg)


def state_shapes(cfg: GatConfig) -> dict[str, tuple[int, ...]]:
    """The names and shapes of ``CvGat``'s state dict for ``cfg``, without torch
    (``tests/unit/test_gat.py`` compares them with ``build_model(cfg).state_dict()``)."""
    f, h, heads = cfg.n_features, cfg.hidden, cfg.heads
    shapes: dict[str, tuple[int, ...]] = {"inp.weight": (h, f), "inp.bias": (h,)}
    for name, width_in, n_heads, width_out in (
        ("conv1", h, heads, h * heads),
        ("conv2", h * heads, 1, h),
    ):
        for side in ("l", "r"):
            shapes[f"{name}.lin_{side}.weight"] = (h * n_heads, width_in)
            shapes[f"{name}.lin_{side}.bias"] = (h * n_heads,)
        shapes[f"{name}.att"] = (1, n_heads, h)
        shapes[f"{name}.bias"] = (width_out,)
    shapes["head.weight"] = (1, h + f)
    shapes["head.bias"] = (1,)
    return shapes


def _state_mismatch(state: dict[str, Any], cfg: GatConfig) -> str | None:
    """Why ``state`` cannot be ``CvGat``'s for ``cfg`` (names, shapes, finite values), as
    ``load_state_dict(strict=True)`` would refuse it; None when it fits."""
    want = state_shapes(cfg)
    missing = sorted(want.keys() - state.keys())
    extra = sorted(state.keys() - want.keys())
    if missing or extra:
        return f"missing tensors {missing}, unexpected tensors {extra}"
    for key, shape in want.items():
        got = tuple(state[key].shape)
        if got != shape:
            return f"{key} has shape {list(got)}, {cfg} needs {list(shape)}"
        if not np.isfinite(state[key]).all():
            return f"{key} holds values that are not finite"
    return None


def edge_index_tensor(n: int) -> Any:
    import torch

    src, dst = path_edges(n)
    return torch.tensor([src, dst], dtype=torch.long)


def _elu(x: Any) -> Any:
    return np.where(x > 0, x, np.expm1(np.minimum(x, 0.0)))


class NumpyGat:
    """The ``CvGat`` forward in numpy, from its state dict (inference only).

    ``GATv2Conv`` (torch_geometric 2.x, ``share_weights=False``, no residual, no edge
    features): ``x_l = W_l x + b_l`` and ``x_r = W_r x + b_r`` split into heads; for an
    edge j -> i the logit is ``att . LeakyReLU_0.2(x_l[j] + x_r[i])``, softmax over i's
    incoming edges, output ``sum_j alpha_ij x_l[j]`` (heads concatenated, or averaged for
    one head) plus ``bias``; softmax and sums over each node's incoming edges by scatter
    (``ufunc.at``), O(edges).
    """

    def __init__(self, state: dict[str, Any], cfg: GatConfig) -> None:
        self.cfg = cfg
        self.w = {k: np.asarray(v, dtype=np.float64) for k, v in state.items()}
        self._masks: dict[int, Any] = {}  # n -> _edges(n)
        self._args: tuple[Any, ...] | None = None  # the layers' weights, contiguous

    def _edges(self, n: int) -> Any:
        """``(nb, missing)``: each stage's incoming neighbours on the path graph of
        ``path_edges`` (itself, the stage before, the stage after: ``[n, 3]``, a missing
        one points at the stage itself and is masked out by ``missing``)."""
        e = self._masks.get(n)
        if e is None:
            i = np.arange(n)
            nb = np.stack([i, np.maximum(i - 1, 0), np.minimum(i + 1, n - 1)], axis=1)
            missing = np.zeros((n, 3), dtype=bool)
            missing[0, 1] = True
            missing[n - 1, 2] = True
            e = self._masks[n] = (nb, missing[:, :, None])
        return e

    def _conv(self, name: str, h: Any, heads: int, concat: bool, edges: Any) -> Any:
        """One GATv2 layer (``torch_geometric.nn.GATv2Conv``'s arithmetic) on the path
        graph: every stage has at most three incoming edges, so the softmax over them and
        the weighted sum are dense ``[stage, neighbour, head]`` operations (no scatter)."""
        w = self.w
        n = h.shape[0]
        nb, missing = edges
        xl = (h @ w[f"{name}.lin_l.weight"].T + w[f"{name}.lin_l.bias"]).reshape(n, heads, -1)
        xr = (h @ w[f"{name}.lin_r.weight"].T + w[f"{name}.lin_r.bias"]).reshape(n, heads, -1)
        src = xl[nb]  # [stage, neighbour, head, channel]: message neighbour -> stage
        s = src + xr[:, None]
        s = np.where(s > 0, s, 0.2 * s)
        logits = np.einsum("inhc,hc->inh", s, w[f"{name}.att"][0])
        logits = np.where(missing, -np.inf, logits)
        alpha = np.exp(logits - logits.max(axis=1, keepdims=True))
        alpha /= alpha.sum(axis=1, keepdims=True)
        out = np.einsum("inh,inhc->ihc", alpha, src)
        out = out.reshape(n, -1) if concat else out.mean(axis=1)
        return out + w[f"{name}.bias"]

    def __call__(self, x: Any) -> Any:
        """The predicted ln CV per stage (rows of ``x``): the linear maps in numpy (BLAS),
        each GATv2 layer's attention in one compiled kernel (``_attend``) instead of ~20
        numpy calls on arrays of a few hundred numbers. ``forward_arrays`` is the same
        forward in numpy alone (the same numbers up to the order of the sums)."""
        w = self.w
        if self._args is None:
            self._args = tuple(
                np.ascontiguousarray(w[f"{name}.{part}"])
                for name in ("conv1", "conv2")
                for part in ("lin_l.weight", "lin_l.bias", "lin_r.weight", "lin_r.bias",
                             "att", "bias")
            )  # fmt: skip
        l1, lb1, r1, rb1, a1, b1, l2, lb2, r2, rb2, a2, b2 = self._args
        h = _elu(x @ w["inp.weight"].T + w["inp.bias"])
        h = _attend(h @ l1.T + lb1, h @ r1.T + rb1, a1, b1, True)
        h = _attend(h @ l2.T + lb2, h @ r2.T + rb2, a2, b2, False)
        out = np.concatenate([h, x], axis=1) @ w["head.weight"].T + w["head.bias"]
        return x[:, self.cfg.qna_feature] + out[:, 0]

    def forward_arrays(self, x: Any) -> Any:
        """``__call__`` as numpy array operations (the reference the kernel is tested
        against: the same numbers up to the order of the sums)."""
        w = self.w
        edges = self._edges(x.shape[0])
        h = _elu(x @ w["inp.weight"].T + w["inp.bias"])
        h = _elu(self._conv("conv1", h, self.cfg.heads, True, edges))
        h = _elu(self._conv("conv2", h, 1, False, edges))
        out = np.concatenate([h, x], axis=1) @ w["head.weight"].T + w["head.bias"]
        return x[:, self.cfg.qna_feature] + out[:, 0]


@jit
def _attend(xl: Any, xr: Any, att: Any, bias: Any, concat: bool) -> Any:
    """The rest of a GATv2 layer on the path graph after its two linear maps (``xl``,
    ``xr``: ``[stage, heads·channels]``), as ``NumpyGat._conv`` computes it: each stage's
    incoming edges are itself and its neighbours; per head the logits ``att ·
    LeakyReLU_0.2(xl[j] + xr[i])``, their softmax, and the weighted sum of ``xl[j]``
    (heads concatenated, or averaged); then ``bias`` and ELU. ``att``: ``[1, heads,
    channels]``."""
    n = xl.shape[0]
    heads = att.shape[1]
    ch = att.shape[2]
    width = heads * ch if concat else ch
    out = np.zeros((n, width))
    weight = np.empty(3)
    nb = (0, -1, 1)  # incoming edges: the stage itself, the one before, the one after
    for i in range(n):
        for hd in range(heads):
            base = hd * ch
            top = -np.inf
            for e in range(3):
                j = i + nb[e]
                if j < 0 or j >= n:  # the first stage has no stage before it, the last none after
                    weight[e] = -np.inf
                    continue
                acc = 0.0
                for c in range(ch):
                    v = xl[j, base + c] + xr[i, base + c]
                    acc += (v if v > 0 else 0.2 * v) * att[0, hd, c]
                weight[e] = acc
                top = max(top, acc)
            total = 0.0
            for e in range(3):
                weight[e] = math.exp(weight[e] - top) if weight[e] > -np.inf else 0.0
                total += weight[e]
            at = base if concat else 0
            for e in range(3):
                if weight[e] == 0.0:
                    continue
                j = i + nb[e]
                a = weight[e] / total if concat else weight[e] / total / heads
                for c in range(ch):
                    out[i, at + c] += a * xl[j, base + c]
        for c in range(width):
            v = out[i, c] + bias[c]
            out[i, c] = v if v > 0 else math.expm1(min(v, 0.0))
    return out


class GatPredictor:
    """``CvPredictor`` backed by trained weights (the shipped ones unless ``directory``)."""

    name = "gat"

    def __init__(self, directory: Path | str | None = None) -> None:
        self.directory = Path(directory) if directory is not None else shipped_dir()
        self._model: Any = None  # the torch module, built only for predict_log_cv_torch
        self._numpy: NumpyGat | None = None
        self._config: GatConfig | None = None
        self._edges: dict[int, Any] = {}
        self._qna = QnaPredictor()

    @property
    def config(self) -> GatConfig:
        self.load()
        assert self._config is not None
        return self._config

    @property
    def metrics(self) -> dict[str, Any] | None:
        return load_metrics(self.directory)

    def load(self) -> None:
        """Read config and weights (once, no torch import); raises ``WeightsError`` if they
        are unusable."""
        if self._numpy is not None:
            return
        from safetensors import SafetensorError
        from safetensors.numpy import load_file

        try:
            raw = json.loads((self.directory / CONFIG_FILE).read_text(encoding="utf-8"))
            cfg = GatConfig.from_json(raw)
            state = load_file(str(self.directory / MODEL_FILE))
        except (OSError, ValueError, TypeError, SafetensorError) as exc:
            raise WeightsError(
                f"cannot load the smoother GAT from {self.directory}: {exc}; retrain with "
                "`quartfaas train-smoother` or use the qna predictor"
            ) from exc
        if tuple(cfg.feature_names) != FEATURE_NAMES:
            raise WeightsError(
                f"{self.directory / CONFIG_FILE} was trained on features {cfg.feature_names}, "
                f"this code builds {FEATURE_NAMES}; retrain the GAT"
            )
        why = _state_mismatch(state, cfg)
        if why is not None:
            raise WeightsError(f"{self.directory / MODEL_FILE} does not fit {cfg}: {why}")
        self._config = cfg
        self._numpy = NumpyGat(state, cfg)

    def _torch_model(self) -> Any:
        """The torch module with the loaded weights (built on first use; imports torch)."""
        self.load()
        if self._model is None:
            import torch

            assert self._config is not None and self._numpy is not None
            model = build_model(self._config)
            # NumpyGat's float64 copies of the float32 weights: narrowing them back is exact
            state = {k: torch.from_numpy(v.astype(np.float32)) for k, v in self._numpy.w.items()}
            model.load_state_dict(state)
            model.eval()
            self._model = model
        return self._model

    def _edge_index(self, n: int) -> Any:
        ei = self._edges.get(n)
        if ei is None:
            ei = self._edges[n] = edge_index_tensor(n)
        return ei

    def predict_log_cv(self, rows: list[list[float]]) -> list[float]:
        """The model's ln CV per stage for ready-made feature rows (clipped to the CV range)."""
        if not len(rows):
            return []
        return self._log_cv(np.asarray(rows, dtype=np.float64))

    def _log_cv(self, x: npt.NDArray[np.float64]) -> list[float]:
        """``predict_log_cv`` of the rows of ``x``."""
        self.load()
        if not x.shape[0]:
            return []
        assert self._numpy is not None
        return [min(max(v, _LOG_MIN), _LOG_MAX) for v in self._numpy(x).tolist()]

    def predict_log_cv_torch(self, rows: list[list[float]]) -> list[float]:
        """``predict_log_cv`` through the torch module (the reference the numpy one matches)."""
        import torch

        model = self._torch_model()
        if not rows:
            return []
        x = torch.tensor(rows, dtype=torch.float32)
        # One intra-op thread: a ~5k-parameter model gains nothing from more, and each of
        # its dozens of small ops waits at an OpenMP barrier for the other threads. When the
        # cores are busy (the simulator, other processes) that wait made one 21-stage
        # inference take ~150 ms instead of ~1 ms. The process's setting is restored.
        threads = torch.get_num_threads()
        if threads != 1:
            torch.set_num_threads(1)
        try:
            with torch.inference_mode():
                y = model(x, self._edge_index(len(rows)))
        finally:
            if threads != 1:
                torch.set_num_threads(threads)
        return [min(max(float(v), _LOG_MIN), _LOG_MAX) for v in y.tolist()]

    def predict(self, snapshot: PipelineSnapshot) -> tuple[CvPrediction, ...]:
        if not snapshot.stages:
            return ()
        qna, rows = _qna_and_features_array(snapshot)  # only the QNA CVs and rates are read
        logs = self._log_cv(rows)
        over = f"over the next {self.config.horizon_s:g}s"
        out = []
        for q, v in zip(qna, logs, strict=True):
            cv = math.exp(v)
            out.append(CvPrediction(q.stage, cv, q.rate_per_s, "gat",
                                    f"GAT: CV {cv:.2f} {over} (QNA {q.cv:.2f})"))  # fmt: skip
        return tuple(out)


__all__ = [
    "CONFIG_FILE",
    "METRICS_FILE",
    "MODEL_FILE",
    "GatConfig",
    "GatPredictor",
    "NumpyGat",
    "build_model",
    "edge_index_tensor",
    "gat_beats_qna",
    "load_metrics",
    "path_edges",
    "shipped_dir",
    "state_shapes",
]

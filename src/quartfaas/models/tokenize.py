"""Text -> ``input_ids`` / ``attention_mask`` (numpy int64) for stage 0. No torch here.

The gateway tokenizes requests before queueing them for stage 0, so this module must stay
light: numpy always, the ``tokenizers`` library only for MiniLM (imported on first use).

* MiniLM: the package's ``tokenizer.json`` (BERT WordPiece, lower-case, [CLS] ... [SEP]),
  truncated to the spec's ``max_seq_len``, padded with 0 to the batch's longest text.
  Texts are encoded one by one: ``encode_batch`` would start a Rust thread pool, and the
  tokenizers library then warns and disables itself in any process forked afterwards.
* BERT / synthetic (seeded weights, so no real vocabulary): lower-case, split on
  non-alphanumerics, each word hashed (blake2b, stable across runs and hosts) into
  [1000, vocab); [CLS]=101, [SEP]=102, [PAD]=0 as in BERT. Vocabularies under 2000 use
  [CLS]=1, [SEP]=2 and words in [3, vocab).

Neighbours: ``stage.py`` validates what this produces; ``minilm.py`` finds the package.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from quartfaas.errors import ModelInputError
from quartfaas.spec import MiniLMModelSpec, ModelSpec, PipelineSpec, SyntheticModelSpec

PAD_ID = 0
_WORD_RE = re.compile(r"[^\W_]+")


@dataclass(frozen=True)
class TokenBatch:
    """A padded batch: ``input_ids`` and ``attention_mask``, both int64 [batch, seq_len]."""

    input_ids: np.ndarray
    attention_mask: np.ndarray

    def as_inputs(self) -> dict[str, np.ndarray]:
        """The stage-0 input dict."""
        return {"input_ids": self.input_ids, "attention_mask": self.attention_mask}


class Tokenizer(Protocol):
    vocab_size: int
    max_seq_len: int

    def encode(self, texts: Sequence[str]) -> TokenBatch: ...


def _check_texts(texts: Sequence[str]) -> None:
    if isinstance(texts, str):
        raise ModelInputError("encode takes a list of texts, got a single string")
    if len(texts) == 0:
        raise ModelInputError("encode needs at least one text")
    for i, t in enumerate(texts):
        if not isinstance(t, str):
            raise ModelInputError(f"text {i} must be a string, got {type(t).__name__}")


def _pad(rows: list[list[int]]) -> TokenBatch:
    width = max(len(r) for r in rows)
    ids = np.full((len(rows), width), PAD_ID, dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = row
        mask[i, : len(row)] = 1
    return TokenBatch(ids, mask)


class SimpleTokenizer:
    """Deterministic word-hash tokenizer for models with seeded (meaningless) weights."""

    def __init__(self, vocab_size: int, max_seq_len: int) -> None:
        if vocab_size < 4:
            raise ValueError(f"vocab_size must be >= 4, got {vocab_size}")
        self.vocab_size = vocab_size
        self.max_seq_len = max_seq_len
        if vocab_size >= 2000:
            self.cls_id, self.sep_id, self.first_word_id = 101, 102, 1000
        else:
            self.cls_id, self.sep_id, self.first_word_id = 1, 2, 3

    def word_id(self, word: str) -> int:
        digest = hashlib.blake2b(word.encode(), digest_size=8).digest()
        span = self.vocab_size - self.first_word_id
        return self.first_word_id + int.from_bytes(digest, "little") % span

    def tokens(self, text: str) -> list[int]:
        words = _WORD_RE.findall(text.lower())
        room = max(self.max_seq_len - 2, 0)  # [CLS] and [SEP] count, as in HF truncation
        ids = [self.cls_id, *(self.word_id(w) for w in words[:room]), self.sep_id]
        return ids[: self.max_seq_len]

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        _check_texts(texts)
        return _pad([self.tokens(t) for t in texts])


class MiniLMTokenizer:
    """all-MiniLM-L6-v2's WordPiece tokenizer from the package's tokenizer.json."""

    def __init__(self, max_seq_len: int) -> None:
        from tokenizers import Tokenizer as HFTokenizer

        from quartfaas.models import minilm

        path = minilm.model_dir() / "tokenizer.json"
        tok: Any = HFTokenizer.from_file(str(path))
        tok.no_padding()  # the file pads to a fixed 128; we pad to the batch's longest
        tok.enable_truncation(max_length=max_seq_len)
        self._tok = tok
        self.vocab_size = minilm.VOCAB_SIZE
        self.max_seq_len = max_seq_len

    def encode(self, texts: Sequence[str]) -> TokenBatch:
        _check_texts(texts)
        # tokenizers does not truncate below its two special tokens; cut what is left.
        return _pad([list(self._tok.encode(t).ids)[: self.max_seq_len] for t in texts])

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens (lower-cased, as encoded)."""
        return str(self._tok.decode(list(ids), skip_special_tokens=True))


def tokenizer_for(spec: PipelineSpec | ModelSpec) -> Tokenizer:
    """The tokenizer that feeds stage 0 of ``spec`` (a pipeline or just its model)."""
    model = spec.model if isinstance(spec, PipelineSpec) else spec
    if isinstance(model, MiniLMModelSpec):
        return MiniLMTokenizer(model.max_seq_len)
    if isinstance(model, SyntheticModelSpec):
        from quartfaas.models.stage import SYNTHETIC_VOCAB_SIZE

        return SimpleTokenizer(SYNTHETIC_VOCAB_SIZE, model.max_seq_len)
    return SimpleTokenizer(model.vocab_size, model.max_seq_len)

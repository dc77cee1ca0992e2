"""Input parsing: request bodies within limits, JSON, tokenising, the first stage's frame.

``POST /function/<pipeline>`` takes ``{"inputs": "<text>" | ["<text>", ...] | [[token
ids]]}``. Texts go through the pipeline's tokenizer; token id rows are checked against
the first stage's input contract (sequence length, vocabulary). Either way the result is
one tensor frame (``input_ids``, ``attention_mask``) for stage 0. Bad input is a
``BadRequest`` that says what is wrong.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
from aiohttp import web

from quartfaas.dataplane import framing
from quartfaas.errors import BadRequest, PayloadTooLarge, QuartfaasError
from quartfaas.spec import PipelineSpec

MAX_BATCH = 64


async def read_body(request: web.Request, limit: int) -> bytes:
    """The request body; ``PayloadTooLarge`` if its declared length exceeds ``limit``."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
    return await request.read()


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"body is not valid JSON: {exc}") from None


class InputEncoder:
    """Turns a request's ``inputs`` into stage 0's frame (tokenizer loaded on first use)."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self._tokenizer: Any = None
        self._contract: Any = None

    def input_contract(self) -> Any:
        """What the first stage accepts (vocabulary, sequence length); torch-free."""
        if self._contract is None:
            from quartfaas.models import input_contract

            self._contract = input_contract(self.spec, 0)
        return self._contract

    def tokenizer(self) -> Any:
        if self._tokenizer is None:
            from quartfaas.models import tokenizer_for

            self._tokenizer = tokenizer_for(self.spec)
        return self._tokenizer

    def encode(self, payload: Any) -> bytes:
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise BadRequest('expected a JSON object {"inputs": "<text>" | [[token ids]]}')
        inputs = payload["inputs"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest('"inputs" must be a non-empty string or list')
        if len(inputs) > MAX_BATCH:
            raise BadRequest(f'"inputs" holds {len(inputs)} items; at most {MAX_BATCH} per request')
        if all(isinstance(x, str) for x in inputs):
            if any(not x.strip() for x in inputs):
                raise BadRequest('"inputs" texts must not be empty')
            try:
                batch = self.tokenizer().encode(inputs)
                ids, mask = batch.input_ids, batch.attention_mask
            except QuartfaasError as exc:
                raise BadRequest(str(exc)) from None
        elif all(isinstance(x, list) for x in inputs):
            ids, mask = self._token_arrays(inputs)
        else:
            raise BadRequest('"inputs" must be a text, a list of texts, or [[token ids]]')
        return framing.encode_numpy({"input_ids": ids, "attention_mask": mask})

    def _token_arrays(self, rows: list[list[Any]]) -> tuple[np.ndarray, np.ndarray]:
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise BadRequest(f"token id rows must have equal lengths, got {sorted(lengths)}")
        (length,) = lengths
        contract = self.input_contract()
        max_len = contract.max_seq_len
        if not 1 <= length <= max_len:
            raise BadRequest(f"token id rows have length {length}; allowed 1..{max_len}")
        if not all(isinstance(t, int) and not isinstance(t, bool) for r in rows for t in r):
            raise BadRequest("token ids must be integers")
        ids = np.asarray(rows, dtype=np.int64)
        vocab = contract.vocab_size
        if ids.min() < 0 or ids.max() >= vocab:
            raise BadRequest(f"token ids must be in [0, {vocab}); got {ids.min()}..{ids.max()}")
        return ids, np.ones_like(ids)

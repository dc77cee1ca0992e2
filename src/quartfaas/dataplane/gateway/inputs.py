"""Input parsing: request bodies within limits, JSON, tokenising, the first stage's frame.

``POST /function/<pipeline>`` takes ``{"inputs": "<text>" | ["<text>", ...] | [[token
ids]]}``. Texts go through the pipeline's tokenizer; token id rows are checked against
the first stage's input contract (sequence length, vocabulary). Either way the result is
one tensor frame (``input_ids``, ``attention_mask``) for stage 0. Bad input is a
``BadRequest`` that says what is wrong, never an unhandled exception: a 5000-digit number
(``ValueError``), 100k-deep nesting (``RecursionError``) and integers beyond int64 are 400s.

Bodies over ``INLINE_BYTES`` are parsed and tokenised in a separate process (issue #13,
item 6): ``json.loads`` and the tokenizer's regex hold the GIL for the whole call (0.65 s
for 21 MB of token ids, 0.7 s to tokenise 16 MB of text on this machine), so a thread
would still stall every other client; a process does not. The pool is started on the
first large body, has ``PARSE_PROCESSES`` workers (large bodies beyond them wait their
turn, bounded by the gateway's byte budget) and is stopped by ``close``.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

import numpy as np
from aiohttp import web

from quartfaas.dataplane import framing
from quartfaas.errors import (
    BadRequest,
    GatewayError,
    PayloadTooLarge,
    QuartfaasError,
    RequestTimeout,
)
from quartfaas.spec import GatewaySpec, PipelineSpec, parse_spec

_BODY_TIMEOUT_S: float = GatewaySpec.model_fields["body_timeout_s"].default
INLINE_BYTES = 64 * 1024  # parsed on the event loop below this: ~1 ms of work
PARSE_PROCESSES = 1


async def read_body(request: web.Request, limit: int, timeout_s: float = _BODY_TIMEOUT_S) -> bytes:
    """The request body; ``PayloadTooLarge`` if its declared length exceeds ``limit``,
    ``RequestTimeout`` (408) if it does not arrive within ``timeout_s``."""
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"request body of {request.content_length} bytes exceeds {limit}")
    try:
        async with asyncio.timeout(timeout_s):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"request body not received within {timeout_s:g} s (gateway.body_timeout_s)"
        ) from None


def check_frame(raw: bytes, max_bytes: int, max_batch: int) -> None:
    """A stage's frame body: well formed (``FramingError``), at most ``max_batch`` rows
    (``PayloadTooLarge``, read from the header before anything is decoded)."""
    rows = framing.batch_size(framing.parse_header(raw, max_bytes))
    if rows > max_batch:
        raise PayloadTooLarge(f"frame batch of {rows} rows exceeds {max_batch} (gateway.max_batch)")


def parse_json(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except RecursionError:
        raise BadRequest("body is not valid JSON: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over 4300 digits
        raise BadRequest(f"body is not valid JSON: {_short(str(exc))}") from None


def _short(text: str, most: int = 200) -> str:
    return text if len(text) <= most else text[: most - 3] + "..."


class InputEncoder:
    """Turns a request's ``inputs`` into stage 0's frame (tokenizer loaded on first use)."""

    def __init__(self, spec: PipelineSpec) -> None:
        self.spec = spec
        self.max_batch = spec.gateway.max_batch
        self._tokenizer: Any = None
        self._contract: Any = None
        self._pool: ProcessPoolExecutor | None = None
        self._spec_json = spec.model_dump_json()

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

    async def encode_body(self, raw: bytes) -> bytes:
        """Stage 0's frame for a JSON body; large bodies are parsed off the event loop."""
        if len(raw) <= INLINE_BYTES:
            return self.encode(parse_json(raw))
        if self._pool is None:
            # spawn, not fork: the gateway has threads and an event loop a fork would copy.
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(PARSE_PROCESSES, mp_context=ctx)
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, _encode_in_child, self._spec_json, raw)
        except BrokenProcessPool:  # the parse process died (OOM killer): a fresh one next time
            self._pool = None
            raise GatewayError("the input parsing process died; retry the request") from None

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None

    def encode(self, payload: Any) -> bytes:
        if not isinstance(payload, dict) or "inputs" not in payload:
            raise BadRequest('expected a JSON object {"inputs": "<text>" | [[token ids]]}')
        inputs = payload["inputs"]
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs:
            raise BadRequest('"inputs" must be a non-empty string or list')
        if len(inputs) > self.max_batch:
            raise BadRequest(
                f'"inputs" holds {len(inputs)} items; at most {self.max_batch} per request '
                "(gateway.max_batch)"
            )
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
        # Range-checked as Python ints: np.asarray raises OverflowError beyond int64.
        vocab = contract.vocab_size
        low = min(min(r) for r in rows)
        high = max(max(r) for r in rows)
        if low < 0 or high >= vocab:
            raise BadRequest(
                f"token ids must be in [0, {vocab}); got {_short(str(low), 40)}.."
                f"{_short(str(high), 40)}"
            )
        ids = np.asarray(rows, dtype=np.int64)
        return ids, np.ones_like(ids)


_CHILD_ENCODERS: dict[str, InputEncoder] = {}


def _encode_in_child(spec_json: str, raw: bytes) -> bytes:
    """In a parse process: one body to stage 0's frame (``BadRequest`` pickles back)."""
    encoder = _CHILD_ENCODERS.get(spec_json)
    if encoder is None:
        encoder = InputEncoder(parse_spec(json.loads(spec_json), source="gateway"))
        _CHILD_ENCODERS.clear()
        _CHILD_ENCODERS[spec_json] = encoder
    return encoder.encode(parse_json(raw))

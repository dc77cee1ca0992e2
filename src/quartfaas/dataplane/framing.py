"""Tensor framing: how activations travel between the gateway and stage workers.

A frame is exactly the safetensors format (never pickle), so any safetensors reader can
decode it and the parser that checks it is the audited Rust one::

    bytes 0..8    little-endian u64 N: length of the JSON header
    bytes 8..8+N  JSON header: {"<name>": {"dtype": "F32", "shape": [B, T, H],
                                "data_offsets": [begin, end]}, ...,
                                "__metadata__": {"<key>": "<str>", ...}}   (optional)
    bytes 8+N..   the tensors' raw little-endian bytes, back to back

Content-Type on the wire: ``application/vnd.quartfaas.tensors`` (safetensors bytes).
The gateway never decodes intermediate activations; it forwards bytes from stage to
stage and decodes only the last stage's float32 output with numpy (``decode_numpy``).
Workers decode to torch (``decode_torch``), which also handles bfloat16.

Neighbours: ``dataplane/worker.py`` (decodes inputs, encodes outputs) and
``dataplane/gateway/`` (``inputs.py`` encodes the tokenised request, ``pipeline.py``
decodes the result).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from quartfaas.errors import FramingError

if TYPE_CHECKING:  # torch is heavy; the gateway never imports it
    import torch

CONTENT_TYPE = "application/vnd.quartfaas.tensors"

_DTYPE_SIZES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2,
    "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
}  # fmt: skip
_MAX_HEADER = 1 << 20
_INT64_MAX = (1 << 63) - 1  # torch sizes and the safetensors parser's counts are 64-bit


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_header(body: bytes, max_bytes: int | None = None) -> dict[str, Any]:
    """Validate a frame's framing (sizes, offsets, dtypes) and return its JSON header.

    Cheap: it reads only the header. Raises ``FramingError`` with what is wrong.
    """
    if max_bytes is not None and len(body) > max_bytes:
        raise FramingError(f"frame of {len(body)} bytes exceeds the limit of {max_bytes}")
    if len(body) < 8:
        raise FramingError(f"frame of {len(body)} bytes is shorter than its 8-byte length prefix")
    (n,) = struct.unpack_from("<Q", body, 0)
    if n > _MAX_HEADER or 8 + n > len(body):
        raise FramingError(f"frame header length {n} does not fit a body of {len(body)} bytes")
    try:
        header = json.loads(bytes(body[8 : 8 + n]))
    except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, over 4300 digits
        raise FramingError(f"frame header is not valid JSON: {exc}") from None
    except RecursionError:
        raise FramingError("frame header is not valid JSON: nested too deeply") from None
    if not isinstance(header, dict):
        raise FramingError("frame header must be a JSON object")
    data_len = len(body) - 8 - n
    for name, info in header.items():
        if name == "__metadata__":
            if not isinstance(info, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in info.items()
            ):
                raise FramingError("frame __metadata__ must map strings to strings")
            continue
        if not isinstance(info, dict):
            raise FramingError(f"tensor {name!r}: header entry must be an object")
        dtype, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
        if dtype not in _DTYPE_SIZES:
            raise FramingError(
                f"tensor {name!r}: dtype {dtype!r} is not one of {sorted(_DTYPE_SIZES)}"
            )
        if not isinstance(shape, list) or not all(_is_int(d) and d >= 0 for d in shape):
            raise FramingError(f"tensor {name!r}: shape {shape!r} must be a list of ints >= 0")
        count = _element_count(shape)
        if count is None or count * _DTYPE_SIZES[dtype] > _INT64_MAX:
            raise FramingError(f"tensor {name!r}: shape {_short(shape)} overflows a 64-bit size")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(_is_int(o) for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise FramingError(f"tensor {name!r}: data_offsets {offsets!r} outside the body")
        want = count * _DTYPE_SIZES[dtype]
        if offsets[1] - offsets[0] != want:
            raise FramingError(
                f"tensor {name!r}: {offsets[1] - offsets[0]} bytes given, "
                f"shape {shape} of {dtype} needs {want}"
            )
    return header


def batch_size(header: Mapping[str, Any]) -> int:
    """The frame's batch: the largest first dimension of its tensors (0 if none has one).

    Checked against ``gateway.max_batch`` from the header alone, before any tensor is
    decoded or any forward pass allocates activations for it (issue #13, item 5).
    """
    most = 0
    for name, t in header.items():
        if name != "__metadata__" and isinstance(t, dict) and t.get("shape"):
            most = max(most, int(t["shape"][0]))
    return most


def _element_count(shape: list[int]) -> int | None:
    """Elements of ``shape``, or ``None`` past int64. Python ints, not numpy's int64 (whose
    product wraps: 2**31 * 2**31 * 4 became 0 and matched an empty tensor), and an early
    stop, so a header of thousands of huge dimensions costs no big-number arithmetic."""
    if any(d > _INT64_MAX for d in shape):
        return None
    if 0 in shape:
        return 0
    count = 1
    for d in shape:
        count *= d
        if count > _INT64_MAX:
            return None
    return count


def _short(shape: list[int]) -> str:
    """A shape for an error message: a 5000-digit dimension is not quoted in full."""
    text = str(shape)
    return text if len(text) <= 120 else text[:117] + "..."


def encode_numpy(tensors: Mapping[str, np.ndarray], meta: Mapping[str, str] | None = None) -> bytes:
    from safetensors.numpy import save

    arrays = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    return save(arrays, metadata=dict(meta) if meta else None)


def decode_numpy(body: bytes, max_bytes: int | None = None) -> dict[str, np.ndarray]:
    """Decode a frame to numpy arrays (not for bfloat16, which numpy lacks)."""
    header = parse_header(body, max_bytes)
    if any(isinstance(v, dict) and v.get("dtype") == "BF16" for v in header.values()):
        raise FramingError("bfloat16 tensors cannot be decoded with numpy; use decode_torch")
    from safetensors.numpy import load

    try:
        return load(bytes(body))
    except Exception as exc:  # the Rust parser's own checks
        raise FramingError(f"frame is not valid safetensors: {exc}") from None


def encode_torch(
    tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str] | None = None
) -> bytes:
    from safetensors.torch import save

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    return save(cpu, metadata=dict(meta) if meta else None)


def decode_torch(body: bytes, max_bytes: int | None = None) -> dict[str, torch.Tensor]:
    parse_header(body, max_bytes)
    from safetensors.torch import load

    try:
        return load(bytes(body))
    except Exception as exc:
        raise FramingError(f"frame is not valid safetensors: {exc}") from None

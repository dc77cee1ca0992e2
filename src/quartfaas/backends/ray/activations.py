"""Activations between Ray stages: tensor frames as numpy arrays, read in place.

A frame (``dataplane/framing.py``: safetensors bytes, never pickle) crosses to a stage
actor as a one-dimensional ``uint8`` numpy array over the frame's bytes
(``to_object``; no copy). Ray serialises a numpy array with pickle protocol 5 and its
data as an *out-of-band* buffer written straight into the object store; a reader on the
same node gets an array that is a read-only view on the object store's shared memory
(zero-copy), and Ray moves the object when the reader is on another node. A ``bytes``
object, by contrast, is pickled in band and rebuilt in the reader's heap (one copy per
hop). What Ray unpickles is the small in-band part that Ray itself wrote for an array
(dtype and shape); the user's bytes are only ever raw buffer contents, parsed by the
framing code.

Objects under Ray's inline limit (``max_direct_call_object_size``, 100 KiB by default)
are not put in the object store: they travel with the call and are copied, which costs
nothing at that size.

- ``to_object(frame)``: bytes/bytearray/memoryview/ndarray -> the ``uint8`` array to send.
- ``frame_view(obj)``: what an actor received -> a ``memoryview`` over the same memory.
- ``decode_torch_views(buf)``: the frame's tensors as torch tensors over ``buf`` (checked
  by ``framing.parse_header`` first; no copy), for ``dataplane/runners.TorchRunner``.
- ``input_facts(obj)``: type, size, writeability and owning buffer of an input (what
  ``StageReplica.watch_inputs`` records, and the zero-copy test checks).
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import numpy as np

from quartfaas.dataplane import framing
from quartfaas.errors import FramingError

if TYPE_CHECKING:
    import torch

# safetensors dtype -> numpy dtype of the same width (BF16 is read as uint16, then viewed)
_NUMPY = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": np.uint16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}  # fmt: skip


def to_object(frame: Any) -> np.ndarray:
    """The ``uint8`` array a frame travels as (a view over ``frame``'s bytes, no copy)."""
    if isinstance(frame, np.ndarray):
        if frame.dtype == np.uint8 and frame.ndim == 1:
            return frame
        raise FramingError(f"an activation array must be 1-D uint8, got {frame.dtype}{frame.shape}")
    if isinstance(frame, bytes | bytearray | memoryview):
        return np.frombuffer(frame, dtype=np.uint8)
    raise FramingError(f"an activation must be a tensor frame, got {type(frame).__name__}")


def frame_view(obj: Any) -> memoryview:
    """A received activation as a byte ``memoryview`` over the same memory (no copy).

    Accepts what ``to_object`` sends and, from older callers, ``bytes``."""
    if isinstance(obj, np.ndarray):
        return memoryview(to_object(obj).data).cast("B")
    if isinstance(obj, bytes | bytearray | memoryview):
        return memoryview(obj).cast("B")
    raise FramingError(f"an activation must be a tensor frame, got {type(obj).__name__}")


def decode_torch_views(
    body: bytes | memoryview, max_bytes: int | None = None
) -> dict[str, torch.Tensor]:
    """The frame's tensors as torch tensors that share ``body``'s memory.

    The framing is checked by ``framing.parse_header`` (sizes, offsets, dtypes) before any
    view is made. The tensors are read-only in effect (an object-store buffer is mapped
    read-only): stage models read their inputs and never write them in place.
    """
    import torch

    view = memoryview(body).cast("B") if not isinstance(body, memoryview) else body.cast("B")
    header = framing.parse_header(view, max_bytes)
    start = 8 + int.from_bytes(view[:8], "little")
    out: dict[str, torch.Tensor] = {}
    with warnings.catch_warnings():  # "The given buffer is not writable": intended
        warnings.simplefilter("ignore", UserWarning)
        for name, info in header.items():
            if name == "__metadata__":
                continue
            begin, end = info["data_offsets"]
            dtype = np.dtype(_NUMPY[info["dtype"]])
            arr = np.frombuffer(
                view, dtype=dtype, count=(end - begin) // dtype.itemsize, offset=start + begin
            ).reshape(info["shape"])
            t = torch.from_numpy(arr)
            out[name] = t.view(torch.bfloat16) if info["dtype"] == "BF16" else t
    return out


def input_facts(obj: Any) -> dict[str, Any]:
    """What an actor received: type, bytes, writeable, and the type owning its memory
    (the end of a numpy array's ``base`` chain; Ray's object-store buffer for a zero-copy
    read)."""
    facts: dict[str, Any] = {"type": type(obj).__name__}
    if isinstance(obj, np.ndarray):
        base: Any = obj
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        if isinstance(base, memoryview):
            base = base.obj
        facts.update(nbytes=int(obj.nbytes), writeable=bool(obj.flags.writeable),
                     owner=f"{type(base).__module__}.{type(base).__name__}")  # fmt: skip
    elif isinstance(obj, bytes | bytearray | memoryview):
        facts.update(nbytes=len(obj), writeable=isinstance(obj, bytearray), owner="heap")
    return facts

"""Activations as uint8 arrays and tensor views over them (``backends/ray/activations.py``;
no cluster: the zero-copy read from the object store is checked in
``tests/integration/ray/test_ray_zero_copy.py``)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("ray")
torch = pytest.importorskip("torch")

from quartfaas.backends.ray.activations import (  # noqa: E402
    decode_torch_views,
    frame_view,
    input_facts,
    to_object,
)
from quartfaas.dataplane import framing  # noqa: E402
from quartfaas.errors import FramingError  # noqa: E402


def frame() -> bytes:
    return framing.encode_torch(
        {
            "hidden": torch.arange(24, dtype=torch.float32).reshape(2, 3, 4),
            "mask": torch.ones(2, 3, dtype=torch.int64),
            "bf": torch.tensor([[1.5, -2.0]], dtype=torch.bfloat16),
            "flags": torch.tensor([True, False]),
        },
        {"k": "v"},
    )


def test_a_frame_travels_as_a_uint8_view_of_its_bytes() -> None:
    body = frame()
    arr = to_object(body)
    assert arr.dtype == np.uint8 and arr.shape == (len(body),)
    assert not arr.flags.owndata  # a view over the bytes, not a copy
    assert to_object(arr) is arr
    assert bytes(frame_view(arr)) == body == bytes(frame_view(body))
    with pytest.raises(FramingError, match="1-D uint8"):
        to_object(np.zeros((2, 2), np.float32))
    with pytest.raises(FramingError, match="tensor frame"):
        to_object({"pickled": "object"})


def test_views_decode_the_same_tensors_as_the_copying_decoder_and_share_memory() -> None:
    body = frame()
    arr = to_object(body)
    arr.flags.writeable = False  # as Ray hands it over from the object store
    views = decode_torch_views(frame_view(arr))
    copies = framing.decode_torch(body)
    assert views.keys() == copies.keys()
    for name, t in copies.items():
        assert views[name].dtype == t.dtype and torch.equal(views[name], t), name
    lo = arr.ctypes.data
    for name, t in views.items():  # every tensor's data lies inside the frame's buffer
        assert lo <= t.data_ptr() < lo + arr.nbytes, name


def test_bad_frames_are_refused_before_any_view_is_made() -> None:
    body = bytearray(frame())
    with pytest.raises(FramingError):
        decode_torch_views(memoryview(bytes(body[:-3])))  # data cut short
    body[8:9] = b"["
    with pytest.raises(FramingError):
        decode_torch_views(memoryview(bytes(body)))


def test_input_facts_name_the_owner() -> None:
    arr = to_object(b"abc")
    facts = input_facts(arr)
    assert facts["type"] == "ndarray" and facts["nbytes"] == 3
    assert facts["owner"] == "builtins.bytes" and facts["writeable"] is False
    assert input_facts(b"abc") == {"type": "bytes", "nbytes": 3, "writeable": False,
                                   "owner": "heap"}  # fmt: skip

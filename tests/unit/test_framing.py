"""Tensor framing: round trips, and a clear ``FramingError`` for every malformed header."""

from __future__ import annotations

import json
import struct
from typing import Any

import numpy as np
import pytest

from quartfaas.dataplane import framing
from quartfaas.errors import FramingError


def frame(header: Any, data: bytes = b"", *, raw_header: bytes | None = None) -> bytes:
    """A frame with an arbitrary (possibly invalid) header."""
    head = raw_header if raw_header is not None else json.dumps(header).encode()
    return struct.pack("<Q", len(head)) + head + data


def tensor(dtype: str = "F32", shape: Any = (2,), offsets: Any = (0, 8)) -> dict[str, Any]:
    def as_list(x: Any) -> Any:
        return list(x) if isinstance(x, tuple) else x

    return {"dtype": dtype, "shape": as_list(shape), "data_offsets": as_list(offsets)}


def test_numpy_round_trip_keeps_values_dtypes_and_metadata() -> None:
    rng = np.random.default_rng(0)
    arrays = {
        "hidden": rng.standard_normal((2, 3, 4)).astype(np.float32),
        "input_ids": rng.integers(0, 1000, (2, 3)).astype(np.int64),
        "mask": np.ones((2, 3), dtype=np.int32),
        "empty": np.zeros((0, 5), dtype=np.float16),
    }
    body = framing.encode_numpy(arrays, {"request": "r1"})
    assert framing.parse_header(body)["__metadata__"] == {"request": "r1"}
    back = framing.decode_numpy(body)
    assert back.keys() == arrays.keys()
    for k, v in arrays.items():
        assert back[k].dtype == v.dtype and back[k].shape == v.shape
        np.testing.assert_array_equal(back[k], v)


def test_torch_round_trip_includes_bfloat16() -> None:
    torch = pytest.importorskip("torch")
    x = torch.randn(2, 3).to(torch.bfloat16)
    body = framing.encode_torch({"x": x, "n": torch.arange(4)}, {"k": "v"})
    back = framing.decode_torch(body)
    assert back["x"].dtype == torch.bfloat16 and torch.equal(back["x"], x)
    assert torch.equal(back["n"], torch.arange(4))
    assert framing.parse_header(body)["__metadata__"] == {"k": "v"}
    with pytest.raises(FramingError, match="bfloat16"):
        framing.decode_numpy(body)


def test_a_valid_hand_made_frame_parses() -> None:
    header = {"x": tensor("F32", (2,), (0, 8)), "__metadata__": {"a": "b"}}
    assert framing.parse_header(frame(header, b"\0" * 8)) == header
    np.testing.assert_array_equal(framing.decode_numpy(frame(header, b"\0" * 8))["x"], [0, 0])


BAD_HEADERS: list[tuple[str, Any, bytes, str]] = [
    ("not an object", [1, 2], b"", "must be a JSON object"),
    ("entry not an object", {"x": 3}, b"", "header entry must be an object"),
    ("unknown dtype", {"x": tensor("F128")}, b"\0" * 8, "dtype 'F128' is not one of"),
    ("missing dtype", {"x": {"shape": [1], "data_offsets": [0, 4]}}, b"\0" * 4, "dtype None"),
    ("shape not a list", {"x": tensor(shape=2)}, b"\0" * 8, "must be a list of ints"),
    ("negative dim", {"x": tensor(shape=(-1,))}, b"\0" * 8, "must be a list of ints"),
    ("float dim", {"x": tensor(shape=(2.0,))}, b"\0" * 8, "must be a list of ints"),
    ("bool dim", {"x": tensor(shape=(True, 2))}, b"\0" * 8, "must be a list of ints"),
    ("dim beyond int64", {"x": tensor(shape=(2**70,), offsets=(0, 0))}, b"", "overflows"),
    (
        "product wraps int64 to 0",
        {"x": tensor(shape=(2**31, 2**31, 4), offsets=(0, 0))},
        b"",
        "overflows",
    ),
    ("bytes beyond int64", {"x": tensor(shape=(2**62,), offsets=(0, 0))}, b"", "overflows"),
    ("offsets not a list", {"x": tensor(offsets=0)}, b"\0" * 8, "data_offsets"),
    ("three offsets", {"x": tensor(offsets=(0, 4, 8))}, b"\0" * 8, "data_offsets"),
    ("float offsets", {"x": tensor(offsets=(0.0, 8))}, b"\0" * 8, "data_offsets"),
    ("bool offsets", {"x": tensor(shape=(0,), offsets=(False, False))}, b"", "data_offsets"),
    ("negative offset", {"x": tensor(offsets=(-8, 0))}, b"\0" * 8, "outside the body"),
    ("reversed offsets", {"x": tensor(offsets=(8, 0))}, b"\0" * 8, "outside the body"),
    ("offsets beyond the data", {"x": tensor(offsets=(0, 8))}, b"\0" * 4, "outside the body"),
    ("size mismatch", {"x": tensor(shape=(3,), offsets=(0, 8))}, b"\0" * 8, "needs 12"),
    ("metadata not a mapping", {"__metadata__": ["a"]}, b"", "__metadata__"),
    ("metadata value not a string", {"__metadata__": {"a": 1}}, b"", "__metadata__"),
]


@pytest.mark.parametrize(("case", "header", "data", "message"), BAD_HEADERS,
                         ids=[c[0] for c in BAD_HEADERS])  # fmt: skip
def test_malformed_headers_are_refused_clearly(
    case: str, header: Any, data: bytes, message: str
) -> None:
    with pytest.raises(FramingError, match=message.replace("(", r"\(").replace(")", r"\)")):
        framing.parse_header(frame(header, data))


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"\xff\xfe{}", "not valid JSON"),
        (b'{"x": ' + b"9" * 5000 + b"}", "not valid JSON"),  # beyond int str digits
        (b"[" * 100_000 + b"]" * 100_000, "nested too deeply"),
    ],
    ids=["syntax", "not utf-8", "5000-digit number", "100k-deep nesting"],
)
def test_unparseable_headers_are_framing_errors(raw: bytes, message: str) -> None:
    with pytest.raises(FramingError, match=message):
        framing.parse_header(frame(None, raw_header=raw))


def test_many_huge_dimensions_are_refused_without_big_number_work() -> None:
    # ~1 MiB of 62-bit dimensions: their full product would be a 3-million-bit number.
    shape = [2**62] * 45_000
    body = frame({"x": tensor(shape=shape, offsets=(0, 0))})
    assert len(body) < (1 << 20)
    with pytest.raises(FramingError, match=r"overflows a 64-bit size") as err:
        framing.parse_header(body)
    assert len(str(err.value)) < 300  # the shape is quoted, not printed in full


def test_a_zero_dimension_makes_an_empty_tensor_whatever_the_others() -> None:
    header = {"x": tensor(shape=(0, 2**40), offsets=(0, 0))}
    assert framing.parse_header(frame(header)) == header


def test_length_prefix_cases() -> None:
    with pytest.raises(FramingError, match="shorter than its 8-byte length prefix"):
        framing.parse_header(b"\1\0\0")
    with pytest.raises(FramingError, match="does not fit a body"):
        framing.parse_header(struct.pack("<Q", 100) + b"{}")
    with pytest.raises(FramingError, match="does not fit a body"):
        framing.parse_header(struct.pack("<Q", 2**64 - 1) + b"{}")
    huge = (1 << 20) + 1  # over the header cap even when the body is long enough
    with pytest.raises(FramingError, match="does not fit a body"):
        framing.parse_header(struct.pack("<Q", huge) + b" " * huge)
    with pytest.raises(FramingError, match="exceeds the limit of 10"):
        framing.parse_header(frame({}, b"\0" * 16), max_bytes=10)


def test_frames_the_rust_parser_refuses_are_framing_errors() -> None:
    # Overlapping tensors pass the per-tensor checks; safetensors itself refuses them.
    header = {"a": tensor(offsets=(0, 8)), "b": tensor(offsets=(0, 8))}
    body = frame(header, b"\0" * 8)
    framing.parse_header(body)
    with pytest.raises(FramingError, match="not valid safetensors"):
        framing.decode_numpy(body)
    torch = pytest.importorskip("torch")
    assert torch is not None
    with pytest.raises(FramingError, match="not valid safetensors"):
        framing.decode_torch(body)

"""Trace reading (the real Azure files and broken ones), named-trace lookup, transformations."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from quartfaas.errors import SpecError, TraceError
from quartfaas.metrics.windows import binned_cv, gap_cv
from quartfaas.workload.traces import (
    NAMED_TRACES,
    Trace,
    default_trace_dir,
    load_trace,
    read_trace,
    resolve_trace,
)

# From the README shipped beside the files (and /work/shared/traces/README.md).
SHA256 = {
    "AzureLLMInferenceTrace_code.csv": (
        "54e9a6d2a4bd06ba1e060304b900abbc74cbea53de96506e60fe5bb4f2277fb6"
    ),
    "AzureLLMInferenceTrace_conv.csv": (
        "2f1e5b666d4e3055fdbba98598ce2ec307767b9064e03e2fa46676dbcc7d0bf8"
    ),
}


@pytest.fixture(scope="module")
def code() -> Trace:
    return load_trace("azure-code")


@pytest.fixture(scope="module")
def conv() -> Trace:
    return load_trace("azure-conv")


def write(tmp_path: Path, text: str, name: str = "t.csv") -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode())
    return p


# --- the real files --------------------------------------------------------------------------


def test_packaged_files_are_the_published_bytes_with_attribution() -> None:
    d = default_trace_dir()
    for fname, digest in SHA256.items():
        assert hashlib.sha256((d / fname).read_bytes()).hexdigest() == digest
        assert not (d / fname).read_bytes().endswith(b"\n")
    readme = (d / "README.md").read_text(encoding="utf-8")
    assert "CC-BY-4.0" in readme
    assert "Splitwise" in readme and "Microsoft" in readme
    assert set(NAMED_TRACES.values()) == set(SHA256)


def test_code_trace_matches_its_readme(code: Trace) -> None:
    assert len(code) == 8819
    assert code.arrivals_s[0] == 0.0
    assert code.duration_s == pytest.approx(3435.9, abs=0.05)
    assert code.mean_rate == pytest.approx(2.57, abs=0.005)
    assert gap_cv(code.arrivals_s) == pytest.approx(13.15, abs=0.005)
    assert int(binned_cv(code.arrivals_s, 1.0).count.max()) == 67  # peak 1 s rate
    per_min = binned_cv(code.arrivals_s, 60.0).cv
    per_min = per_min[~np.isnan(per_min)]
    assert (per_min.min(), np.median(per_min), per_min.max()) == pytest.approx(
        (0.81, 3.09, 9.04), abs=0.005
    )
    assert code.prompt_tokens is not None and code.output_tokens is not None
    assert code.prompt_tokens.mean() == pytest.approx(2048, abs=0.5)
    assert code.output_tokens.mean() == pytest.approx(27.9, abs=0.05)
    assert np.all(np.diff(code.arrivals_s) > 0)  # sorted, no duplicate timestamps


def test_conv_trace_matches_its_readme(conv: Trace) -> None:
    assert len(conv) == 19366
    assert conv.duration_s == pytest.approx(3501.7, abs=0.05)
    assert conv.mean_rate == pytest.approx(5.53, abs=0.005)
    assert gap_cv(conv.arrivals_s) == pytest.approx(1.09, abs=0.005)
    assert int(binned_cv(conv.arrivals_s, 1.0).count.max()) == 16
    assert conv.prompt_tokens is not None
    assert conv.prompt_tokens.mean() == pytest.approx(1155, abs=0.5)


def test_seven_digit_fractions_are_exact(code: Trace) -> None:
    # 18:17:03.9799600 -> 18:17:04.0319600 -> 18:17:04.0781490
    assert code.arrivals_s[1] == pytest.approx(0.052, abs=1e-12)
    assert code.arrivals_s[2] == pytest.approx(0.098189, abs=1e-12)
    assert code.prompt_tokens is not None and code.output_tokens is not None
    assert (code.prompt_tokens[0], code.output_tokens[0]) == (4808, 10)


# --- lookup ----------------------------------------------------------------------------------


def test_named_trace_from_a_search_path(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    full = tmp_path / "full"
    full.mkdir()
    shutil.copy(default_trace_dir() / NAMED_TRACES["azure-conv"], full)
    assert resolve_trace("azure-conv", [empty, full]) == full / NAMED_TRACES["azure-conv"]
    with pytest.raises(TraceError, match=re.escape(str(empty))):
        resolve_trace("azure-code", [empty, full])


def test_unknown_name_lists_the_known_ones(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="azure-code, azure-conv"):
        resolve_trace("azure-cod")
    p = write(tmp_path, "t\n0\n1\n")
    assert resolve_trace(str(p)) == p


# --- broken files: file, line, what was expected ----------------------------------------------

HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens\n"
ROW1 = "2023-11-16 18:17:03.9799600,4808,10\n"
ROW2 = "2023-11-16 18:17:04.0319600,3180,8\n"


@pytest.mark.parametrize(
    ("text", "line", "expected"),
    [
        (HEADER + ROW1 + "2023-11-16 18:17:0x.1,1,1\n", 3, "expected a TIMESTAMP"),
        (HEADER + ROW1 + "2023-02-30 18:17:04.1,1,1\n", 3, "day is out of range"),
        (HEADER + ROW1 + "2023-11-16 25:17:04.1,1,1\n", 3, "time out of range"),
        (HEADER + ROW1 + ROW2 + "2023-11-16 18:17:05.0,1\n", 4, "expected 3 comma-separated"),
        (HEADER + ROW1 + "2023-11-16 18:17:05.0,-3,1\n", 3, "ContextTokens as an integer >= 0"),
        (HEADER + ROW1 + "2023-11-16 18:17:05.0,3,x\n", 3, "GeneratedTokens as an integer"),
        (HEADER + ROW2 + ROW1, 3, "expected rows in time order.*line 2"),
        ("time,tokens\n1,2\n", 1, "expected the header"),
        ("", 1, "empty file"),
        (HEADER, 2, "at least one data row"),
        ("t,prompt_tokens\n0.5,3\nabc,4\n", 3, "expected t as a finite number"),
        ("t\n0.5\ninf\n", 3, "expected t as a finite number"),
    ],
)
def test_broken_files_name_file_line_and_expectation(
    tmp_path: Path, text: str, line: int, expected: str
) -> None:
    p = write(tmp_path, text)
    with pytest.raises(TraceError, match=re.escape(f"{p}:{line}:") + ".*" + expected):
        read_trace(p)


def test_missing_and_undecodable_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match=re.escape("nope.csv: trace file not found")):
        read_trace(tmp_path / "nope.csv")
    p = tmp_path / "bin.csv"
    p.write_bytes(b"t\n\xff\xfe\n")
    with pytest.raises(TraceError, match=re.escape("bin.csv: cannot read")):
        read_trace(p)


def test_blank_lines_crlf_and_generic_format(tmp_path: Path) -> None:
    azure = read_trace(write(tmp_path, HEADER.replace("\n", "\r\n") + ROW1 + "\n" + ROW2 + "\n"))
    assert len(azure) == 2 and azure.arrivals_s[1] == pytest.approx(0.052, abs=1e-12)
    bare = read_trace(write(tmp_path, "t\n10.5\n11\n13.25", "bare.csv"))
    assert list(bare.arrivals_s) == [0.0, 0.5, 2.75]
    assert bare.prompt_tokens is None and bare.output_tokens is None
    assert bare.name == "bare"
    full = read_trace(write(tmp_path, "t,prompt_tokens,output_tokens\n0,5,6\n1,7,8\n", "g.csv"))
    assert list(full.prompt_tokens) == [5, 7]  # type: ignore[arg-type]
    assert list(full.output_tokens) == [6, 8]  # type: ignore[arg-type]


# --- transformations -------------------------------------------------------------------------


def make(times: list[float]) -> Trace:
    n = len(times)
    return Trace("x", np.array(times), np.arange(n) + 100, np.arange(n) + 200)


def test_trace_arrays_are_private_and_read_only() -> None:
    src = np.array([0.0, 1.0, 3.0])
    tr = Trace("x", src)
    src[1] = 99.0
    assert tr.arrivals_s[1] == 1.0
    with pytest.raises(ValueError, match="read-only"):
        tr.arrivals_s[0] = 5.0
    with pytest.raises(ValueError, match="rows"):
        Trace("x", np.array([0.0, 1.0]), np.array([1, 2, 3]))


def test_compress_and_rescale(conv: Trace) -> None:
    tr = make([0.0, 1.0, 3.0])
    assert list(tr.compress(2.0).arrivals_s) == [0.0, 0.5, 1.5]
    assert list(tr.arrivals_s) == [0.0, 1.0, 3.0]  # the original is untouched
    fast = conv.rescale_to_rate(20.0)
    assert fast.mean_rate == pytest.approx(20.0, rel=1e-12)
    assert gap_cv(fast.arrivals_s) == pytest.approx(gap_cv(conv.arrivals_s), rel=1e-9)
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(SpecError, match="factor"):
            tr.compress(bad)
    with pytest.raises(SpecError, match="no mean rate"):
        make([1.0]).rescale_to_rate(1.0)


def test_slice_keeps_tokens_aligned_and_reoffsets() -> None:
    tr = make([0.0, 1.0, 2.0, 3.0, 4.0])
    s = tr.slice(1.0, 3.0)
    assert list(s.arrivals_s) == [0.0, 1.0]
    assert list(s.prompt_tokens) == [101, 102]  # type: ignore[arg-type]
    assert list(s.output_tokens) == [201, 202]  # type: ignore[arg-type]
    assert list(tr.slice(2.5).arrivals_s) == [0.5, 1.5]
    with pytest.raises(SpecError, match="holds no arrivals"):
        tr.slice(10.0, 20.0)
    with pytest.raises(SpecError, match="start < end"):
        tr.slice(3.0, 2.0)


def test_repeat_preserves_rate_and_order(code: Trace) -> None:
    tr = make([0.0, 1.0, 3.0])  # mean gap 1.5
    r = tr.repeat(3)
    assert list(r.arrivals_s) == [0.0, 1.0, 3.0, 4.5, 5.5, 7.5, 9.0, 10.0, 12.0]
    assert list(r.prompt_tokens) == [100, 101, 102] * 3  # type: ignore[arg-type]
    assert r.mean_rate == pytest.approx(tr.mean_rate)
    long = code.repeat(2)
    assert len(long) == 2 * len(code)
    assert long.mean_rate == pytest.approx(code.mean_rate, rel=1e-12)
    assert np.all(np.diff(long.arrivals_s) > 0)
    with pytest.raises(SpecError, match="repeat count"):
        tr.repeat(0)


def test_cover_repeats_then_cuts(conv: Trace) -> None:
    c = conv.compress(10.0).cover(1000.0)  # ~350 s per copy -> three copies, cut
    assert c.arrivals_s[-1] < 1000.0
    assert c.arrivals_s[-1] > 990.0
    assert len(c) == pytest.approx(1000.0 * conv.mean_rate * 10.0, rel=0.05)  # type: ignore[operator]

"""Request-arrival traces: read CSV files into arrival offsets and token counts, and reshape them.

Neighbours: ``workload/workload.py`` (its ``Workload`` kind ``trace:`` resolves names here),
``workload/loadgen.py`` (replays a ``Trace`` against the gateway and turns its token counts
into payloads), ``metrics/windows.binned_cv`` (burstiness reports) and the simulator.

Two formats, told apart by the header line:

* the Azure LLM inference traces, ``TIMESTAMP,ContextTokens,GeneratedTokens`` with
  timestamps ``YYYY-MM-DD HH:MM:SS.fffffff`` (7 fractional digits, read exactly as integer
  100 ns ticks so offsets keep their precision); the files have no trailing newline;
* a generic CSV whose first column is ``t`` (seconds, float), optionally followed by
  ``prompt_tokens`` and ``output_tokens``.

Rows must be in time order. Anything unparsable raises ``quartfaas.errors.TraceError`` with
``file:line:`` and what was expected there. Blank lines are skipped.

Named traces (``azure-code``, ``azure-conv``) are looked up in the directories passed in;
the default is the copy shipped in ``quartfaas/data/traces/`` (CC-BY-4.0, attribution and
provenance in the README.md beside the files, which must travel with them).
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import numpy as np
import numpy.typing as npt

from quartfaas.errors import SpecError, TraceError

NAMED_TRACES: dict[str, str] = {
    "azure-code": "AzureLLMInferenceTrace_code.csv",
    "azure-conv": "AzureLLMInferenceTrace_conv.csv",
}

AZURE_HEADER = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")
GENERIC_COLUMNS = ("t", "prompt_tokens", "output_tokens")

_TS_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2}) (\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?")
_TICKS_PER_S = 10_000_000  # 100 ns, the Azure files' resolution
_TS_EXPECTED = "a TIMESTAMP like '2023-11-16 18:17:03.9799600'"


def default_trace_dir() -> Path:
    """The directory of traces shipped with the package."""
    return Path(str(resources.files("quartfaas") / "data" / "traces"))


def _readonly(a: npt.NDArray[np.generic]) -> npt.NDArray[np.generic]:
    a.flags.writeable = False
    return a


@dataclass(frozen=True, eq=False)
class Trace:
    """Arrival offsets (seconds, non-decreasing, >= 0) and optional per-request token counts.

    Arrays are read-only; transformations return new traces. ``prompt_tokens`` and
    ``output_tokens`` are ``None`` when the source has none (synthetic or bare ``t`` files).
    """

    name: str
    arrivals_s: npt.NDArray[np.float64]
    prompt_tokens: npt.NDArray[np.int64] | None = None
    output_tokens: npt.NDArray[np.int64] | None = None

    def __post_init__(self) -> None:
        # Own read-only copies, so neither the caller nor a transformation can change a trace.
        for field, dtype in (
            ("arrivals_s", np.float64),
            ("prompt_tokens", np.int64),
            ("output_tokens", np.int64),
        ):
            a = getattr(self, field)
            if a is None:
                continue
            a = _readonly(np.array(a, dtype=dtype, copy=True).reshape(-1))
            object.__setattr__(self, field, a)
            if a.shape != self.arrivals_s.shape:
                raise ValueError(f"{field} has {a.size} rows, arrivals_s {self.arrivals_s.size}")

    def __len__(self) -> int:
        return int(self.arrivals_s.size)

    @property
    def duration_s(self) -> float:
        """Offset of the last arrival (0 for an empty trace)."""
        return float(self.arrivals_s[-1]) if self.arrivals_s.size else 0.0

    @property
    def mean_rate(self) -> float | None:
        """Arrivals per second, 1 / mean inter-arrival gap; ``None`` with < 2 arrivals."""
        if self.arrivals_s.size < 2:
            return None
        span = float(self.arrivals_s[-1] - self.arrivals_s[0])
        return (self.arrivals_s.size - 1) / span if span > 0 else None

    def _with(self, idx: npt.NDArray[np.intp] | slice, arrivals: npt.NDArray[np.float64]) -> Trace:
        return replace(
            self,
            arrivals_s=arrivals,
            prompt_tokens=None if self.prompt_tokens is None else self.prompt_tokens[idx].copy(),
            output_tokens=None if self.output_tokens is None else self.output_tokens[idx].copy(),
        )

    def compress(self, factor: float) -> Trace:
        """Replay ``factor`` times faster (2.0 halves every gap and doubles the rate)."""
        if not (factor > 0 and math.isfinite(factor)):
            raise SpecError(f"time-compression factor ({factor}) must be a finite number > 0")
        return replace(self, arrivals_s=self.arrivals_s / factor)

    def rescale_to_rate(self, rate: float) -> Trace:
        """Compress or stretch time so that ``mean_rate`` becomes ``rate`` (shape unchanged)."""
        current = self.mean_rate
        if current is None:
            raise SpecError(f"trace {self.name} has no mean rate ({len(self)} arrivals)")
        if not (rate > 0 and math.isfinite(rate)):
            raise SpecError(f"target rate ({rate}) must be a finite number > 0")
        return self.compress(rate / current)

    def slice(self, start_s: float, end_s: float | None = None) -> Trace:
        """Arrivals in ``[start_s, end_s)``, re-offset so ``start_s`` becomes 0."""
        end = math.inf if end_s is None else end_s
        if not (start_s >= 0 and end > start_s):
            raise SpecError(f"slice [{start_s}, {end_s}) needs 0 <= start < end")
        idx = np.flatnonzero((self.arrivals_s >= start_s) & (self.arrivals_s < end))
        if idx.size == 0:
            raise SpecError(
                f"slice [{start_s}, {end_s}) of trace {self.name} "
                f"(arrivals 0..{self.duration_s:.1f} s) holds no arrivals"
            )
        return self._with(idx, self.arrivals_s[idx] - start_s)

    def repeat(self, times: int) -> Trace:
        """``times`` back-to-back copies; each starts one mean gap after the previous ends.

        That spacing keeps ``mean_rate`` exactly and never puts two arrivals at one instant.
        """
        if times < 1:
            raise SpecError(f"repeat count ({times}) must be >= 1")
        if times == 1:
            return self
        rate = self.mean_rate
        if rate is None:
            raise SpecError(f"cannot repeat trace {self.name} with {len(self)} arrivals")
        period = self.duration_s + 1.0 / rate
        offsets = np.repeat(np.arange(times, dtype=np.float64) * period, len(self))
        idx = np.tile(np.arange(len(self)), times)
        return self._with(idx, np.tile(self.arrivals_s, times) + offsets)

    def cover(self, duration_s: float) -> Trace:
        """Repeat as needed, then keep the arrivals in ``[0, duration_s)``."""
        if not duration_s > 0:
            raise SpecError(f"duration_s ({duration_s}) must be > 0")
        rate = self.mean_rate
        n = 1 if rate is None else max(1, math.ceil(duration_s / (self.duration_s + 1 / rate)))
        return self.repeat(n).slice(0.0, duration_s)


def _parse_timestamp(text: str, where: str) -> int:
    """``YYYY-MM-DD HH:MM:SS[.f…]`` as integer 100 ns ticks since 0001-01-01."""
    m = _TS_RE.fullmatch(text)
    if m is None:
        raise TraceError(f"{where}: expected {_TS_EXPECTED}, got {text!r}")
    y, mo, d, h, mi, s, frac = m.groups()
    try:
        day = _dt.date(int(y), int(mo), int(d)).toordinal()
    except ValueError as exc:
        raise TraceError(f"{where}: expected {_TS_EXPECTED}, got {text!r} ({exc})") from None
    if int(h) > 23 or int(mi) > 59 or int(s) > 60:
        raise TraceError(f"{where}: expected {_TS_EXPECTED}, got {text!r} (time out of range)")
    frac_ticks = int((frac or "0").ljust(9, "0")[:7])  # beyond 100 ns is dropped
    secs = ((day * 24 + int(h)) * 60 + int(mi)) * 60 + int(s)
    return secs * _TICKS_PER_S + frac_ticks


def _parse_count(text: str, where: str, column: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise TraceError(f"{where}: expected {column} as an integer >= 0, got {text!r}")
    return value


def _parse_seconds(text: str, where: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise TraceError(f"{where}: expected t as a finite number of seconds, got {text!r}")
    return value


def read_trace(path: str | Path, *, name: str | None = None) -> Trace:
    """Read an Azure-format or generic ``t`` CSV file into a ``Trace`` (offsets from the first).

    Raises ``TraceError`` (``file:line: expected …``) for anything it cannot parse, for rows
    out of time order and for a file without data rows.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise TraceError(f"{p}: trace file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise TraceError(f"{p}: cannot read trace file ({exc})") from None
    # Split on "\n" only, so line numbers match what an editor shows.
    lines = [line.rstrip("\r") for line in text.split("\n")]
    header_at = next((i for i, line in enumerate(lines) if line.strip()), None)
    if header_at is None:
        raise TraceError(
            f"{p}:1: expected a header line ({','.join(AZURE_HEADER)} or {GENERIC_COLUMNS[0]},…)"
            ", got an empty file"
        )
    header = tuple(c.strip() for c in lines[header_at].split(","))
    azure = header == AZURE_HEADER
    if not azure and not (header and header[0] == "t" and header == GENERIC_COLUMNS[: len(header)]):
        raise TraceError(
            f"{p}:{header_at + 1}: expected the header {','.join(AZURE_HEADER)!r} or a generic "
            f"header starting with 't' (columns {','.join(GENERIC_COLUMNS)}), "
            f"got {lines[header_at]!r}"
        )
    ncols = len(header)
    times: list[int | float] = []
    prompt: list[int] = []
    output: list[int] = []
    last_line = 0
    for i in range(header_at + 1, len(lines)):
        line = lines[i]
        if not line.strip():
            continue
        where = f"{p}:{i + 1}"
        fields = line.split(",")
        if len(fields) != ncols:
            raise TraceError(
                f"{where}: expected {ncols} comma-separated fields ({','.join(header)}), "
                f"got {len(fields)}: {line!r}"
            )
        fields = [f.strip() for f in fields]
        t: int | float = (
            _parse_timestamp(fields[0], where) if azure else _parse_seconds(fields[0], where)
        )
        if times and t < times[-1]:
            raise TraceError(
                f"{where}: expected rows in time order, but {fields[0]!r} is earlier than "
                f"the row on line {last_line}"
            )
        times.append(t)
        if ncols >= 2:
            prompt.append(_parse_count(fields[1], where, header[1]))
        if ncols >= 3:
            output.append(_parse_count(fields[2], where, header[2]))
        last_line = i + 1
    if not times:
        raise TraceError(f"{p}:{header_at + 2}: expected at least one data row after the header")
    if azure:
        ticks = np.asarray(times, dtype=np.int64)
        arrivals = (ticks - ticks[0]).astype(np.float64) / _TICKS_PER_S
    else:
        arrivals = np.asarray(times, dtype=np.float64)
        arrivals = arrivals - arrivals[0]
    return Trace(
        name=name or p.stem,
        arrivals_s=arrivals,
        prompt_tokens=np.asarray(prompt, dtype=np.int64) if ncols >= 2 else None,
        output_tokens=np.asarray(output, dtype=np.int64) if ncols >= 3 else None,
    )


def resolve_trace(name: str, search_path: Sequence[str | Path] | None = None) -> Path:
    """The file of a named trace (``azure-code``, ``azure-conv``) or of a path that exists.

    ``search_path`` lists directories to try in order; default: the packaged traces.
    """
    if name in NAMED_TRACES:
        dirs = [Path(d) for d in search_path] if search_path is not None else []
        if search_path is None:
            dirs.append(default_trace_dir())
        for d in dirs:
            candidate = d / NAMED_TRACES[name]
            if candidate.is_file():
                return candidate
        raise TraceError(
            f"trace {name!r} ({NAMED_TRACES[name]}) not found in: "
            + ", ".join(str(d) for d in dirs)
        )
    path = Path(name)
    if path.is_file():
        return path
    raise SpecError(
        f"unknown trace {name!r}: expected one of {', '.join(sorted(NAMED_TRACES))} "
        "or the path of a CSV file"
    )


def load_trace(name: str, search_path: Sequence[str | Path] | None = None) -> Trace:
    """``read_trace(resolve_trace(name, search_path))``, named after ``name``."""
    return read_trace(resolve_trace(name, search_path), name=name)

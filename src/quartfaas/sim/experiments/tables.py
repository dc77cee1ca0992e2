"""The tables of an experiment: one ``Row`` per policy or placer, a ``Comparison`` that
prints them as text, CSV or JSON (deterministic: no wall-clock figure is ever a column)."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field

import numpy as np

from quartfaas.control.backend import StartTier
from quartfaas.sim.report import summary_row
from quartfaas.sim.run import SimResult


@dataclass(frozen=True, eq=False)
class Row:
    """One line of a comparison: its column values and the run behind it."""

    name: str
    values: dict[str, object]
    result: SimResult = field(repr=False)


@dataclass(frozen=True, eq=False)
class Comparison:
    """Rows under a title, with notes; ``text``/``csv``/``json`` are deterministic."""

    title: str
    columns: tuple[tuple[str, str], ...]  # (name, format spec)
    rows: tuple[Row, ...]
    notes: tuple[str, ...] = ()

    def cells(self) -> list[list[str]]:
        return [[fmt.format(r.values[c]) for c, fmt in self.columns] for r in self.rows]

    def text(self) -> str:
        head = [c for c, _ in self.columns]
        body = self.cells()
        widths = [max(len(h), *(len(row[i]) for row in body)) for i, h in enumerate(head)]
        lines = [self.title, "  ".join(h.rjust(w) for h, w in zip(head, widths, strict=True))]
        lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in body]
        return "\n".join([*lines, *(f"note: {n}" for n in self.notes)]) + "\n"

    def csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow([c for c, _ in self.columns])
        w.writerows([[r.values[c] for c, _ in self.columns] for r in self.rows])
        return buf.getvalue()

    def json(self) -> str:
        data = {
            "title": self.title,
            "notes": list(self.notes),
            "rows": [{c: r.values[c] for c, _ in self.columns} for r in self.rows],
        }
        return json.dumps(data, indent=2, default=float, allow_nan=True) + "\n"

    @property
    def results(self) -> list[SimResult]:
        return [r.result for r in self.rows]


POLICY_COLUMNS = (
    ("policy", "{}"), ("requests", "{:d}"), ("completed", "{:d}"), ("rejected", "{:d}"),
    ("p50_ms", "{:.1f}"), ("p99_ms", "{:.1f}"), ("slo_attain_pct", "{:.2f}"),
    ("gpu_seconds", "{:.0f}"), ("replica_seconds", "{:.0f}"), ("scale_ups", "{:d}"),
    ("scale_downs", "{:d}"), ("refused", "{:d}"), ("starts", "{}"),
)  # fmt: skip


PLACEMENT_COLUMNS = (
    ("placer", "{}"), ("starts", "{:d}"), ("fork_hit_pct", "{:.1f}"), ("start_p50_s", "{:.2f}"),
    ("start_p99_s", "{:.2f}"), ("p99_ms", "{:.1f}"), ("slo_attain_pct", "{:.2f}"),
    ("gpu_seconds", "{:.0f}"),
)  # fmt: skip


def policy_values(name: str, r: SimResult, no_cache: bool) -> dict[str, object]:
    v = summary_row(r)
    v["policy"] = name
    # refused: scale actions the backend refused (no free GPU) + replicas deployed up front
    # that found none (a static deployment larger than the cluster)
    v["refused"] = sum(1 for e in r.scale_events if e.error) + r.refused_initial
    if no_cache:  # those fork starts were charged the cold tier: show them as such
        tiers = r.starts_by_tier
        cold = tiers.pop("fork", 0) + tiers.pop("prefork", 0) + tiers.pop("cold", 0)
        tiers["cold"] = cold
        v["starts"] = " ".join(f"{k}:{n}" for k, n in sorted(tiers.items()) if n) or "-"
    return v


def placement_values(name: str, r: SimResult) -> dict[str, object]:
    starts = [e for e in r.replica_events if e.kind == "start" and e.tier is not None]
    weighted = [e for e in starts if e.tier is not StartTier.NONE]
    hits = sum(1 for e in weighted if e.tier in (StartTier.FORK, StartTier.PREFORK))
    secs = np.array([e.seconds for e in starts])
    p50, p99 = np.percentile(secs, [50, 99]) if secs.size else (math.nan, math.nan)
    base = summary_row(r)
    return {
        "placer": name,
        "starts": len(starts),
        "fork_hit_pct": 100.0 * hits / len(weighted) if weighted else math.nan,
        "start_p50_s": float(p50),
        "start_p99_s": float(p99),
        "p99_ms": base["p99_ms"],
        "slo_attain_pct": base["slo_attain_pct"],
        "gpu_seconds": base["gpu_seconds"],
    }

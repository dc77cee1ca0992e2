"""The PromQL side of ``PrometheusCollector``: the query text and the answer's parsing.

Four instant queries per tick, each vectorised over all stages (``by (function_name)`` /
``by (stage)``); several aggregations share one query by tagging each part with a ``qf``
label (``label_replace(a, "qf", "x", "", "") or label_replace(b, "qf", "y", "", "")``).
``grouped_scv`` estimates a service-time SCV from histogram buckets (grouped data).
A problem with an answer raises ``NoData``, which the collector turns into a note.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

READY = "quartfaas_stage_ready_replicas"


GAUGES = (
    READY,
    "quartfaas_stage_starting_replicas",
    "quartfaas_stage_queue_length",
    "quartfaas_stage_inflight",
)


CV_GAUGE = "quartfaas_stage_arrival_cv"


QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


Sample = tuple[dict[str, str], float, float]  # labels, eval/sample time, value


def duration(seconds: float) -> str:
    """A PromQL duration in whole milliseconds (at least 1ms)."""
    return f"{max(1, round(seconds * 1000))}ms"


def tagged(parts: Mapping[str, str]) -> str:
    """One query for several aggregations: each result carries ``qf=<part name>``."""
    return " or ".join(f'label_replace({q}, "qf", "{tag}", "", "")' for tag, q in parts.items())


def e2e_label(pipeline: str, namespace: str) -> str:
    """The pipeline's ``function_name`` in the ``gateway_*`` series (``name.namespace``)."""
    return f"{pipeline}.{namespace}" if namespace else pipeline


def build_queries(
    pipeline: str,
    stages: Sequence[str],
    window_s: float,
    job: str | None = None,
    namespace: str = "",
) -> dict[str, str]:
    """The four instant queries of a tick, by name, each vectorised over all stages.

    Per-stage rates and latencies come from the stage-visit series
    (``quartfaas_stage_arrivals_total``, ``..._requests_total``, ``..._latency_seconds``,
    pipeline hops included); end to end from ``gateway_functions_seconds`` of the
    pipeline, which counts calls from outside only (``metrics/openfaas_series.py``).
    """
    w = duration(window_s)
    extra = f',job="{job}"' if job else ""
    st = f'stage=~"{"|".join(stages)}"{extra}'
    st_ok = f'code="200",{st}'
    fn_ok = f'code="200",function_name="{e2e_label(pipeline, namespace)}"{extra}'
    stage_buckets = (
        f"sum by (le, stage) (rate(quartfaas_stage_latency_seconds_bucket{{{st_ok}}}[{w}]))"
    )
    e2e_buckets = (
        f"sum by (le, function_name) (rate(gateway_functions_seconds_bucket{{{fn_ok}}}[{w}]))"
    )
    gauges = "|".join([*GAUGES, CV_GAUGE])
    return {
        "rates": tagged(
            {
                "arr": f"sum by (stage) (rate(quartfaas_stage_arrivals_total{{{st}}}[{w}]))",
                "fin": f"sum by (stage, code) (rate(quartfaas_stage_requests_total{{{st}}}[{w}]))",
                "ssum": f"sum by (stage) (rate(quartfaas_stage_service_seconds_sum{{{st}}}[{w}]))",
                "scnt": f"sum by (stage) "
                f"(rate(quartfaas_stage_service_seconds_count{{{st}}}[{w}]))",
                "lsum": f"sum by (stage) "
                f"(rate(quartfaas_stage_latency_seconds_sum{{{st_ok}}}[{w}]))",
                "lcnt": f"sum by (stage) "
                f"(rate(quartfaas_stage_latency_seconds_count{{{st_ok}}}[{w}]))",
                "esum": f"sum by (function_name) "
                f"(rate(gateway_functions_seconds_sum{{{fn_ok}}}[{w}]))",
                "ecnt": f"sum by (function_name) "
                f"(rate(gateway_functions_seconds_count{{{fn_ok}}}[{w}]))",
            }
        ),
        "quantiles": tagged(
            {
                tag: f"(histogram_quantile({q}, {stage_buckets}) "
                f"or histogram_quantile({q}, {e2e_buckets}))"
                for tag, q in QUANTILES.items()
            }
        ),
        "service_buckets": (
            f"sum by (le, stage) (rate(quartfaas_stage_service_seconds_bucket{{{st}}}[{w}]))"
        ),
        "gauges": f'{{__name__=~"{gauges}",{st}}} or '
        + tagged({"ts": f"timestamp(quartfaas_stage_ready_replicas{{{st}}})"}),
    }


def grouped_scv(buckets: Sequence[tuple[float, float]]) -> float | None:
    """SCV of a histogram from cumulative ``(upper bound, count or rate)`` pairs.

    Grouped-data estimate (``metrics/prometheus.py``'s docstring says what it misses): each
    bucket's mass at its midpoint, the ``+Inf`` bucket's at the last finite bound.
    ``None`` with no mass or a zero mean.
    """
    prev_le, prev_cum = 0.0, 0.0
    points: list[tuple[float, float]] = []  # (bucket representative, mass)
    for le, cum in sorted(buckets):
        p = max(cum - prev_cum, 0.0)  # cumulative counts; rounding can make a step negative
        points.append((prev_le if math.isinf(le) else (prev_le + le) / 2.0, p))
        prev_cum = max(cum, prev_cum)
        if not math.isinf(le):
            prev_le = le
    mass = sum(p for _, p in points)
    if mass <= 0.0:
        return None
    mean = sum(x * p for x, p in points) / mass
    if mean <= 0.0:
        return None
    # Two passes (deviations from the mean): exact 0 for mass in one bucket.
    var = sum(p * (x - mean) ** 2 for x, p in points) / mass
    return var / (mean * mean)


class NoData(Exception):
    """Internal: why this tick has no data (becomes the snapshot's note)."""

    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(f"{kind}: {detail}")
        self.note = f"{kind}: {detail}"


def parse_samples(body: dict[str, Any], where: str) -> list[Sample]:
    """``[(labels, time, value)]`` of an instant-vector answer; NaN/Inf kept as floats."""
    try:
        data = body["data"]
        if data["resultType"] != "vector":
            raise NoData("bad-response", f"{where} answered a {data['resultType']}, not a vector")
        return [
            (dict(r["metric"]), float(r["value"][0]), float(r["value"][1])) for r in data["result"]
        ]
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise NoData("bad-response", f"unexpected answer from {where}: {exc!r}") from None

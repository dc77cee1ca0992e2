"""Snapshots from PromQL, plus a Prometheus server for tests and development.

``PrometheusCollector`` is the second live collector (``metrics/collector.py`` has the
protocol and the in-process one): it asks a Prometheus server that scrapes the gateway's
``/metrics`` (series listed in ``metrics/gateway_metrics.py``) and builds the same
``control.snapshot.PipelineSnapshot``. Four instant queries per tick, issued together and
each vectorised over all stages (``by (function_name)`` / ``by (stage)``); several
aggregations share one query by tagging each part with a ``qf`` label
(``label_replace(a, "qf", "x", "", "") or label_replace(b, "qf", "y", "", "")``).

What each field comes from (``W`` = ``window_s``):

- ``arrival_rate``: ``rate(quartfaas_stage_arrivals_total[W])`` (every stage visit,
  pipeline hops included; the OpenFaaS ``gateway_*`` series count only calls from
  outside, so they cannot say how busy a stage is); ``arrivals`` is ``rate * W``
  (Prometheus' extrapolated ``increase``), rounded;
- ``departure_rate``, ``rejected``, ``errors``: ``rate(quartfaas_stage_requests_total[W])``
  by code (200 / 429 / anything else), the counts as ``rate * W``; ``departure_cv`` is
  not exported and stays ``None``;
- ``arrival_cv``: the ``quartfaas_stage_arrival_cv`` gauge (the *gateway's* window);
- ``service_mean_s``: ``rate(quartfaas_stage_service_seconds_sum[W]) / rate(..._count[W])``;
- ``service_scv``: from the histogram buckets as grouped data: each bucket's mass sits at
  its midpoint (the first bucket's lower edge is 0, the ``+Inf`` bucket's mass at the last
  finite bound) and SCV = Var/mean² of that grouped distribution. The resolution is the
  bucket width: spread inside one bucket is invisible (a constant service time reads 0)
  and the ``+Inf`` bucket is underestimated. Sheppard's correction is not applied
  because the bucket widths differ;
- latency p50/p95/p99: ``histogram_quantile(q, sum by (le, stage)
  (rate(quartfaas_stage_latency_seconds_bucket{code="200"}[W])))`` (linear inside a
  bucket), the mean from ``_sum``/``_count``; end to end from
  ``gateway_functions_seconds{function_name="<pipeline>.<gateway.namespace>"}``;
- queue length, in-flight, ready and starting replicas: the ``quartfaas_stage_*`` gauges.
  Draining replicas are not exported (0); CPU per replica is the spec's.

Staleness and faults are values, never exceptions out of ``collect``: unreachable, an HTTP
or PromQL error, a timeout (``timeout_s`` for the whole tick) or missing gauges give
``data_age_s=None``; otherwise ``data_age_s`` is the age of the latest ready-replicas
sample of the stalest stage (``timestamp()``, Prometheus' clock on both sides) and an
age above ``stale_after_s`` adds a ``stale`` note (policies hold on ``data_age_s > stale_after_s``).
A no-data snapshot keeps the replica counts of the last good one, so a ``hold`` decision
reads "hold at 3", not "hold at 0". ``note`` starts with a kind (``unreachable``,
``timeout``, ``http-error``, ``query-error``, ``bad-response``, ``no-samples``, ``stale``).

``metrics/promql.py`` writes the queries and parses the answers;
``metrics/prometheus_server.py`` starts a real Prometheus for tests and local runs.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import replace

import httpx

from quartfaas.control.snapshot import LatencyStats, PipelineSnapshot, StageSnapshot
from quartfaas.metrics.promql import (
    CV_GAUGE,
    QUANTILES,
    READY,
    NoData,
    Sample,
    build_queries,
    e2e_label,
    grouped_scv,
    parse_samples,
)
from quartfaas.spec import PipelineSpec


def _num(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _int(gauges: Mapping[str, float], name: str) -> int:
    v = gauges.get(name)
    return int(v) if v is not None and math.isfinite(v) else 0


class PrometheusCollector:
    """``collect(now)`` via PromQL against ``base_url`` (e.g. ``http://127.0.0.1:9090``)."""

    source = "prometheus"

    def __init__(
        self,
        base_url: str,
        spec: PipelineSpec,
        *,
        window_s: float | None = None,
        timeout_s: float = 2.0,
        stale_after_s: float | None = None,
        client: httpx.AsyncClient | None = None,
        job: str | None = None,
    ) -> None:
        if timeout_s <= 0:
            raise ValueError(f"timeout_s ({timeout_s}) must be > 0")
        self.base_url = base_url.rstrip("/")
        self.spec = spec
        self.window_s = spec.controller.window_s if window_s is None else window_s
        if self.window_s <= 0:
            raise ValueError(f"window_s ({self.window_s}) must be > 0")
        self.timeout_s = timeout_s
        self.stale_after_s = (
            spec.controller.stale_after_s if stale_after_s is None else stale_after_s
        )
        self._client = client
        self._own_client = client is None
        self._names = [s.name for s in spec.stages]
        self._last_good: PipelineSnapshot | None = None
        self._e2e = e2e_label(spec.name, spec.gateway.namespace)
        self.queries = build_queries(
            spec.name, self._names, self.window_s, job, namespace=spec.gateway.namespace
        )

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout_s)
        return self._client

    async def aclose(self) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _query(self, promql: str) -> list[Sample]:
        try:
            resp = await self._http().post(
                f"{self.base_url}/api/v1/query",
                data={"query": promql},
                timeout=self.timeout_s,
            )
        except httpx.TimeoutException:
            raise NoData(
                "timeout",
                f"Prometheus at {self.base_url} did not answer within timeout_s {self.timeout_s:g}",
            ) from None
        except httpx.TransportError as exc:
            raise NoData(
                "unreachable", f"Prometheus at {self.base_url}: {type(exc).__name__}: {exc}"
            ) from None
        try:
            body = resp.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            raise NoData(
                "http-error" if resp.status_code != 200 else "bad-response",
                f"HTTP {resp.status_code} from {self.base_url}: {resp.text[:200]!r}",
            )
        if body.get("status") != "success":
            kind = "query-error" if resp.status_code in (200, 400, 422) else "http-error"
            raise NoData(
                kind,
                f"HTTP {resp.status_code}: {body.get('errorType', '?')}: "
                f"{str(body.get('error', ''))[:300]}",
            )
        return parse_samples(body, self.base_url)

    # -- collect --------------------------------------------------------------------

    async def collect(self, now: float) -> PipelineSnapshot:
        """The snapshot at ``now``; problems become ``data_age_s=None`` and a ``note``."""
        try:
            names = list(self.queries)
            async with asyncio.timeout(self.timeout_s):
                # return_exceptions: every query finishes before we look (no orphan tasks).
                results = await asyncio.gather(
                    *(self._query(self.queries[n]) for n in names), return_exceptions=True
                )
            answers: dict[str, list[Sample]] = {}
            for name, result in zip(names, results, strict=True):
                if isinstance(result, BaseException):
                    raise result
                answers[name] = result
            snap = self._build(now, answers)
        except (KeyError, TypeError, ValueError) as exc:  # a malformed answer: no data
            return self._no_data(now, f"bad-response: from {self.base_url}: {exc!r}")
        except NoData as why:
            return self._no_data(now, why.note)
        except TimeoutError:
            return self._no_data(
                now,
                f"timeout: Prometheus at {self.base_url} did not "
                f"answer within timeout_s {self.timeout_s:g}",
            )
        self._last_good = snap
        return snap

    def _no_data(self, now: float, note: str) -> PipelineSnapshot:
        if self._last_good is not None:
            ago = now - self._last_good.now
            stages = tuple(
                replace(
                    _bare(s), ready_replicas=s.ready_replicas, starting_replicas=s.starting_replicas
                )
                for s in self._last_good.stages
            )
            note += f" (replica counts are the last known, from {ago:.1f}s ago)"
        else:
            stages = tuple(self._spec_stage(i) for i in range(len(self._names)))
        return PipelineSnapshot(
            now=now,
            pipeline=self.spec.name,
            slo_p99_s=self.spec.slo.p99_ms / 1000.0,
            stages=stages,
            window_s=self.window_s,
            data_age_s=None,
            source=self.source,
            note=note,
        )

    def _spec_stage(self, i: int) -> StageSnapshot:
        s = self.spec.stages[i]
        return StageSnapshot(
            name=s.name,
            index=i,
            min_replicas=s.min_replicas,
            max_replicas=s.max_replicas,
            max_concurrency=s.max_concurrency,
            cpu_per_replica=s.cpu,
        )

    def _build(self, now: float, res: dict[str, list[Sample]]) -> PipelineSnapshot:
        w = self.window_s
        tags: dict[tuple[str, str, str], float] = {}  # (qf, function or stage, code) -> value
        for labels, _, v in res["rates"] + res["quantiles"]:
            name = labels.get("stage") or labels.get("function_name", "")
            if name == self._e2e and "stage" not in labels:
                name = self.spec.name
            tag = labels.get("qf", "")
            tag = {"esum": "lsum", "ecnt": "lcnt"}.get(tag, tag)
            tags[tag, name, labels.get("code", "")] = v
        gauges: dict[str, dict[str, float]] = {}
        sample_ts, eval_ts = [], 0.0
        for labels, t, v in res["gauges"]:
            if labels.get("qf") == "ts":
                sample_ts.append(v)
                eval_ts = max(eval_ts, t)
            elif "__name__" in labels:
                gauges.setdefault(labels.get("stage", ""), {})[labels["__name__"]] = v
        missing = [n for n in self._names if READY not in gauges.get(n, {})]
        if missing:
            raise NoData(
                "no-samples",
                f"Prometheus at {self.base_url} has no current {READY} for stages {missing} "
                "(gateway not scraped yet, target down, or another pipeline?)",
            )
        # Prometheus' clock on both sides: eval time minus the oldest stage's scrape time.
        age = max(eval_ts - min(sample_ts), 0.0) if sample_ts else 0.0
        buckets: dict[str, list[tuple[float, float]]] = {}
        for labels, _, v in res["service_buckets"]:
            buckets.setdefault(labels.get("stage", ""), []).append((float(labels["le"]), v))

        def get(tag: str, name: str, code: str = "") -> float | None:
            v = tags.get((tag, name, code))
            return None if v is None else _num(v)

        def latency(name: str) -> LatencyStats:
            cnt, tot = get("lcnt", name), get("lsum", name)
            if not cnt or tot is None:
                return LatencyStats()
            p50, p95, p99 = (get(tag, name) for tag in QUANTILES)
            return LatencyStats(round(cnt * w), tot / cnt, p50, p95, p99)

        stages = []
        for i, name in enumerate(self._names):
            g = gauges[name]
            arr = get("arr", name)
            codes = {c: v for (tag, n, c), v in tags.items() if tag == "fin" and n == name}
            scnt, ssum = get("scnt", name), get("ssum", name)
            stages.append(
                replace(
                    self._spec_stage(i),
                    ready_replicas=_int(g, READY),
                    starting_replicas=_int(g, "quartfaas_stage_starting_replicas"),
                    queue_len=_int(g, "quartfaas_stage_queue_length"),
                    in_flight=_int(g, "quartfaas_stage_inflight"),
                    arrival_rate=arr,
                    arrival_cv=_num(g.get(CV_GAUGE, math.nan)),
                    departure_rate=codes.get("200", 0.0) if codes or arr is not None else None,
                    departure_cv=None,  # not exported by the gateway
                    service_mean_s=ssum / scnt if scnt and ssum is not None else None,
                    service_scv=grouped_scv(buckets[name]) if name in buckets else None,
                    latency=latency(name),
                    arrivals=round(arr * w) if arr else 0,
                    rejected=round(codes.get("429", 0.0) * w),
                    errors=round(sum(v for c, v in codes.items() if c not in ("200", "429")) * w),
                )
            )
        note = ""
        if age > self.stale_after_s:
            note = (
                f"stale: the latest gauge samples are {age:.1f}s old "
                f"(> stale_after_s {self.stale_after_s:g})"
            )
        return PipelineSnapshot(
            now=now,
            pipeline=self.spec.name,
            slo_p99_s=self.spec.slo.p99_ms / 1000.0,
            stages=tuple(stages),
            e2e=latency(self.spec.name),
            window_s=w,
            data_age_s=age,
            source=self.source,
            note=note,
        )


def _bare(s: StageSnapshot) -> StageSnapshot:
    """A stage with its configuration only (no measurements)."""
    return StageSnapshot(
        name=s.name,
        index=s.index,
        min_replicas=s.min_replicas,
        max_replicas=s.max_replicas,
        max_concurrency=s.max_concurrency,
        cpu_per_replica=s.cpu_per_replica,
    )

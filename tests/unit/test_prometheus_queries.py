"""PrometheusCollector against a fake Prometheus (httpx.MockTransport): parsing and faults."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

import httpx
import numpy as np
import pytest
import yaml

from helpers import synthetic_spec
from quartfaas.control.snapshot import PipelineSnapshot
from quartfaas.metrics.gateway_metrics import LATENCY_BUCKETS
from quartfaas.metrics.prometheus import PrometheusCollector
from quartfaas.metrics.prometheus_server import (
    PrometheusNotFound,
    PrometheusServer,
    prometheus_config,
)
from quartfaas.metrics.promql import grouped_scv
from quartfaas.spec import PipelineSpec

EVAL = 1_800_000_000.0
W = 10.0
E2E = "p.openfaas-fn"  # the pipeline's function_name: name.namespace (gateway.namespace)


def spec(n: int = 2) -> PipelineSpec:
    return synthetic_spec(
        n,
        name="p",
        stage_overrides={0: {"cpu": 2.0, "max_replicas": 9}},
        controller={"enabled": False, "window_s": W, "interval_s": 1.0, "stale_after_s": 15.0},
    )


def vec(*samples: tuple[dict[str, str], float], t: float = EVAL) -> dict[str, Any]:
    return {
        "status": "success",
        "data": {
            "resultType": "vector",
            "result": [{"metric": m, "value": [t, _fmt(v)]} for m, v in samples],
        },
    }


def _fmt(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


class FakeProm:
    """Answers the collector's four queries from the fields below."""

    def __init__(self, collector_queries: dict[str, str], stages: list[str]) -> None:
        self.q = collector_queries
        self.stages = stages
        self.requests: list[str] = []
        self.sample_age = 0.4
        self.ready = dict.fromkeys(stages, 2.0)
        self.override: Callable[[str], httpx.Response] | None = None

    def rates(self) -> dict[str, Any]:
        s0, s1 = self.stages[:2]
        return vec(
            ({"qf": "arr", "stage": s0}, 5.0),
            ({"qf": "arr", "stage": s1}, 0.0),
            ({"qf": "fin", "stage": s0, "code": "200"}, 4.5),
            ({"qf": "fin", "stage": s0, "code": "429"}, 0.3),
            ({"qf": "fin", "stage": s0, "code": "504"}, 0.1),
            ({"qf": "fin", "stage": s0, "code": "502"}, 0.1),
            ({"qf": "ssum", "stage": s0}, 0.09),
            ({"qf": "scnt", "stage": s0}, 4.5),
            ({"qf": "ssum", "stage": s1}, 0.0),
            ({"qf": "scnt", "stage": s1}, 0.0),
            ({"qf": "lsum", "stage": s0}, 0.18),
            ({"qf": "lcnt", "stage": s0}, 4.5),
            ({"qf": "esum", "function_name": E2E}, 0.5),
            ({"qf": "ecnt", "function_name": E2E}, 5.0),
        )

    def quantiles(self) -> dict[str, Any]:
        s0, s1 = self.stages[:2]
        out = []
        for tag, v in (("p50", 0.03), ("p95", 0.06), ("p99", 0.08)):
            out.append(({"qf": tag, "stage": s0}, v))
            out.append(({"qf": tag, "stage": s1}, math.nan))  # no observations
            out.append(({"qf": tag, "function_name": E2E}, 2 * v))
        return vec(*out)

    def buckets(self) -> dict[str, Any]:
        s0 = self.stages[0]
        cum = {"0.01": 0.0, "0.025": 4.5, "0.05": 4.5, "+Inf": 4.5}  # all in (0.01, 0.025]
        return vec(*(({"le": le, "stage": s0}, v) for le, v in cum.items()))

    def gauges(self) -> dict[str, Any]:
        out = []
        for i, s in enumerate(self.stages):
            base = {"stage": s, "job": "quartfaas", "instance": "127.0.0.1:1"}
            if s in self.ready:
                out.append(({**base, "__name__": "quartfaas_stage_ready_replicas"}, self.ready[s]))
                out.append(({"qf": "ts", **base}, EVAL - self.sample_age))
            out.append(({**base, "__name__": "quartfaas_stage_starting_replicas"}, 1.0))
            out.append(({**base, "__name__": "quartfaas_stage_queue_length"}, 7.0 + i))
            out.append(({**base, "__name__": "quartfaas_stage_inflight"}, 3.0))
            if i == 0:
                out.append(({**base, "__name__": "quartfaas_stage_arrival_cv"}, 1.4))
        return vec(*out)

    def __call__(self, request: httpx.Request) -> httpx.Response:
        assert request.url.path == "/api/v1/query" and request.method == "POST"
        query = parse_qs(request.content.decode())["query"][0]
        self.requests.append(query)
        if self.override is not None:
            return self.override(query)
        kind = next(k for k, q in self.q.items() if q == query)
        body = {
            "rates": self.rates,
            "quantiles": self.quantiles,
            "service_buckets": self.buckets,
            "gauges": self.gauges,
        }[kind]()
        return httpx.Response(200, json=body)


def make(
    n: int = 2, **kw: Any
) -> tuple[PrometheusCollector, FakeProm, Callable[[float], PipelineSnapshot]]:
    sp = spec(n)
    holder: dict[str, Any] = {}
    transport = httpx.MockTransport(lambda r: holder["fake"](r))  # noqa: PLW0108 (late-bound)
    client = httpx.AsyncClient(transport=transport)
    c = PrometheusCollector("http://prom.test:9090", sp, client=client, **kw)
    fake = FakeProm(c.queries, [s.name for s in sp.stages])
    holder["fake"] = fake

    def collect(now: float) -> PipelineSnapshot:
        return asyncio.run(c.collect(now))

    return c, fake, collect


def test_parses_every_field() -> None:
    _, fake, collect = make()
    snap = collect(100.0)
    assert len(fake.requests) == 4
    assert snap.has_data and snap.data_age_s == pytest.approx(0.4)
    assert (snap.source, snap.note, snap.now, snap.window_s) == ("prometheus", "", 100.0, W)
    s0, s1 = snap.stages
    assert (s0.ready_replicas, s0.starting_replicas, s0.queue_len, s0.in_flight) == (2, 1, 7, 3)
    assert (s0.min_replicas, s0.max_replicas, s0.cpu_per_replica) == (1, 9, 2.0)
    assert s0.arrival_rate == 5.0 and s0.arrivals == 50
    assert s0.arrival_cv == 1.4
    assert s0.departure_rate == 4.5 and s0.departure_cv is None
    assert (s0.rejected, s0.errors) == (3, 2)
    assert s0.service_mean_s == pytest.approx(0.02)
    assert s0.service_scv == 0.0  # one bucket: grouped data has no spread
    assert s0.latency.count == 45 and s0.latency.mean_s == pytest.approx(0.04)
    assert (s0.latency.p50_s, s0.latency.p95_s, s0.latency.p99_s) == (0.03, 0.06, 0.08)
    assert snap.e2e.count == 50 and snap.e2e.p99_s == pytest.approx(0.16)
    # Stage 1: idle (rate 0) with no service samples: None, not 0 and not NaN.
    assert s1.arrival_rate == 0.0 and s1.arrivals == 0
    assert s1.departure_rate == 0.0
    assert s1.arrival_cv is None and s1.service_mean_s is None and s1.service_scv is None
    assert s1.latency.count == 0 and s1.latency.p99_s is None
    assert s1.queue_len == 8


def test_queries_are_vectorised_not_per_stage() -> None:
    c, fake, collect = make(12)
    snap = collect(1.0)
    assert snap.has_data and len(snap.stages) == 12
    assert len(fake.requests) == 4
    q = c.queries
    assert 'sum by (stage) (rate(quartfaas_stage_arrivals_total{stage=~"p-s0|p-s1|' in q["rates"]
    assert (
        "histogram_quantile(0.99, sum by (le, stage) "
        '(rate(quartfaas_stage_latency_seconds_bucket{code="200",' in q["quantiles"]
    )
    assert f'gateway_functions_seconds_bucket{{code="200",function_name="{E2E}"}}' in q["quantiles"]
    assert (
        "sum by (le, stage) (rate(quartfaas_stage_service_seconds_bucket{" in q["service_buckets"]
    )
    assert "[10000ms]" in q["rates"]
    assert "timestamp(quartfaas_stage_ready_replicas" in q["gauges"]


def test_job_matcher_goes_into_every_selector() -> None:
    c, _, _ = make(job="gw-a")
    for q in c.queries.values():
        assert 'job="gw-a"' in q


def test_stale_samples_give_their_age_and_a_note() -> None:
    _, fake, collect = make()
    fake.sample_age = 42.0
    snap = collect(5.0)
    assert snap.data_age_s == pytest.approx(42.0)
    assert snap.note.startswith("stale:") and "stale_after_s 15" in snap.note
    assert snap.has_data  # an age, which policies compare with their stale_after_s


def unreachable(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("All connection attempts failed", request=request)


def test_unreachable_gives_no_data_with_a_note_and_keeps_last_known_replicas() -> None:
    _, fake, collect = make()
    first = collect(10.0)
    fake.override = lambda q: unreachable(httpx.Request("POST", "http://prom.test"))
    snap = collect(12.5)
    assert snap.data_age_s is None and not snap.has_data
    assert snap.note.startswith("unreachable: Prometheus at http://prom.test:9090")
    assert "last known, from 2.5s ago" in snap.note
    for a, b in zip(first.stages, snap.stages, strict=True):
        assert (b.ready_replicas, b.starting_replicas) == (a.ready_replicas, a.starting_replicas)
        assert b.arrival_rate is None and b.queue_len == 0 and b.latency.p99_s is None
    # Data returns: the next tick is normal again.
    fake.override = None
    again = collect(13.0)
    assert again.has_data and again.note == ""


def test_unreachable_before_any_data_uses_the_spec_only() -> None:
    _, fake, collect = make()
    fake.override = lambda q: unreachable(httpx.Request("POST", "http://prom.test"))
    snap = collect(1.0)
    assert not snap.has_data and "last known" not in snap.note
    s0 = snap.stages[0]
    assert (s0.ready_replicas, s0.max_replicas, s0.cpu_per_replica) == (0, 9, 2.0)


def test_a_read_timeout_is_no_data() -> None:
    _, fake, collect = make()

    def slow(q: str) -> httpx.Response:
        raise httpx.ReadTimeout("timed out")

    fake.override = slow
    snap = collect(1.0)
    assert not snap.has_data and snap.note.startswith("timeout:")


def test_a_server_that_never_answers_times_out_as_no_data() -> None:
    sp = spec()
    never = asyncio.Event()

    async def hang(request: httpx.Request) -> httpx.Response:
        await never.wait()  # a hung Prometheus: only the collector's deadline ends this
        raise AssertionError("unreachable")

    async def main() -> PipelineSnapshot:
        client = httpx.AsyncClient(transport=httpx.MockTransport(hang))
        c = PrometheusCollector("http://prom.test", sp, client=client, timeout_s=0.02)
        return await c.collect(3.0)

    snap = asyncio.run(main())
    assert not snap.has_data and snap.note.startswith("timeout:") and "0.02" in snap.note


@pytest.mark.parametrize(
    ("response", "kind"),
    [
        (httpx.Response(503, text="Service Unavailable"), "http-error"),
        (
            httpx.Response(
                400,
                json={"status": "error", "errorType": "bad_data", "error": "parse error at char 5"},
            ),
            "query-error",
        ),
        (httpx.Response(200, text="<html>not prometheus</html>"), "bad-response"),
        (
            httpx.Response(
                200, json={"status": "success", "data": {"resultType": "matrix", "result": []}}
            ),
            "bad-response",
        ),
        (httpx.Response(200, json={"status": "success", "data": {}}), "bad-response"),
    ],
)
def test_errors_are_no_data_with_their_kind(response: httpx.Response, kind: str) -> None:
    _, fake, collect = make()
    fake.override = lambda q: response
    snap = collect(1.0)
    assert not snap.has_data and snap.note.startswith(f"{kind}:"), snap.note


def test_malformed_samples_are_no_data() -> None:
    _, fake, collect = make()
    bad = vec(({"qf": "arr", "function_name": "p-s0"}, 1.0))
    bad["data"]["result"][0]["value"] = [EVAL, "not-a-number"]
    fake.override = lambda q: httpx.Response(200, json=bad)
    snap = collect(1.0)
    assert not snap.has_data and snap.note.startswith("bad-response:")


def test_missing_stage_gauges_are_no_data() -> None:
    _, fake, collect = make()
    del fake.ready["p-s1"]
    snap = collect(1.0)
    assert not snap.has_data
    assert snap.note.startswith("no-samples:") and "p-s1" in snap.note


def test_grouped_scv() -> None:
    assert grouped_scv([]) is None
    assert grouped_scv([(0.1, 0.0), (math.inf, 0.0)]) is None
    assert grouped_scv([(0.01, 0.0), (0.025, 10.0), (math.inf, 10.0)]) == 0.0
    # Two equal masses at midpoints 0.5 and 1.5: mean 1, variance 0.25.
    assert grouped_scv([(1.0, 5.0), (2.0, 10.0), (math.inf, 10.0)]) == pytest.approx(0.25)
    # Exponential service binned into the gateway's buckets reads close to its SCV of 1.
    rng = np.random.default_rng(3)
    for mean in (0.02, 0.05, 0.2):
        x = rng.exponential(mean, 20_000)
        b = [(le, float((x <= le).sum())) for le in LATENCY_BUCKETS] + [(math.inf, 20_000.0)]
        assert grouped_scv(b) == pytest.approx(1.0, abs=0.1)


def test_prometheus_config() -> None:
    text = prometheus_config(["127.0.0.1:8080", "127.0.0.1:8081"], 0.5, job="gw")
    cfg = yaml.safe_load(text)
    assert cfg["global"]["scrape_interval"] == "500ms"
    assert cfg["global"]["scrape_timeout"] == "500ms"  # never longer than the interval
    job = cfg["scrape_configs"][0]
    assert job["job_name"] == "gw" and job["metrics_path"] == "/metrics"
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:8080", "127.0.0.1:8081"]
    assert yaml.safe_load(prometheus_config(["h:1"], 30.0))["global"]["scrape_timeout"] == "10000ms"
    with pytest.raises(ValueError, match="target"):
        prometheus_config([], 1.0)
    with pytest.raises(ValueError, match="scrape_timeout_s"):
        prometheus_config(["h:1"], 1.0, scrape_timeout_s=2.0)


def test_missing_binary_says_what_to_install(tmp_path: Any) -> None:
    with pytest.raises(PrometheusNotFound, match="Debian's 'prometheus' package"):
        PrometheusServer(["127.0.0.1:1"], binary=str(tmp_path / "no-such-prometheus"))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="timeout_s"):
        PrometheusCollector("http://x", spec(), timeout_s=0)
    with pytest.raises(ValueError, match="window_s"):
        PrometheusCollector("http://x", spec(), window_s=-1.0)

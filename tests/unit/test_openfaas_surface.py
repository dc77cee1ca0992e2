"""The OpenFaaS protocol helpers: names, namespaces, info, headers, 501s, scale requests."""

from __future__ import annotations

import asyncio
import re

import pytest

from quartfaas.dataplane.openfaas import (
    ASYNC_FUNCTION_ROUTE,
    DEFAULT_CLIENT_NAMESPACE,
    FUNCTION_ROUTE,
    NOT_APPLICABLE,
    SERVED_BY,
    CallContext,
    Namespaces,
    system_info,
)
from quartfaas.dataplane.openfaas_scale import (
    StageBounds,
    parse_scale_request,
    pipeline_targets,
    stage_target,
)
from quartfaas.errors import BadRequest, NotApplicable, http_status

KNOWN = ["tiny", "tiny-embed", "tiny-mid", "tiny-head"]


def test_paths_split_name_and_namespace_as_clients_send_them() -> None:
    ns = Namespaces("quartfaas")
    assert ns.split("tiny", KNOWN) == ("tiny", None)
    assert ns.split("tiny.openfaas-fn", KNOWN) == ("tiny", "openfaas-fn")
    assert ns.split("tiny-mid.quartfaas", KNOWN) == ("tiny-mid", "quartfaas")
    # An unknown namespace stays in the name: the caller answers 404 for "tiny.other".
    assert ns.split("tiny.other", KNOWN) == ("tiny.other", None)
    # A known function whose name holds a dot is taken whole.
    assert ns.split("v1.2", ["v1.2"]) == ("v1.2", None)
    assert ns.split(".openfaas-fn", KNOWN) == (".openfaas-fn", None)


def test_namespace_checks_labels_and_listing() -> None:
    ns = Namespaces("quartfaas")
    ns.check(None)
    ns.check("")
    ns.check("quartfaas")
    ns.check(DEFAULT_CLIENT_NAMESPACE)
    with pytest.raises(
        BadRequest, match=r"'dev' does not exist here; namespaces: \['quartfaas', 'openfaas-fn'\]"
    ):
        ns.check("dev")
    assert ns.listed() == ["quartfaas"]
    assert ns.label("tiny") == "tiny.quartfaas"
    bare = Namespaces("", aliases=())
    assert bare.label("tiny") == "tiny" and bare.listed() == []


def test_function_routes_take_namespace_trailing_slash_and_sub_paths() -> None:
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    async def handler(_: web.Request) -> web.Response:
        return web.Response()

    app = web.Application()
    app.router.add_route("*", FUNCTION_ROUTE, handler)
    app.router.add_route("POST", ASYNC_FUNCTION_ROUTE, handler)

    async def resolve(method: str, path: str) -> dict[str, str] | None:
        info = await app.router.resolve(make_mocked_request(method, path, app=app))
        return None if info.http_exception is not None else dict(info)

    async def main() -> None:
        for method, path, name, rest in [
            ("POST", "/function/tiny", "tiny", ""),
            ("GET", "/function/tiny/", "tiny", "/"),
            ("PUT", "/function/tiny.openfaas-fn/a/b", "tiny.openfaas-fn", "/a/b"),
            ("POST", "/async-function/tiny.openfaas-fn", "tiny.openfaas-fn", ""),
            ("POST", "/async-function/tiny/x", "tiny", "/x"),
        ]:
            assert await resolve(method, path) == {"name": name, "path": rest}, path
        assert await resolve("POST", "/function/ti%20ny") is None
        assert await resolve("GET", "/async-function/tiny") is None  # POST only, as upstream

    asyncio.run(main())


def test_call_context_makes_a_uuid_or_keeps_the_callers() -> None:
    made = CallContext.begin({}, 1_700_000_000_123_456_789, new_id=lambda: "uuid-1")
    assert made.generated and made.call_id == "uuid-1"
    assert made.upstream_headers() == {"X-Call-Id": "uuid-1", "X-Start-Time": "1700000000123456789"}
    h = made.response_headers(0.0123456)
    assert h == {
        "X-Call-Id": "uuid-1",
        "X-Start-Time": "1700000000123456789",
        "X-Served-By": SERVED_BY,
        "X-Duration-Seconds": "0.012346",
    }
    kept = CallContext.begin({"X-Call-Id": "abc"}, 5)
    assert not kept.generated and kept.call_id == "abc"
    assert "X-Duration-Seconds" not in kept.response_headers()
    real = CallContext.begin({}, 5)
    assert re.fullmatch(
        r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", real.call_id
    )


def test_system_info_has_what_faas_cli_version_reads() -> None:
    info = system_info(orchestration="embedded", release="1.2.3", sha="abc", arch="x86_64")
    assert info["provider"] == {
        "provider": "quartfaas",
        "orchestration": "embedded",
        "version": {"release": "1.2.3", "sha": "abc"},
    }
    assert info["version"]["release"] == "1.2.3" and info["version"]["sha"] == "abc"
    assert info["arch"] == "x86_64"
    assert isinstance(system_info(orchestration="embedded")["arch"], str)


def test_not_applicable_routes_answer_501_with_a_reason() -> None:
    paths = {r.path for r in NOT_APPLICABLE}
    assert {"/system/functions", "/system/secrets", "/system/logs"} <= paths
    for route in NOT_APPLICABLE:
        err = route.error()
        assert isinstance(err, NotApplicable) and http_status(err) == 501
        assert "not" in err.message and len(err.message) > 40
    deploy = next(r for r in NOT_APPLICABLE if r.path == "/system/functions")
    assert set(deploy.methods) == {"POST", "PUT", "DELETE"}  # GET lists functions


def test_scale_request_parsing() -> None:
    r = parse_scale_request({"serviceName": "s", "namespace": "openfaas-fn", "replicas": 0}, "s")
    assert (r.service, r.replicas, r.namespace) == ("s", 0, "openfaas-fn")
    assert parse_scale_request({"replicas": 2}, "s").service == "s"
    assert (
        parse_scale_request({"serviceName": "s.openfaas-fn", "replicas": 1}, "s").namespace
        == "openfaas-fn"
    )
    for body, msg in [
        ([], "JSON object"),
        ({"serviceName": "x", "replicas": 1}, "does not match"),
        ({"replicas": "2"}, "integer"),
        ({"replicas": True}, "integer"),
        ({"replicas": 1.0}, "integer"),
        ({"replicas": -1}, ">= 0"),
        ({"replicas": 1, "namespace": 3}, "namespace"),
    ]:
        with pytest.raises(BadRequest, match=msg):
            parse_scale_request(body, "s")


def test_stage_target_honours_the_stage_bounds() -> None:
    zero_ok = StageBounds("a", 0, 4, 1)
    assert stage_target(zero_ok, 0) == 0
    with pytest.raises(
        BadRequest,
        match=r"below the minimum of b \(1, com.openfaas.scale.min\); set min_replicas: 0",
    ):
        stage_target(StageBounds("b", 1, 4, 1), 0)
    with pytest.raises(BadRequest, match=r"above the maximum of b \(4"):
        stage_target(StageBounds("b", 1, 4, 1), 5)


def test_pipeline_scales_its_stages_in_proportion() -> None:
    stages = [StageBounds("e", 1, 8, 1), StageBounds("m", 1, 8, 3), StageBounds("h", 1, 8, 1)]
    assert pipeline_targets(stages, 2) == {"e": 2, "m": 6, "h": 2}
    assert pipeline_targets(stages, 1) == {"e": 1, "m": 3, "h": 1}
    # A stage that would exceed its maximum is clamped; the pipeline's count is still n.
    capped = [StageBounds("e", 1, 8, 1), StageBounds("m", 1, 4, 3)]
    t = pipeline_targets(capped, 2)
    assert t == {"e": 2, "m": 4} and min(t.values()) == 2
    # Nothing running: every stage gets n.
    cold = [StageBounds("e", 0, 4, 0), StageBounds("m", 0, 4, 2)]
    assert pipeline_targets(cold, 3) == {"e": 3, "m": 3}
    assert pipeline_targets(cold, 0) == {"e": 0, "m": 0}
    with pytest.raises(BadRequest, match="below the minimum of e"):
        pipeline_targets(stages, 0)
    with pytest.raises(BadRequest, match="above the maximum of m"):
        pipeline_targets(capped, 5)


def test_scaled_pipeline_count_is_n_whenever_it_is_accepted() -> None:
    # The invariant the docstring claims, over a small grid of stage states.
    import itertools

    for cur, n in itertools.product(itertools.product(range(4), repeat=3), range(6)):
        stages = [StageBounds(f"s{i}", i % 2, 4, c) for i, c in enumerate(cur)]
        try:
            t = pipeline_targets(stages, n)
        except BadRequest:
            assert any(not s.min_replicas <= n <= s.max_replicas for s in stages)
            continue
        assert min(t.values()) == n
        assert all(s.min_replicas <= t[s.name] <= s.max_replicas for s in stages)

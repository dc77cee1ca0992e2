"""The runtime sections of a spec: ``slo``, ``gateway`` (with ``auth``) and ``cache`` (the
host-memory parameter cache)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, StrictBool, StrictFloat, StrictInt

from quartfaas.spec.base import Frozen


class SLOSpec(Frozen):
    p99_ms: StrictFloat = Field(1000.0, gt=0, le=3_600_000, description="end-to-end p99 target, ms")
    timeout_budget_s: StrictFloat = Field(
        10.0, gt=0, le=86_400, description="end-to-end budget split into per-stage timeouts"
    )


class AuthSpec(Frozen):
    """Basic auth on /system/* (OpenFaaS does the same). The password comes from the env."""

    enabled: StrictBool = Field(False, description="require basic auth on /system/* endpoints")
    username: str = Field("admin", min_length=1, description="basic-auth user name")
    password_env: str = Field(
        "QUARTFAAS_GATEWAY_PASSWORD", description="environment variable holding the password"
    )


class GatewaySpec(Frozen):
    host: str = Field("127.0.0.1", description="bind address (loopback by default)")
    port: StrictInt = Field(8080, ge=0, le=65535, description="bind port (0: any free port)")
    max_queue_len: StrictInt = Field(1024, ge=1, le=1_000_000, description="per-stage queue bound")
    max_body_bytes: StrictInt = Field(
        16 * 1024 * 1024, ge=1024, le=2**31, description="largest accepted request body"
    )
    replica_start_timeout_s: StrictFloat = Field(
        120.0, gt=0, le=3600, description="a replica not ready by then is failed and replaced"
    )
    drain_timeout_s: StrictFloat = Field(
        30.0, ge=0, le=3600, description="longest wait for in-flight work when stopping"
    )
    retry_after_s: StrictFloat = Field(1.0, gt=0, le=600, description="Retry-After sent with 429")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="basic auth on /system/*")
    # openfaas-fn by default: faas-cli and the go-sdk put it in every function URL unless
    # told otherwise, and upstream's dashboards and docs query `name.openfaas-fn`, so
    # existing OpenFaaS tools work with no setting. Whatever is set here, `openfaas-fn`
    # stays accepted in paths, queries and scale bodies.
    namespace: str = Field(
        "openfaas-fn",
        pattern=r"^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)?$",
        description="OpenFaaS namespace of the functions: /function/NAME.NAMESPACE, "
        "GET /system/namespaces and the function_name metric label NAME.NAMESPACE "
        "(empty: bare names)",
    )


class CacheSpec(Frozen):
    """Host-memory parameter cache (stage template processes that fork replicas)."""

    enabled: StrictBool = Field(True, description="start replicas by fork from a stage template")
    memory_threshold_frac: StrictFloat = Field(
        0.85, gt=0, le=1, description="cached stages may use at most this share of host memory"
    )
    prefork: StrictInt = Field(
        1, ge=0, le=64, description="warmed children each template keeps forked in advance"
    )
    prefork_refill_delay_s: StrictFloat = Field(
        1.0,
        ge=0,
        le=600,
        description="wait after handing over a pre-forked child before "
        "forking and warming its replacement (so its warm-up does not compete with the "
        "new replica's first requests)",
    )
    idle_to_zero_s: StrictFloat = Field(
        300.0, gt=0, le=86_400, description="a min_replicas=0 stage idle this long goes to 0"
    )
    shm_dir: Path = Field(
        Path("/dev/shm/quartfaas"), description="tmpfs directory for the mmap tier"
    )

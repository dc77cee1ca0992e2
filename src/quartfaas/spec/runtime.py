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


class OutlierSpec(Frozen):
    """Outlier ejection (``dataplane/outlier.py``, Envoy's outlier detection): when a replica
    leaves its stage's rotation, and when it comes back."""

    max_consecutive_failures: StrictInt = Field(
        3, ge=1, le=1000, description="5xx answers in a row that eject a replica (call "
        "timeouts do not count: an overloaded stage gives its healthy replicas those too)"
    )  # fmt: skip
    probe_interval_s: StrictFloat = Field(
        0.5, gt=0, le=600, description="seconds between two /healthz probes of each replica"
    )
    probe_timeout_s: StrictFloat = Field(
        2.0, gt=0, le=600, description="a replica that answers no /healthz probe within "
        "this is ejected until it answers one (a hung process still accepts connections)"
    )  # fmt: skip
    base_ejection_s: StrictFloat = Field(
        5.0, ge=0, le=3600, description="least time out of rotation after an ejection for "
        "failed calls (a replica that answers probes may keep failing calls)"
    )  # fmt: skip


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
    max_batch: StrictInt = Field(
        64, ge=1, le=65536, description="most inputs (rows) per request, pipeline or stage"
    )
    max_inflight_bytes: StrictInt = Field(
        512 * 1024 * 1024,
        ge=1024,
        le=2**40,
        description="request bodies the gateway holds at once (all functions); a request "
        "past it is refused with 429 before its body is read",
    )
    stage_inflight_bytes: StrictInt = Field(
        256 * 1024 * 1024,
        ge=1024,
        le=2**40,
        description="frames queued for or running on one stage at once; past it, 429",
    )
    header_timeout_s: StrictFloat = Field(
        10.0,
        gt=0,
        le=3600,
        description="a connection that sends no complete request head this long after it "
        "opens or after its last reply (idle keep-alive included) is closed",
    )
    body_timeout_s: StrictFloat = Field(
        30.0, gt=0, le=3600, description="a request body not read by then is answered 408"
    )
    auth: AuthSpec = Field(default_factory=AuthSpec, description="basic auth on /system/*")
    outlier: OutlierSpec = Field(
        default_factory=OutlierSpec, description="outlier ejection of replicas (probes, failures)"
    )
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
        1,
        ge=0,
        le=64,
        description="warmed children each template keeps forked in advance "
        "(the least; the controller raises it from the forecast up to prefork_max)",
    )
    prefork_refill_delay_s: StrictFloat = Field(
        1.0,
        ge=0,
        le=600,
        description="most a refill waits after a handover while the host is saturated "
        "(prefork_refill_max_load_per_core); on a host that is not, it refills at once",
    )
    prefork_refill_max_load_per_core: StrictFloat = Field(
        4.0,
        ge=0,
        le=1000,
        description="1-min load average per core at which the host counts as saturated "
        "and a refill waits (its warm-up forwards would compete with serving); 0: never",
    )
    prefork_max: StrictInt = Field(
        16, ge=0, le=256,
        description="most warmed children the controller may ask a template to keep",
    )  # fmt: skip
    fork_warmup: StrictBool = Field(
        True,
        description="a freshly forked replica runs a warm-up forward before it says ready "
        "(off: ready at once, the first request pays the warm-up)",
    )
    idle_to_zero_s: StrictFloat = Field(
        300.0, gt=0, le=86_400, description="a min_replicas=0 stage idle this long goes to 0"
    )
    shm_dir: Path = Field(
        Path("/dev/shm/quartfaas"), description="tmpfs directory for the mmap tier"
    )

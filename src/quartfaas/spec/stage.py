"""One entry of a spec's ``stages``: a function with its layers, device, CPU share,
concurrency, replica bounds and timeout."""

from __future__ import annotations

import math
import re
from pathlib import Path

from pydantic import Field, StrictFloat, StrictInt, ValidationInfo, field_validator

from quartfaas.spec.base import Frozen, check_name
from quartfaas.spec.model import SyntheticWork

_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?)$")


class StageSpec(Frozen):
    """One pipeline stage, deployed as one function with its own replicas."""

    name: str = Field(description="function name of the stage (OpenFaaS/Kubernetes name)")
    layers: tuple[int, int] | None = Field(
        None, description="encoder layers [start, end) of this stage; default: an even split"
    )
    weights: Path | None = Field(
        None, description="stage safetensors file (default <weights_dir>/<name>.safetensors)"
    )
    device: str = Field("cpu", description="torch device: cpu, cuda or cuda:N")
    cpu: StrictFloat = Field(1.0, gt=0, le=256, description="CPU share of one replica, in cores")
    threads: StrictInt | None = Field(
        None, ge=1, le=256, description="torch intra-op threads (default floor(cpu), >= 1)"
    )
    max_concurrency: StrictInt = Field(
        1, ge=1, le=64, description="concurrent requests per replica"
    )
    min_replicas: StrictInt = Field(
        1, ge=0, le=4096, description="fewest replicas (0: scale to zero)"
    )
    max_replicas: StrictInt = Field(4, ge=1, le=4096, description="most replicas")
    timeout_s: StrictFloat | None = Field(
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
        return check_name(name, "stage name")

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

"""Settings of the CPU Compensator (pydantic, frozen): steps, settling time, caps.

Loaded from the ``compensator_config`` option of the ``"quart"`` policy; defaults are the
prototype's Algorithm 2. Validated at load time like ``ControllerConfig``.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator


class CompensatorConfig(BaseModel):
    """Settings of the CPU Compensator (defaults: the prototype's Algorithm 2)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    min_cpu: float = Field(default=1.0, gt=0, le=1024, description="least CPU per replica, cores")
    max_cpu: float = Field(default=16.0, gt=0, le=1024, description="most CPU per replica, cores")
    host_cores: float | None = Field(
        default=None,
        gt=0,
        le=4096,
        description="cores of the host the replicas run on; caps max_cpu",
    )
    increment_ratio: float = Field(
        default=0.25, gt=0, le=1, description="first raise as a fraction of the gap to the demand"
    )
    min_increment: float = Field(default=0.5, gt=0, le=64, description="least first raise, cores")
    stop_increment: float = Field(
        default=0.1, ge=0, le=64, description="raising ends when the halved increment is below this"
    )
    improvement_threshold: float = Field(
        default=0.05,
        ge=0,
        lt=1,
        description="a raise that cuts tail latency by less than this stops",
    )
    settle_s: float = Field(default=10.0, gt=0, le=3600, description="wait after a change, seconds")
    max_steps: int = Field(default=5, ge=1, le=100, description="most raises in one episode")
    percentile: float = Field(
        default=0.99, gt=0.5, lt=1, description="tail the stage budget is for"
    )
    min_latency_samples: int = Field(
        default=10,
        ge=1,
        le=10_000_000,
        description="fewer latency samples than this count as no data",
    )
    busy_utilisation_frac: float = Field(
        default=0.9,
        gt=0,
        le=1,
        description="CPU utilisation (of the quota) that counts as CPU-bound",
    )
    release_utilisation_frac: float = Field(
        default=0.5, gt=0, lt=1, description="CPU utilisation below which load has fallen"
    )
    release_headroom_frac: float = Field(
        default=0.7, gt=0, le=1, description="utilisation a give-back aims for (used cores / this)"
    )
    release_after_s: float = Field(
        default=60.0,
        ge=0,
        le=86_400,
        description="utilisation must stay low this long to give back",
    )

    @property
    def cap_cpu(self) -> float:
        """``max_cpu``, bounded by the host's cores when known."""
        return self.max_cpu if self.host_cores is None else min(self.max_cpu, self.host_cores)

    @model_validator(mode="after")
    def _check(self) -> CompensatorConfig:
        if self.max_cpu < self.min_cpu:
            raise ValueError(f"max_cpu ({self.max_cpu}) must be >= min_cpu ({self.min_cpu})")
        if self.host_cores is not None and self.host_cores < self.min_cpu:
            raise ValueError(f"host_cores ({self.host_cores}) must be >= min_cpu ({self.min_cpu})")
        if self.release_utilisation_frac >= self.release_headroom_frac:
            raise ValueError(
                f"release_utilisation_frac ({self.release_utilisation_frac}) must be < "
                f"release_headroom_frac ({self.release_headroom_frac})"
            )
        if self.release_utilisation_frac >= self.busy_utilisation_frac:
            raise ValueError(
                f"release_utilisation_frac ({self.release_utilisation_frac}) must be < "
                f"busy_utilisation_frac ({self.busy_utilisation_frac})"
            )
        return self

    def clamp(self, cores: float) -> float:
        return min(self.cap_cpu, max(self.min_cpu, cores))


__all__ = ["CompensatorConfig"]

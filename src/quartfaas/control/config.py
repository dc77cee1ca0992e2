"""Controller settings (pydantic, frozen): what the control loop and its policies read.

Loaded as the ``controller`` section of a pipeline spec, or on its own by
``quartfaas control``. Gains, bounds and durations are validated at load time so that a
bad setting fails with the field, the value and the rule instead of misbehaving later.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

# Every name ``registry.make_policy`` accepts: Quart's two first, then the baselines, sorted.
# The names live here, below the registry, so the settings can be validated without
# importing the policies (tests/unit/test_quart_policy.py checks the registry builds these).
POLICY_NAMES: tuple[str, ...] = (
    "quart",
    "quart-corrector",
    "hpa",
    "knative",
    "openfaas-ce",
    "openfaas-pro",
    "ray",
    "static",
    "uniform",
)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class PIDGains(_Frozen):
    """Gains of the per-stage PID correction (error = observed tail / budget - 1)."""

    kp: float = Field(2.0, ge=0, le=100, description="proportional gain, replicas per unit error")
    ki: float = Field(0.3, ge=0, le=100, description="integral gain, replicas per unit error-s")
    kd: float = Field(0.1, ge=0, le=100, description="derivative gain (on measurement)")
    integral_limit: float = Field(
        4.0, gt=0, le=1000, description="clamp of the integral term's contribution, replicas"
    )


class ControllerConfig(_Frozen):
    enabled: bool = Field(True, description="run the controller inside `quartfaas serve`")
    policy: str = Field("quart", min_length=1, description="scaling policy name")
    interval_s: float = Field(1.0, gt=0, le=3600, description="seconds between decisions")
    window_s: float = Field(
        10.0, gt=0, le=3600, description="measurement window for rates, CVs and percentiles"
    )
    percentile: float = Field(
        0.99, gt=0.5, lt=1.0, description="tail percentile the per-stage budget applies to"
    )
    stage_budget: Literal["proportional", "equal"] = Field(
        "proportional", description="split of the end-to-end SLO into per-stage budgets"
    )
    target_utilisation: float = Field(
        0.8, gt=0, lt=1, description="highest utilisation the queueing model may plan for"
    )
    pid: PIDGains = Field(default_factory=PIDGains, description="feedback gains")
    up_cooldown_s: float = Field(
        2.0, ge=0, le=86_400, description="least time between two scale-ups of a stage"
    )
    down_cooldown_s: float = Field(
        30.0, ge=0, le=86_400, description="least time between two scale-downs of a stage"
    )
    downscale_delay_s: float = Field(
        15.0, ge=0, le=86_400, description="load must stay low this long before scaling down"
    )
    max_step_up: int = Field(8, ge=1, le=4096, description="most replicas added per tick")
    max_step_down: int = Field(2, ge=1, le=4096, description="most replicas removed per tick")
    critical_score: float = Field(
        0.1, ge=0, le=100, description="stages scoring above this are critical"
    )
    stale_after_s: float = Field(
        15.0, gt=0, le=86_400, description="metrics older than this are treated as missing"
    )
    smoother: bool = Field(True, description="enable the pipeline smoother")
    compensator: bool = Field(True, description="enable the CPU compensator")
    predictor: Literal["auto", "qna", "gat"] = Field(
        "auto",
        description="burst predictor of the smoother (auto: the shipped GAT only if "
        "its held-out error beats QNA's)",
    )

    @field_validator("policy")
    @classmethod
    def _known_policy(cls, name: str) -> str:
        if name not in POLICY_NAMES:
            raise ValueError(f"must be one of {list(POLICY_NAMES)}")
        return name

    @model_validator(mode="after")
    def _check(self) -> ControllerConfig:
        if self.window_s < self.interval_s:
            raise ValueError(
                f"window_s ({self.window_s}) must be >= interval_s ({self.interval_s})"
            )
        return self

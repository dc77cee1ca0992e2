"""Controller settings (pydantic, frozen): what the control loop and its policies read.

Loaded as the ``controller`` section of a pipeline spec, or on its own by
``quartfaas control``. Gains, bounds and durations are validated at load time so that a
bad setting fails with the field, the value and the rule instead of misbehaving later.
"""

from __future__ import annotations

import warnings
from typing import Any, Literal

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


# Settings of the per-stage-budget controller that the joint planner replaced (issue 12).
# Old specs still load: the keys are dropped with a warning that says what replaced them.
RETIRED_KEYS: dict[str, str] = {
    "pid": "the raw-replica PID is gone: feedback now corrects the tail model's inputs "
    "(see controller.feedback)",
    "stage_budget": "the SLO is no longer split into per-stage budgets: the planner sizes "
    "the pipeline jointly and reports the budgets it derives",
}


class FeedbackSettings(_Frozen):
    """Feedback that corrects the tail model's per-stage service time (``feedback.py``)."""

    time_constant_s: float = Field(
        60.0, gt=0, le=86_400, description="EWMA time constant of the learned factors"
    )
    min_dt_s: float = Field(
        10.0,
        ge=0,
        le=3600,
        description="least time between two updates (a tail over one window is one sample)",
    )
    max_dt_s: float = Field(30.0, gt=0, le=86_400, description="longest gap one update counts")
    max_rel: float = Field(
        0.5, gt=0, le=10, description="factors stay within [1/(1+max_rel), 1+max_rel]"
    )


class ControllerConfig(_Frozen):
    enabled: bool = Field(True, description="run the controller inside `quartfaas serve`")
    policy: str = Field("quart", min_length=1, description="scaling policy name")
    interval_s: float = Field(1.0, gt=0, le=3600, description="seconds between decisions")
    window_s: float = Field(
        10.0, gt=0, le=3600, description="measurement window for rates, CVs and percentiles"
    )
    percentile: float = Field(
        0.99, gt=0.5, lt=1.0, description="the SLO's percentile: what the planner meets"
    )
    target_utilisation: float = Field(
        0.8,
        gt=0,
        lt=1,
        description="highest utilisation of a stage's measured load the planner may plan for",
    )
    feedback: FeedbackSettings = Field(
        default_factory=FeedbackSettings, description="model-input feedback"
    )
    up_cooldown_s: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="least time between two scale-ups of a stage (0: the plan may rise "
        "every tick; replicas already starting count toward it)",
    )
    down_cooldown_s: float = Field(
        30.0, ge=0, le=86_400, description="least time between two scale-downs of a stage"
    )
    downscale_delay_s: float = Field(
        60.0,
        ge=0,
        le=86_400,
        description="the plan must ask for fewer replicas this long before scaling down",
    )
    downscale_headroom_frac: float = Field(
        0.15,
        ge=0,
        le=10,
        description="scale down only to what a plan for this much more load needs, or "
        "for three standard errors of the measured load more if that is wider (a band "
        "against flapping at a boundary; 0: no band)",
    )
    upscale_confirm_s: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="a scale-up that a plan for the load less its noise band would not "
        "make (an increase within measurement noise) waits until the plan has asked for "
        "more this long; clear increases, growing queues and forecast bursts scale up at "
        "once; a rise clear at a stage is clear for the stages after it. 0 (the default): "
        "every scale-up at once (benchmarks/flapping.py: no stage moves twice in 10 "
        "minutes at 5 and 20 req/s either way; 10 s moves fewer), but 10 s also delays "
        "scale-ups early in a burst (live emulated pipeline: 97.5-98.2% of requests "
        "within the SLO against 100% at 0)",
    )
    service_memory_samples: float = Field(
        300.0,
        ge=0,
        le=1_000_000,
        description="plan on a stage's service mean and SCV remembered over about this "
        "many completions rather than one window's (fewer at low rates: a 10 s window "
        "of 5 req/s holds ~50, and their noise flapped counts); 0: the window's alone",
    )
    service_memory_max_s: float = Field(
        120.0,
        gt=0,
        le=86_400,
        description="the service memory spans at most about this long, so a real change "
        "of a stage's service time shows within it",
    )
    max_step_up: int = Field(8, ge=1, le=4096, description="most replicas added per tick")
    max_step_down: int = Field(2, ge=1, le=4096, description="most replicas removed per tick")
    critical_score: float = Field(
        0.1, ge=0, le=100, description="stages scoring above this are critical"
    )
    stale_after_s: float = Field(
        15.0, gt=0, le=86_400, description="metrics older than this are treated as missing"
    )
    host_cores: float | None = Field(
        None,
        gt=0,
        le=4096,
        description="cores of the host replicas run on: the CPU compensator's cap (None: "
        "the runtime fills in the machine's, the simulator its server's)",
    )
    smoother: bool = Field(True, description="enable the pipeline smoother")
    compensator: bool = Field(True, description="enable the CPU compensator")
    predictor: Literal["auto", "qna", "gat"] = Field(
        "auto",
        description="burst predictor of the smoother (auto: the shipped GAT only if "
        "its held-out error beats QNA's)",
    )

    @model_validator(mode="before")
    @classmethod
    def _retired(cls, data: Any) -> Any:
        if isinstance(data, dict) and any(k in data for k in RETIRED_KEYS):
            data = dict(data)
            for key, why in RETIRED_KEYS.items():
                if key in data:
                    data.pop(key)
                    warnings.warn(
                        f"controller.{key} is ignored: {why}; remove it from the spec",
                        UserWarning,
                        stacklevel=2,
                    )
        return data

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

"""The whole spec: ``PipelineSpec`` (checks across sections: unique names, stages that cover
the model's layers) and the values derived from it (stage layers, timeouts, weight paths)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from quartfaas.control.config import ControllerConfig
from quartfaas.spec.base import FieldError, Frozen, check_name
from quartfaas.spec.model import ModelSpec
from quartfaas.spec.runtime import CacheSpec, GatewaySpec, SLOSpec
from quartfaas.spec.stage import StageSpec


class PipelineSpec(Frozen):
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
        return check_name(name, "pipeline name")

    @model_validator(mode="after")
    def _check(self) -> PipelineSpec:
        names = [s.name for s in self.stages]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise FieldError("stages", f"stage names must be unique; repeated: {dup}")
        if self.name in names:
            raise FieldError(
                "name", f"pipeline name {self.name!r} must differ from every stage name"
            )
        if self.model.kind == "synthetic":
            missing = [s.name for s in self.stages if s.synthetic is None]
            if missing:
                raise FieldError(
                    "stages",
                    f"model.kind 'synthetic' needs a 'synthetic' section on every stage; "
                    f"missing on {missing}",
                )
        else:
            given = [s.synthetic is not None for s in self.stages]
            if any(given):
                raise FieldError(
                    "stages",
                    f"'synthetic' is only allowed with model.kind 'synthetic' "
                    f"(model.kind is {self.model.kind!r})",
                )
            self._check_layers()
        return self

    def _check_layers(self) -> None:
        total = self.model.num_layers
        ranges = [s.layers for s in self.stages]
        if all(r is None for r in ranges):
            if len(self.stages) > total + 1:
                raise FieldError(
                    "stages",
                    f"{len(self.stages)} stages cannot split a model of {total} layers "
                    f"(at most {total + 1}: one per layer plus the head)",
                )
            return
        if any(r is None for r in ranges):
            raise FieldError("stages", "either every stage gives 'layers' or none does")
        expect = 0
        for stage in self.stages:
            assert stage.layers is not None
            start, end = stage.layers
            if start != expect:
                raise FieldError(
                    "stages",
                    f"stage {stage.name!r} layers {list(stage.layers)} must start at {expect}: "
                    "stages must cover the model's layers contiguously and in order",
                )
            expect = end
        if expect != total:
            raise FieldError(
                "stages", f"stages cover layers [0, {expect}) but the model has {total} layers"
            )

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

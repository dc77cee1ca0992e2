"""Pipeline specs: YAML in, frozen pydantic models out.

A spec names a pipeline, the model it serves, the stages the model is split into (each an
OpenFaaS-style function with its own replicas), the end-to-end SLO, and the settings of
the gateway, the parameter cache and the controller. Every field carries a unit in its
name, a description and a constraint; an invalid spec fails with a ``SpecError`` whose
message names the field, the value and the rule (``format_validation_error``).

Neighbours: ``models/`` builds stage modules from ``ModelSpec`` + ``StageSpec``;
``dataplane/`` serves them; ``control/config.py`` holds the controller's settings.

Modules: ``model`` (the model section), ``stage`` (one stage), ``runtime`` (SLO, gateway,
auth, outlier ejection, cache), ``pipeline`` (the whole spec and derived values),
``loading`` (YAML in, ``SpecError`` out), ``base`` (frozen models, names). Import from
``quartfaas.spec``.
"""

from quartfaas.spec.loading import format_validation_error, load_spec, parse_spec
from quartfaas.spec.model import (
    MINILM_HIDDEN,
    MINILM_LAYERS,
    BertModelSpec,
    DType,
    MiniLMModelSpec,
    ModelSpec,
    SyntheticModelSpec,
    SyntheticWork,
)
from quartfaas.spec.pipeline import PipelineSpec, even_split
from quartfaas.spec.runtime import AuthSpec, CacheSpec, GatewaySpec, OutlierSpec, SLOSpec
from quartfaas.spec.stage import StageSpec

__all__ = [
    "MINILM_HIDDEN", "MINILM_LAYERS", "AuthSpec", "BertModelSpec", "CacheSpec", "DType",
    "GatewaySpec", "MiniLMModelSpec", "ModelSpec", "OutlierSpec", "PipelineSpec", "SLOSpec",
    "StageSpec", "SyntheticModelSpec", "SyntheticWork", "even_split", "format_validation_error",
    "load_spec", "parse_spec",
]  # fmt: skip

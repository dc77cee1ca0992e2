"""Build stage ``i`` of a pipeline spec: the entry point workers and tests call.

:func:`build_stage` returns a :class:`StageModel`: a ``TorchStage`` (``torch_stage.py``)
for ``bert``/``minilm`` pipelines, or a :class:`SyntheticStage` for ``synthetic`` ones.
This module does not import torch at import time, and the synthetic path never does: a
synthetic worker starts in the time it takes to import numpy.

Weights (``weights=``):

* ``"mmap"`` / ``"copy"``: the stage file named by the spec, checked against
  ``<weights_dir>/manifest.json`` (see ``weights.py`` for what the two modes share);
* ``"memory"``: made in memory, no files (seeded init, or sliced from the MiniLM package);
* a mapping of tensors: already loaded (e.g. by a parameter-cache template process with
  ``weights.load_stage_state``); assigned without copying.

Neighbours: ``inputs.py`` (contract), ``layout.py`` (what a stage holds), ``make.py``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

import numpy as np

from quartfaas.models.inputs import (
    ATTENTION_MASK,
    EMBEDDING,
    HIDDEN,
    INPUT_IDS,
    InputContract,
    example_arrays,
    validate_inputs,
)
from quartfaas.models.layout import (
    dtype_name,
    encoder_config,
    model_id,
    stage_parts,
    stage_tensor_shapes,
)
from quartfaas.spec import (
    BertModelSpec,
    MiniLMModelSpec,
    PipelineSpec,
    StageSpec,
    SyntheticModelSpec,
)

if TYPE_CHECKING:
    import torch

# Vocabulary of synthetic pipelines (they have no model): the simple tokenizer's default.
SYNTHETIC_VOCAB_SIZE = 30522

WeightsSource = Literal["mmap", "copy", "memory"]


@runtime_checkable
class StageModel(Protocol):
    """What a worker needs from a stage. ``forward`` raises ModelInputError on bad input."""

    name: str
    index: int
    param_bytes: int

    @property
    def input_names(self) -> tuple[str, ...]: ...

    @property
    def output_names(self) -> tuple[str, ...]: ...

    def validate_inputs(self, inputs: Mapping[str, Any]) -> None: ...

    def forward(self, inputs: Mapping[str, Any], *, validate: bool = True) -> dict[str, Any]: ...

    def example_inputs(self, batch: int = 1, seq_len: int = 16) -> dict[str, Any]: ...

    def to(self, device: str) -> StageModel: ...


def input_contract(spec: PipelineSpec, index: int) -> InputContract:
    """The input contract of stage ``index`` (torch-free: the gateway may use it)."""
    model = spec.model
    first, last = index == 0, index == spec.num_stages - 1
    name = spec.stages[index].name
    if isinstance(model, SyntheticModelSpec):
        return InputContract(
            name, first, last, model.hidden_size, "float32", SYNTHETIC_VOCAB_SIZE, model.max_seq_len
        )
    cfg = encoder_config(model)
    return InputContract(
        name, first, last, cfg.hidden_size, cfg.dtype, cfg.vocab_size, model.max_seq_len
    )


class SyntheticStage:
    """A weightless stage (numpy). Stage 0 turns ``input_ids`` into zero ``hidden`` (float32
    [B, T, hidden_size]); middle stages pass inputs through; the last mean-pools ``hidden``
    over the mask into ``embedding``, as real stages do. The work a synthetic stage stands
    for (``StageSpec.synthetic``: sleep or spin) is the worker's to do, not the model's.
    Accepts numpy arrays or CPU torch tensors; returns numpy arrays."""

    def __init__(self, spec: PipelineSpec, index: int) -> None:
        self.name = spec.stages[index].name
        self.index = index
        self.param_bytes = 0
        self.contract = input_contract(spec, index)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.contract.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.contract.output_names

    def validate_inputs(self, inputs: Mapping[str, Any]) -> None:
        validate_inputs(inputs, self.contract)

    def forward(self, inputs: Mapping[str, Any], *, validate: bool = True) -> dict[str, Any]:
        if validate:
            self.validate_inputs(inputs)
        mask = np.asarray(inputs[ATTENTION_MASK])
        if self.contract.first:
            batch, seq_len = np.asarray(inputs[INPUT_IDS]).shape
            hidden = np.zeros((batch, seq_len, self.contract.hidden_size), dtype=np.float32)
        else:
            hidden = np.asarray(inputs[HIDDEN])
        if not self.contract.last:
            return {HIDDEN: hidden, ATTENTION_MASK: mask}
        m = mask[:, :, None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        return {EMBEDDING: pooled.astype(np.float32)}

    __call__ = forward

    def example_inputs(self, batch: int = 1, seq_len: int = 16) -> dict[str, Any]:
        return dict(example_arrays(self.contract, batch, seq_len))

    def to(self, device: str) -> SyntheticStage:
        return self  # no weights to move

    def __repr__(self) -> str:
        return f"SyntheticStage({self.name!r}, index={self.index})"


def build_stage(
    spec: PipelineSpec,
    index: int,
    *,
    device: str | None = None,
    weights: WeightsSource | Mapping[str, torch.Tensor] = "mmap",
    verify: bool = False,
) -> StageModel:
    """Stage ``index`` of ``spec`` with its weights, on ``device`` (default: the stage's).

    Raises WeightsError (file missing, truncated, corrupt with ``verify``, or made for
    another spec or split: the message names the file and says to run
    ``quartfaas make-weights SPEC``), or SpecError for an unavailable device.
    """
    model = spec.model
    if not 0 <= index < spec.num_stages:
        raise IndexError(f"stage index {index} out of range (pipeline has {spec.num_stages})")
    if isinstance(model, SyntheticModelSpec):
        return SyntheticStage(spec, index)
    from quartfaas.models.torch_stage import TorchStage
    from quartfaas.models.weights import check_state_layout

    parts = stage_parts(spec, index)
    shapes = stage_tensor_shapes(spec, index)
    dtype = dtype_name(model)
    if isinstance(weights, str):
        state, source = _load(spec, index, weights, verify)
    else:
        state, source = dict(weights), f"the given state of stage {spec.stages[index].name!r}"
    check_state_layout(state, shapes, dtype, source)
    return TorchStage(
        spec.stages[index].name,
        cfg=encoder_config(model),
        parts=parts,
        contract=input_contract(spec, index),
        state=state,
        device=device or spec.stages[index].device,
    )


def _load(
    spec: PipelineSpec, index: int, mode: WeightsSource, verify: bool
) -> tuple[dict[str, torch.Tensor], str]:
    from quartfaas.errors import WeightsError
    from quartfaas.models.make import expected_info, iter_stage_tensors
    from quartfaas.models.weights import find_manifest_entry, load_stage_state, read_manifest

    if mode == "memory":
        return dict(iter_stage_tensors(spec, index)), "in-memory weights"
    if mode not in ("mmap", "copy"):
        raise ValueError(f"weights must be 'mmap', 'copy', 'memory' or a mapping, not {mode!r}")
    model = spec.model
    assert isinstance(model, BertModelSpec | MiniLMModelSpec)
    path = Path(spec.stage_weights_path(index))
    if not spec.verify and find_manifest_entry(path) is None:  # the spec's `verify: false`
        state = load_stage_state(path, mode, False, allow_unlisted=True)
        return state, f"unverified weights file {str(path)!r}"
    manifest = read_manifest(Path(spec.weights_dir))
    if manifest.model_id != model_id(model):
        raise WeightsError(
            f"weights in {str(spec.weights_dir)!r} were made for another model "
            f"({manifest.model}); run `quartfaas make-weights SPEC` to (re)generate them"
        )
    name = spec.stages[index].name
    info = manifest.stages.get(name)
    want = expected_info(spec, index, path)
    if info is None or (info.layers, info.embeddings) != (want.layers, want.embeddings):
        raise WeightsError(
            f"weights manifest in {str(spec.weights_dir)!r} has no up-to-date entry for stage "
            f"{name!r} (layers {list(want.layers)}) for file {str(path)!r}; run "
            "`quartfaas make-weights SPEC` to (re)generate it"
        )
    return load_stage_state(path, mode, verify, expected=info), f"weights file {str(path)!r}"


def build_pipeline(
    spec: PipelineSpec,
    *,
    device: str | None = None,
    weights: WeightsSource = "mmap",
    verify: bool = False,
) -> list[StageModel]:
    """Every stage of ``spec``, in order."""
    return [
        build_stage(spec, i, device=device, weights=weights, verify=verify)
        for i in range(spec.num_stages)
    ]


def run_pipeline(stages: Sequence[StageModel], inputs: Mapping[str, Any]) -> dict[str, Any]:
    """Run ``stages`` one after another, each stage's output dict feeding the next."""
    out: Mapping[str, Any] = inputs
    for stage in stages:
        out = stage.forward(out)
    return dict(out)


def unpartitioned(spec: PipelineSpec, name: str = "whole") -> PipelineSpec:
    """``spec`` with one stage holding every layer (the reference for partitioned runs)."""
    first = spec.stages[0]
    stage = StageSpec.model_validate(
        {"name": name, "device": first.device, "synthetic": first.synthetic}
    )
    return spec.model_copy(update={"stages": (stage,)})

"""A real (torch) pipeline stage: an ``EncoderStage`` with weights, checks and warm-up.

Built by ``stage.build_stage``; this module is the only one of the stage path that imports
torch, so synthetic workers never pay for it. Weights are *assigned* into a module built
empty (parameters on the ``meta`` device) with ``load_state_dict(assign=True)``: the
module's parameters are the loaded tensors themselves, so with mmap loading a stage holds
no private copy of its weights, and a forked child shares them. Nothing here starts
threads or sets the thread count: the worker does that (``StageSpec.torch_threads``).

Neighbours: ``bert.py`` (the module), ``weights.py`` (loading), ``inputs.py`` (checks).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from quartfaas.errors import SpecError
from quartfaas.models.bert import TORCH_DTYPES, EncoderStage
from quartfaas.models.inputs import (
    ATTENTION_MASK,
    HIDDEN,
    INPUT_IDS,
    InputContract,
    example_arrays,
    validate_inputs,
)
from quartfaas.models.layout import EncoderConfig, StageParts


def check_device(device: str, stage: str) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise SpecError(
            f"stage {stage!r} asks for device {device!r} but CUDA is not available here "
            f"(torch {torch.__version__}); set the stage's device to 'cpu'"
        )
    return dev


class TorchStage:
    """One stage of a BERT/MiniLM pipeline. Inputs: numpy arrays or torch tensors; outputs:
    torch tensors on the CPU (ready for framing), ``embedding`` always float32."""

    def __init__(
        self,
        name: str,
        *,
        cfg: EncoderConfig,
        parts: StageParts,
        contract: InputContract,
        state: Mapping[str, torch.Tensor],
        device: str = "cpu",
    ) -> None:
        self.name = name
        self.index = parts.index
        self.cfg = cfg
        self.parts = parts
        self.contract = contract
        self.dtype = TORCH_DTYPES[cfg.dtype]
        module = EncoderStage(cfg, parts)  # parameters on "meta": built empty
        # assign=True keeps the given tensors (mmap views stay mmap views: no copy).
        module.load_state_dict(dict(state), strict=True, assign=True)
        module.requires_grad_(False)
        self.module = module.eval()
        self.param_bytes = sum(t.numel() * t.element_size() for t in state.values())
        self.device = torch.device("cpu")
        self.to(device)

    @property
    def input_names(self) -> tuple[str, ...]:
        return self.contract.input_names

    @property
    def output_names(self) -> tuple[str, ...]:
        return self.contract.output_names

    def to(self, device: str | torch.device) -> TorchStage:
        """Move the weights to ``device`` (e.g. a GPU child copying from host memory)."""
        dev = check_device(str(device), self.name)
        if dev != self.device:
            self.module.to(dev)
            self.device = dev
        return self

    def validate_inputs(self, inputs: Mapping[str, Any]) -> None:
        """Raise ModelInputError if ``inputs`` do not fit this stage."""
        validate_inputs(inputs, self.contract)

    def _tensor(self, x: Any) -> torch.Tensor:
        t = torch.from_numpy(x) if isinstance(x, np.ndarray) else x
        return t.to(self.device, non_blocking=True)

    def forward(self, inputs: Mapping[str, Any], *, validate: bool = True) -> dict[str, Any]:
        """Run the stage. First stage: input_ids + attention_mask; others: hidden +
        attention_mask. Returns {hidden, attention_mask} or, on the last, {embedding}."""
        if validate:
            self.validate_inputs(inputs)
        mask = self._tensor(inputs[ATTENTION_MASK])
        with torch.inference_mode():
            if self.parts.embeddings:
                out = self.module(mask, input_ids=self._tensor(inputs[INPUT_IDS]))
            else:
                out = self.module(mask, hidden=self._tensor(inputs[HIDDEN]))
        if self.device.type != "cpu":
            out = {k: v.cpu() for k, v in out.items()}
        return out

    __call__ = forward

    def example_inputs(self, batch: int = 1, seq_len: int = 16) -> dict[str, Any]:
        """Valid inputs of this size, for warm-up."""
        arrays = example_arrays(self.contract, batch, seq_len)
        out = {k: torch.from_numpy(v) for k, v in arrays.items()}
        if HIDDEN in out:
            out[HIDDEN] = out[HIDDEN].to(self.dtype)
        return out

    def __repr__(self) -> str:
        return (
            f"TorchStage({self.name!r}, index={self.index}, layers=[{self.parts.start}, "
            f"{self.parts.end}), embeddings={self.parts.embeddings}, head={self.parts.head}, "
            f"{self.cfg.dtype}, {self.param_bytes} bytes, device={self.device})"
        )

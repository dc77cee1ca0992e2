"""The one BERT-style encoder (torch) that runs both seeded BERTs and all-MiniLM-L6-v2.

A stage is an :class:`EncoderStage`: optional embeddings (stage 0), a run of encoder layers
keyed by their *global* index, and optional mean-pooling head (last stage). The maths
follows Hugging Face's ``BertModel`` (post-LayerNorm, exact-erf GELU, absolute positions,
token type 0, masked keys get the dtype's most negative value), so MiniLM's checkpoint
gives sentence-transformers' embeddings; the attention projections are fused (``qkv``).

Modules are built empty: parameters live on the ``meta`` device (no memory, and no random
init, whose first use on ``meta`` imports torch._dynamo and costs a second of cold start)
and must be filled with ``load_state_dict(state, assign=True)``, which makes the given
tensors (e.g. mmap views) the parameters themselves.

Seeded weights: :func:`init_tensor` makes each tensor from a ``torch.Generator`` seeded by
(model seed, tensor name), so any one stage file can be made alone and reproducibly.

Neighbours: ``layout.py`` names the tensors; ``torch_stage.py`` wraps a stage with input
validation; ``make.py`` writes seeded tensors to files.
"""

from __future__ import annotations

import hashlib

import torch
import torch.nn.functional as nnf
from torch import nn

from quartfaas.models.layout import EncoderConfig, StageParts

TORCH_DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
}

INIT_STD = 0.02  # BERT's initializer_range


def _empty(*shape: int) -> nn.Parameter:
    return nn.Parameter(torch.empty(shape, device="meta"), requires_grad=False)


class Linear(nn.Module):
    """``nn.Linear`` without initialisation (see the module docstring)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.weight = _empty(n_out, n_in)
        self.bias = _empty(n_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nnf.linear(x, self.weight, self.bias)


class LayerNorm(nn.Module):
    def __init__(self, n: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = _empty(n)
        self.bias = _empty(n)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nnf.layer_norm(x, self.weight.shape, self.weight, self.bias, self.eps)


class Table(nn.Module):
    """An embedding table (``nn.Embedding`` without initialisation)."""

    def __init__(self, rows: int, width: int) -> None:
        super().__init__()
        self.weight = _empty(rows, width)


class Embeddings(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.word = Table(cfg.vocab_size, cfg.hidden_size)
        self.position = Table(cfg.max_positions, cfg.hidden_size)
        self.token_type = Table(cfg.type_vocab_size, cfg.hidden_size)
        self.norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        seq_len = input_ids.shape[1]
        positions = torch.arange(seq_len, device=input_ids.device)
        # Same summation order as HF BertEmbeddings: (words + token types) + positions.
        x = nnf.embedding(input_ids, self.word.weight) + self.token_type.weight[0]
        x = x + nnf.embedding(positions, self.position.weight)
        return self.norm(x)


class Attention(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.heads = cfg.heads
        self.qkv = Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = Linear(cfg.hidden_size, cfg.hidden_size)
        self.norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        B, T, H = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, H // self.heads).permute(2, 0, 3, 1, 4)
        ctx = nnf.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        ctx = ctx.transpose(1, 2).reshape(B, T, H)
        return self.norm(self.out(ctx) + x)


class FeedForward(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.up = Linear(cfg.hidden_size, cfg.intermediate_size)
        self.down = Linear(cfg.intermediate_size, cfg.hidden_size)
        self.norm = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.down(nnf.gelu(self.up(x))) + x)


class EncoderLayer(nn.Module):
    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.attn = Attention(cfg)
        self.ffn = FeedForward(cfg)

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return self.ffn(self.attn(x, bias))


def attention_bias(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """[B, T] 0/1 mask -> additive [B, 1, 1, T] bias (HF uses the dtype's min, not -inf,
    so a fully padded row stays finite)."""
    bias = (1.0 - mask[:, None, None, :].to(dtype)) * torch.finfo(dtype).min
    return bias


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor, normalize: bool) -> torch.Tensor:
    """Mean over unmasked tokens in float32 (sentence-transformers' Pooling), then L2."""
    h = hidden.float()
    m = mask.unsqueeze(-1).to(torch.float32)
    pooled = (h * m).sum(dim=1) / m.sum(dim=1).clamp(min=1e-9)
    return nnf.normalize(pooled, p=2.0, dim=1) if normalize else pooled


class EncoderStage(nn.Module):
    """Embeddings (if first) + layers [start, end) + mean-pool head (if last)."""

    def __init__(self, cfg: EncoderConfig, parts: StageParts) -> None:
        super().__init__()
        self.cfg = cfg
        self.parts = parts
        self.embeddings = Embeddings(cfg) if parts.embeddings else None
        self.layers = nn.ModuleDict(
            {str(i): EncoderLayer(cfg) for i in range(parts.start, parts.end)}
        )

    def forward(
        self,
        attention_mask: torch.Tensor,
        *,
        input_ids: torch.Tensor | None = None,
        hidden: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        if self.embeddings is not None:
            assert input_ids is not None
            x = self.embeddings(input_ids)
        else:
            assert hidden is not None
            x = hidden
        if len(self.layers):
            bias = attention_bias(attention_mask, x.dtype)
            for layer in self.layers.values():
                x = layer(x, bias)
        if self.parts.head:
            return {"embedding": mean_pool(x, attention_mask, self.cfg.normalize)}
        return {"hidden": x, "attention_mask": attention_mask}


def tensor_seed(seed: int, name: str) -> int:
    """A 63-bit generator seed from (model seed, tensor name): stable across runs/hosts."""
    digest = hashlib.blake2b(f"{seed}/{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def init_tensor(name: str, shape: tuple[int, ...], seed: int, dtype: torch.dtype) -> torch.Tensor:
    """BERT init of tensor ``name``: LayerNorm weight 1, biases 0, the rest N(0, 0.02).

    Drawn in float32 then cast, so a bfloat16 model holds the rounded float32 weights.
    """
    if name.endswith("norm.weight"):
        return torch.ones(shape, dtype=dtype)
    if name.endswith(".bias"):
        return torch.zeros(shape, dtype=dtype)
    gen = torch.Generator().manual_seed(tensor_seed(seed, name))
    out = torch.empty(shape, dtype=torch.float32)
    out.normal_(0.0, INIT_STD, generator=gen)
    return out if dtype == torch.float32 else out.to(dtype)

"""Transformers for byte-token sequences: a non-causal rater and a causal language model.

Attention is written out (matmul, mask, softmax) instead of F.scaled_dot_product_attention: the
fused kernels implement neither forward-mode AD nor double backward, and both meta-gradient
methods differentiate the inner loss twice (mixflow: forward-over-reverse; backprop:
reverse-over-reverse). No dropout, no buffers: the models run under functional_call.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from drray.data.tokenizer import PAD, VOCAB_SIZE
from drray.registry import INNER_MODELS, RATERS

BYTE_VALUES = 256  # the language model predicts bytes; PAD is never a target


class SelfAttention(nn.Module):
    def __init__(self, d_model: int, heads: int):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model {d_model} is not divisible by heads {heads}")
        self.heads = heads
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.out = nn.Linear(d_model, d_model)

    def forward(self, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        """h [B, L, D]; allowed bool, broadcastable to [B, heads, L, L]: may query i attend to key j."""
        batch, length, d_model = h.shape
        q, k, v = self.qkv(h).view(batch, length, 3, self.heads, d_model // self.heads).permute(2, 0, 3, 1, 4)
        scores = q @ k.transpose(-1, -2) / math.sqrt(d_model // self.heads)
        # A finite floor, not -inf: a row with no allowed key stays finite instead of NaN.
        scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
        mixed = torch.softmax(scores, dim=-1) @ v
        return self.out(mixed.transpose(1, 2).reshape(batch, length, d_model))


class Block(nn.Module):
    """Pre-norm transformer block: attention, then a 4x GELU MLP, each on a residual."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
        self.attention = SelfAttention(d_model, heads)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), nn.GELU(), nn.Linear(4 * d_model, d_model))

    def forward(self, h: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = h + self.attention(self.norm1(h), allowed)
        return h + self.mlp(self.norm2(h))


class Trunk(nn.Module):
    """Byte and learned position embeddings, `layers` blocks and a final LayerNorm."""

    def __init__(self, seq_len: int, d_model: int, layers: int, heads: int):
        super().__init__()
        self.tokens = nn.Embedding(VOCAB_SIZE, d_model)
        self.positions = nn.Parameter(0.02 * torch.randn(seq_len, d_model))
        self.blocks = nn.ModuleList(Block(d_model, heads) for _ in range(layers))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, tokens: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        h = self.tokens(tokens) + self.positions[: tokens.shape[1]]
        for block in self.blocks:
            h = block(h, allowed)
        return self.norm(h)


class TransformerLM(nn.Module):
    """Causal language model: tokens [B, L] -> logits [B, L, 256] for the byte after each position.
    PAD comes only after the text, so causal attention never lets a real position see padding."""

    def __init__(self, seq_len: int, d_model: int = 64, layers: int = 2, heads: int = 4):
        super().__init__()
        self.trunk = Trunk(seq_len, d_model, layers, heads)
        self.head = nn.Linear(d_model, BYTE_VALUES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        length = tokens.shape[1]
        causal = torch.ones(length, length, dtype=torch.bool, device=tokens.device).tril()
        return self.head(self.trunk(tokens, causal))


class TransformerRater(nn.Module):
    """Non-causal rater: every real token attends to every real token (PAD keys masked out), the
    score is a small head on the mean of the real tokens' states. Padding never changes a score.
    Text has no label: y is accepted (the rater interface) and ignored."""

    def __init__(self, seq_len: int, d_model: int = 32, layers: int = 2, heads: int = 2):
        super().__init__()
        self.trunk = Trunk(seq_len, d_model, layers, heads)
        self.head = nn.Sequential(nn.Linear(d_model, d_model), nn.Tanh(), nn.Linear(d_model, 1))

    def forward(self, tokens: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        real = tokens != PAD
        states = self.trunk(tokens, real[:, None, None, :])
        weights = real.to(states.dtype)[..., None]
        pooled = (states * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return self.head(pooled).squeeze(-1)


SIZES = {  # (d_model, layers, heads)
    "transformer": {"rater": (32, 2, 2), "inner": (64, 2, 4)},
    "transformer_tiny": {"rater": (16, 1, 2), "inner": (32, 1, 2)},
    # for transfer: fresh models larger than the inner model a rater was meta-trained with
    "transformer_large": {"rater": (64, 2, 4), "inner": (128, 4, 4)},
}


def _sequence_length(row_shape, arch: str) -> int:
    if len(tuple(row_shape)) != 1:
        raise ValueError(f"arch {arch!r} takes token sequences [L], not {tuple(row_shape)} images; "
                         "use an image arch (mlp, cnn) or auto")
    return int(row_shape[0])


def _register(arch: str) -> None:
    def rater(row_shape, num_classes):
        return TransformerRater(_sequence_length(row_shape, arch), *SIZES[arch]["rater"])

    def inner(row_shape, num_classes):
        return TransformerLM(_sequence_length(row_shape, arch), *SIZES[arch]["inner"])

    for builder in (rater, inner):
        builder.modality = "text"
    RATERS.register(arch)(rater)
    INNER_MODELS.register(arch)(inner)


for _arch in SIZES:
    _register(_arch)

"""Modalities: how a stored row becomes a model input, and the inner model's per-example loss.

An ExampleSet's `rows` column holds either uint8 images [N, H, W] or [N, H, W, C] (`image`) or byte-token ids,
int16 [N, L] padded with PAD (`text`, drray.data.tokenizer). The row shape picks the modality, so the
actors, checkpoints and configs need no extra field: `row_shape` is (H, W) or (L,).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from drray.data.tokenizer import PAD
from drray.errors import DataError


class ImageModality:
    """Classification: x float [B, C, H, W] in [0, 1], loss = cross-entropy at the label. Rows are
    uint8 [B, H, W] (one channel) or [B, H, W, C] (channels last, as Arrow, PIL and Hugging Face
    keep them; C = 3)."""
    name, row_ndims = "image", (2, 3)

    @staticmethod
    def inputs(rows: torch.Tensor) -> torch.Tensor:
        x = rows.unsqueeze(1) if rows.dim() == 3 else rows.permute(0, 3, 1, 2)
        return x.to(torch.float32).div_(255.0)

    @staticmethod
    def losses(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits, y, reduction="none")

    @staticmethod
    def accuracies(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """1.0 where the predicted class is the label, else 0.0."""
        return (logits.argmax(1) == y).to(torch.float32)

    @staticmethod
    def default_arch(row_shape) -> str:
        """8x8 digits: an MLP; 28x28 MNIST: a CNN; colour or larger images: a CNN with global pooling,
        whose size does not grow with the image."""
        if image_channels(row_shape) == 1 and max(row_shape) <= 16:
            return "mlp"
        return "cnn" if image_channels(row_shape) == 1 and max(row_shape) <= 28 else "cnn_gap"


class TextModality:
    """Language modelling: x int64 tokens [B, L]; the model returns next-byte logits [B, L, 256]
    and the loss of a sequence is the mean cross-entropy over its real (non-PAD) next tokens.
    Labels are unused (zeros)."""
    name, row_ndims = "text", (1,)

    @staticmethod
    def inputs(rows: torch.Tensor) -> torch.Tensor:
        return rows.to(torch.int64)

    @staticmethod
    def losses(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        targets = x[:, 1:]
        real = (targets != PAD).to(logits.dtype)
        token_loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), targets.clamp(max=PAD - 1).flatten(),
                                     reduction="none").view_as(real)
        return (token_loss * real).sum(1) / real.sum(1).clamp(min=1.0)  # a 1-byte sequence has no target: 0

    @staticmethod
    def accuracies(logits: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per sequence, the fraction of its real next bytes that are the model's top prediction."""
        targets = x[:, 1:]
        real = (targets != PAD).to(torch.float32)
        hits = (logits[:, :-1].argmax(-1) == targets).to(torch.float32)
        return (hits * real).sum(1) / real.sum(1).clamp(min=1.0)

    @staticmethod
    def default_arch(row_shape) -> str:
        return "transformer"


MODALITIES = {ndim: m for m in (ImageModality, TextModality) for ndim in m.row_ndims}


def modality_for(row_shape) -> type:
    """The modality of rows of this shape: (H, W) or (H, W, C) images, or (L,) token sequences."""
    try:
        return MODALITIES[len(tuple(row_shape))]
    except KeyError:
        raise DataError(f"rows of shape {tuple(row_shape)} are neither images [H, W] / [H, W, C] nor token "
                        "sequences [L]; check the data source") from None


def image_channels(row_shape) -> int:
    """1 for (H, W) images, C for (H, W, C)."""
    return int(row_shape[2]) if len(tuple(row_shape)) == 3 else 1


def modality_of_array(rows: np.ndarray) -> type:
    """The modality of a stored column [N, ...] (images [N, H, W] or [N, H, W, C], tokens [N, L])."""
    return modality_for(np.shape(rows)[1:])


def is_text(row_shape) -> bool:
    """Whether rows of this shape are token sequences [L] (else images)."""
    return modality_for(row_shape) is TextModality


def describe_rows(row_shape) -> str:
    """'28x28 images', '32x32x3 images' or '64-token sequences', for messages."""
    shape = tuple(int(side) for side in row_shape)
    return f"{shape[0]}-token sequences" if len(shape) == 1 else f"{'x'.join(map(str, shape))} images"

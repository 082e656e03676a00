"""The image models: inner classifiers (cnn, cnn_gap, cnn_large, mlp) and raters (cnn, cnn_classifier[_large],
cnn_gap, cnn_gap_classifier, mlp), registered by name. Inputs are float [B, C, H, W] in [0, 1];
a builder reads C from row_shape, (H, W) or (H, W, C)."""
from __future__ import annotations

import torch
from torch import nn

from drray.data.modality import image_channels
from drray.models.layers import ImageConv2d, MaxPool2x2
from drray.registry import INNER_MODELS, RATERS


def _conv_trunk(channels: tuple[int, ...], side: int, padding: int = 1, in_ch: int = 1) -> tuple[nn.Sequential, int]:
    """3x3 convs, each followed by 2x2 max-pool and ReLU; returns (trunk, flattened size). Pooling
    first is the same function as ReLU then pool, with the same gradients (max and ReLU commute,
    and the gradient goes to the same corner), but ReLU then keeps a quarter of the activations
    for its backward, which the next layer keeps anyway (BENCHMARKS.md, reference configuration).
    The modules keep their indices, so rater checkpoints of the ReLU-first order still load."""
    layers: list[nn.Module] = []
    for out_ch in channels:
        conv = ImageConv2d if not layers else nn.Conv2d
        layers += [conv(in_ch, out_ch, 3, padding=padding), MaxPool2x2(), nn.ReLU()]
        in_ch, side = out_ch, (side - 2 + 2 * padding) // 2
    if side < 1:
        raise ValueError(f"input too small for {len(channels)} pooling stages")
    return nn.Sequential(*layers, nn.Flatten()), in_ch * side * side


def _mlp(sizes: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Flatten()]
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(sizes) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


@INNER_MODELS.register("cnn")
def inner_cnn(row_shape: tuple[int, int], num_classes: int) -> nn.Module:
    """Two conv stages and a 128-unit head: 108,618 parameters at 28x28, the reference ToyCNN's size."""
    side = min(row_shape[:2])
    trunk, flat = _conv_trunk((16, 32), side, padding=0 if side >= 16 else 1, in_ch=image_channels(row_shape))
    return nn.Sequential(trunk, nn.Linear(flat, 128), nn.ReLU(), nn.Linear(128, num_classes))


def _gap_trunk(channels: tuple[int, ...], row_shape) -> nn.Sequential:
    """3x3 convs (padding 1), each pooled 2x2 while the side allows, then global average pooling:
    the size does not grow with the image, so any image size takes the same model."""
    layers: list[nn.Module] = []
    in_ch, side = image_channels(row_shape), min(row_shape[:2])
    for out_ch in channels:
        conv = ImageConv2d if not layers else nn.Conv2d
        layers += [conv(in_ch, out_ch, 3, padding=1)] + ([MaxPool2x2()] if side >= 2 else []) + [nn.ReLU()]
        in_ch, side = out_ch, side // 2 if side >= 2 else side
    return nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())


@INNER_MODELS.register("cnn_gap")
def inner_cnn_gap(row_shape, num_classes: int) -> nn.Module:
    """Three conv stages (16, 32, 64), global pooling and a linear head: 24,234 parameters for RGB."""
    return nn.Sequential(_gap_trunk((16, 32, 64), row_shape), nn.Linear(64, num_classes))


@INNER_MODELS.register("cnn_large")
def inner_cnn_large(row_shape, num_classes: int) -> nn.Module:
    """cnn_gap's shape, wider and one stage deeper (64, 128, 256, 256): 962,314 parameters for
    grayscale, ~9x cnn at 28x28; for transfer, fresh models larger than the inner model the rater
    was meta-trained with. Global pooling: any image size, grayscale or colour."""
    return nn.Sequential(_gap_trunk((64, 128, 256, 256), row_shape), nn.Linear(256, num_classes))


@INNER_MODELS.register("mlp")
def inner_mlp(row_shape: tuple[int, int], num_classes: int) -> nn.Module:
    return _mlp([_pixels(row_shape), 128, num_classes])


def _pixels(row_shape) -> int:
    """Values per image: H * W * C."""
    return int(row_shape[0]) * int(row_shape[1]) * image_channels(row_shape)


class ClassConditionedRater(nn.Module):
    """score(x, y) = body(x)[y]; with log_prob, log softmax(body(x))[y]: the log-probability of
    the label under a classifier, so pushing a wrong label's score down pushes the right one up."""

    def __init__(self, body: nn.Module, log_prob: bool = False):
        super().__init__()
        self.body, self.log_prob = body, log_prob

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        if self.log_prob:
            out = torch.log_softmax(out, dim=1)
        return out.gather(1, y[:, None]).squeeze(1)


def _rater_cnn_body(row_shape: tuple[int, int], num_classes: int) -> nn.Sequential:
    trunk, flat = _conv_trunk((8, 16), min(row_shape[:2]), in_ch=image_channels(row_shape))
    return nn.Sequential(trunk, nn.Linear(flat, 24), nn.ReLU(), nn.Linear(24, num_classes))


@RATERS.register("cnn")
def rater_cnn(row_shape: tuple[int, int], num_classes: int) -> nn.Module:
    return ClassConditionedRater(_rater_cnn_body(row_shape, num_classes))


@RATERS.register("cnn_classifier")
def rater_cnn_classifier(row_shape: tuple[int, int], num_classes: int) -> nn.Module:
    """The cnn rater scored as the label's log-probability (ClassConditionedRater)."""
    return ClassConditionedRater(_rater_cnn_body(row_shape, num_classes), log_prob=True)


@RATERS.register("cnn_classifier_large")
def rater_cnn_classifier_large(row_shape: tuple[int, int], num_classes: int) -> nn.Module:
    """cnn_classifier with the inner CNN's body (~108k parameters for 28x28, 5x the cnn rater):
    warm-started (rater.warm_start_steps), it begins as the loss heuristic's classifier."""
    return ClassConditionedRater(inner_cnn(row_shape, num_classes), log_prob=True)


def _rater_gap_body(row_shape, num_classes: int) -> nn.Sequential:
    return nn.Sequential(_gap_trunk((8, 16, 32), row_shape), nn.Linear(32, num_classes))


@RATERS.register("cnn_gap")
def rater_cnn_gap(row_shape, num_classes: int) -> nn.Module:
    """A class-conditioned CNN with global pooling, for colour or large images (any size)."""
    return ClassConditionedRater(_rater_gap_body(row_shape, num_classes))


@RATERS.register("cnn_gap_classifier")
def rater_cnn_gap_classifier(row_shape, num_classes: int) -> nn.Module:
    """The cnn_gap rater scored as the label's log-probability (ClassConditionedRater)."""
    return ClassConditionedRater(_rater_gap_body(row_shape, num_classes), log_prob=True)


@RATERS.register("mlp")
def rater_mlp(row_shape: tuple[int, int], num_classes: int) -> nn.Module:
    return ClassConditionedRater(_mlp([_pixels(row_shape), 64, num_classes]))

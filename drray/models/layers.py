"""Two layers with hand-written autograd Functions, bit for bit torch's own, for the inner CNN's
CPU meta-gradient: `MaxPool2x2` (int16 winners, every derivative in its input's memory layout)
and `ImageConv2d` (the first conv, channels-last). BENCHMARKS.md gives what each saves.
`with_torch_layers` swaps them back for torch's, as a reference.
"""
from __future__ import annotations

from copy import deepcopy

import torch
from torch import nn


def _rows_then_columns_max(x: torch.Tensor) -> torch.Tensor:
    """2x2 max-pool (stride 2, an odd last row/column dropped) as two elementwise maxima of strided
    views: on CPU ~10x faster than max_pool2d, whose kernel also writes int64 indices."""
    x = x[..., : x.shape[-2] // 2 * 2, : x.shape[-1] // 2 * 2]
    rows = torch.maximum(x[..., 0::2, :], x[..., 1::2, :])
    return torch.maximum(rows[..., 0::2], rows[..., 1::2])


def _max_and_winners(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """max_pool2d's values and indices (flat in the [H, W] plane, the first maximum in raster
    order), the indices kept as int16 (int32 for planes over 32k pixels): 1/4 (1/2) of its int64.
    On CPU through a channels-last copy of x: that kernel is vectorised over the channels, 2-4x
    faster than the NCHW one at these sizes even with both copies (BENCHMARKS.md)."""
    if x.device.type == "cpu" and x.dim() == 4:
        values, index = nn.functional.max_pool2d_with_indices(x.contiguous(memory_format=torch.channels_last), 2)
    else:
        values, index = nn.functional.max_pool2d_with_indices(x, 2)
    dtype = torch.int16 if x.shape[-2] * x.shape[-1] <= torch.iinfo(torch.int16).max else torch.int32
    return values.contiguous(), index.to(dtype, memory_format=torch.contiguous_format)


def _layout(x: torch.Tensor) -> torch.memory_format:
    """channels_last for a (strictly) channels-last 4-d tensor, else contiguous_format."""
    if x.dim() == 4 and not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def _pixels(x: torch.Tensor) -> torch.Tensor:
    """[..., H, W] -> [..., H * W]: a view for NCHW and channels-last tensors alike (in the latter
    the pixels are C apart), so scatter and gather below work in either layout without a copy."""
    return x.flatten(-2)


class _MaxPool2x2(torch.autograd.Function):
    """The pool with a graph: the forward above, and a backward that sends each window's gradient
    to its winner (_ToWinners), itself differentiable (for create_graph) and forward-mode
    differentiable (mixflow's JVP); all three are linear maps given the winners. Each derivative
    has its tensor's layout: the input's gradient that of the input (the conv before the pool
    wrote it channels-last on CPU, and its backward would otherwise copy the gradient over, ~4 ms
    a call at batch 128), the output's that of the (contiguous) output."""

    @staticmethod
    def forward(x):
        return _max_and_winners(x)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(output[1])
        ctx.save_for_forward(output[1])
        ctx.shape, ctx.layout = inputs[0].shape, _layout(inputs[0])

    @staticmethod
    def backward(ctx, grad, _):
        return _ToWinners.apply(grad, ctx.saved_tensors[0], ctx.shape, ctx.layout)

    @staticmethod
    def jvp(ctx, tangent):
        return _FromWinners.apply(tangent, ctx.saved_tensors[0]), None


class _ToWinners(torch.autograd.Function):
    """[..., h, w] -> zeros of the pool input's shape [..., H, W] (and layout) with each value at
    its window's winner."""

    @staticmethod
    def forward(values, winners, shape, layout):
        out = torch.empty(shape, dtype=values.dtype, device=values.device, memory_format=layout).zero_()
        _pixels(out).scatter_(-1, _pixels(winners).long(), _pixels(values))
        return out

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])
        ctx.shape, ctx.layout = inputs[2], inputs[3]

    @staticmethod
    def backward(ctx, grad):
        return _FromWinners.apply(grad, ctx.saved_tensors[0]), None, None, None

    @staticmethod
    def jvp(ctx, tangent, _winners, _shape, _layout):
        return _ToWinners.apply(tangent, ctx.saved_tensors[0], ctx.shape, ctx.layout)


class _FromWinners(torch.autograd.Function):
    """[..., H, W] -> [..., h, w], contiguous: each window's value at its winner (the adjoint of
    _ToWinners)."""

    @staticmethod
    def forward(full, winners):
        return _pixels(full).gather(-1, _pixels(winners).long()).view(winners.shape)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.save_for_forward(inputs[1])
        ctx.shape, ctx.layout = inputs[0].shape, _layout(inputs[0])

    @staticmethod
    def backward(ctx, grad):
        return _ToWinners.apply(grad, ctx.saved_tensors[0], ctx.shape, ctx.layout), None

    @staticmethod
    def jvp(ctx, tangent, _winners):
        return _FromWinners.apply(tangent, ctx.saved_tensors[0])


class MaxPool2x2(nn.Module):
    """nn.MaxPool2d(2), faster on CPU. Without autograd (scoring, evaluation, mixflow's forward
    weights): two elementwise maxima of strided views, ~10x faster than max_pool2d. With autograd
    (training): max_pool2d's channels-last kernel, 2-4x faster on CPU, its indices kept as int16
    (1/4 of the memory); gradients of any order and forward-mode tangents go through them, so all
    equal max_pool2d's bit for bit, ties included. Both paths give the same values bit for bit (a
    max is exact), which mixflow needs: its forward runs the rater without a graph and its backward
    recomputes it with one; a layer that differs even in rounding breaks the methods' agreement
    (tests/test_metagrad.py caught a 5e-3 relative error from one). Derivatives of the no-grad
    path differ at ties (an elementwise max's forward-mode rule averages tied tangents): run
    forward-mode transforms with grad enabled."""

    def __init__(self):
        super().__init__()
        # The no-graph output is made contiguous like the graph path's, since the next conv picks
        # its algorithm (and rounding) by layout. drray.curation.scoring.for_scoring sets None (keep the
        # layout as computed): scoring has no graph path to agree with, and its channels-last
        # convs read the pool's channels-last output without a copy (~10% of a forward).
        self.output_layout: torch.memory_format | None = torch.contiguous_format

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return _MaxPool2x2.apply(x)[0]
        out = _rows_then_columns_max(x)
        return out if self.output_layout is None else out.contiguous(memory_format=self.output_layout)


class _ImageConv(torch.autograd.Function):
    """conv2d (stride 1, with bias) of an input that needs no gradient, with a double backward
    that does only what is needed. PyTorch's own double backward of a convolution also computes
    a gradient for the input (a transposed convolution, ~5 ms per inner step at batch 128) when
    nothing needs it (BENCHMARKS.md, reference configuration)."""

    @staticmethod
    def forward(x, weight, bias, padding):
        return nn.functional.conv2d(x, weight, bias, padding=padding)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, ctx.padding = inputs
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        return None, *_ImageConvParamGrads.apply(grad, x, weight.detach(), ctx.padding), None

    @staticmethod
    def jvp(ctx, x_tangent, weight_tangent, bias_tangent, _):
        x, weight = ctx.saved_tensors
        out = nn.functional.conv2d(x, weight_tangent, bias_tangent, padding=ctx.padding)
        return out if x_tangent is None else out + nn.functional.conv2d(x_tangent, weight, padding=ctx.padding)


class _ImageConvParamGrads(torch.autograd.Function):
    """(gradient at the conv's output, its input x) -> the weight and bias gradients, from torch's
    own kernel (so they equal nn.Conv2d's bit for bit). Linear in the gradient: its backward (the
    conv's double backward) is the conv of x with the cotangents, and its JVP is itself."""

    @staticmethod
    def forward(grad, x, weight, padding):
        _, weight_grad, bias_grad = torch.ops.aten.convolution_backward(
            grad, x, weight, [weight.shape[0]], [1, 1], list(padding), [1, 1], False, [0, 0], 1, [False, True, True])
        return weight_grad, bias_grad

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, x, weight, ctx.padding = inputs
        ctx.save_for_backward(x)
        ctx.save_for_forward(x, weight)

    @staticmethod
    def backward(ctx, weight_cotangent, bias_cotangent):
        (x,) = ctx.saved_tensors
        return nn.functional.conv2d(x, weight_cotangent, bias_cotangent, padding=ctx.padding), None, None, None

    @staticmethod
    def jvp(ctx, grad_tangent, _x, _weight, _padding):
        x, weight = ctx.saved_tensors
        return _ImageConvParamGrads.apply(grad_tangent, x, weight, ctx.padding)


def _channels_last(x: torch.Tensor) -> torch.Tensor:
    """x in channels-last layout on CPU (a view for one channel: PyTorch counts a 1-channel tensor
    as both layouts, and only its strides tell oneDNN to write its output channels-last)."""
    if x.device.type != "cpu" or x.dim() != 4:
        return x
    n, c, h, w = x.shape
    if c == 1:
        return x.contiguous().as_strided(x.shape, (h * w, 1, w, 1))
    return x.contiguous(memory_format=torch.channels_last)


class ImageConv2d(nn.Conv2d):
    """A model's first 3x3 conv (stride 1, with bias), on the images. On CPU its output is
    channels-last, which the pool after it reads without the copy it would otherwise make (~10%
    of a backprop step at the reference configuration; BENCHMARKS.md), on every path alike, so
    mixflow's forward without a graph and its recomputation with one agree bit for bit. Under
    autograd, when the images need no gradient, _ImageConv: gradients bit for bit nn.Conv2d's
    for the same input, and a double backward that skips the input's gradient. The same
    parameters and state_dict keys as nn.Conv2d; outputs agree with it to rounding (~1e-7)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0):
        super().__init__(in_channels, out_channels, kernel_size, padding=padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:  # one unbatched image, as nn.Conv2d takes it
            return self.forward(x.unsqueeze(0)).squeeze(0)
        x = _channels_last(x)
        if torch.is_grad_enabled() and not x.requires_grad:
            return _ImageConv.apply(x, self.weight, self.bias, self.padding)
        return super().forward(x)


def with_torch_layers(model: nn.Module) -> nn.Module:
    """A copy of a model built of torch's own layers (nn.Conv2d, then ReLU, then nn.MaxPool2d: the
    usual order and the public reference's): the same function, parameters and state_dict keys.
    The baseline for the benchmarks and tests of ImageConv2d, MaxPool2x2 and the pool-first order."""
    plain = deepcopy(model)
    for trunk in (m for m in plain.modules() if isinstance(m, nn.Sequential)):
        for i, module in enumerate(list(trunk)):
            if isinstance(module, MaxPool2x2):
                trunk[i], trunk[i + 1] = nn.ReLU(), nn.MaxPool2d(2)
            elif isinstance(module, ImageConv2d):
                trunk[i] = nn.Conv2d(module.in_channels, module.out_channels, module.kernel_size, padding=module.padding,
                                     dtype=module.weight.dtype, device=module.weight.device)
                trunk[i].load_state_dict(module.state_dict())
    return plain

"""The conv trunks' layers against torch's own: the 2x2 max-pool, the pool-then-ReLU order and the
first conv's hand-written backward."""
import copy

import pytest
import torch
from torch import nn

from drray.models import build_inner, build_rater
from drray.models.layers import ImageConv2d, MaxPool2x2, _channels_last, with_torch_layers


@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (2, 3, 7, 5), (4, 16, 26, 26), (4, 32, 11, 11)])
def test_fast_pool_equals_max_pool2d_without_autograd(shape):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator).relu()  # relu: many exact ties (zeros)
    x[0, 0, 0, 0] = float("nan")
    x[-1, -1, 1:3, 1:3] = 0.25  # a tied window of positive values
    with torch.no_grad():
        fast = MaxPool2x2()(x)
    expected = nn.MaxPool2d(2)(x)
    assert fast.shape == expected.shape
    assert torch.equal(fast.nan_to_num(-1.0), expected.nan_to_num(-1.0))
    assert fast[0, 0, 0, 0].isnan()


def _tied(shape, dtype, seed):
    """Random values with exact ties: zeros from a ReLU, a window of equal values, and windows
    whose maximum is shared by two corners in each pattern raster order has to break."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed), dtype=dtype).relu()
    x[0, 0, :2, :2] = 0.25
    for row, (top, bottom) in enumerate((((0.1, 0.7), (0.7, 0.2)), ((0.7, 0.1), (0.2, 0.7)), ((0.1, 0.2), (0.7, 0.7)))):
        x[-1, 0, 2 * row: 2 * row + 2, :2] = torch.tensor([top, bottom], dtype=dtype)
    return x


@pytest.mark.parametrize("shape", [(2, 3, 6, 6), (2, 3, 7, 5), (4, 16, 26, 26), (1, 2, 190, 200)])  # 38,000 pixels: int32 winners
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_pool_under_autograd_equals_max_pool2d_to_second_order_and_forward_mode(shape, dtype, layout):
    """Values, gradients, gradients of gradients (create_graph, as backprop's unroll) and JVPs of
    gradients (mixflow's forward-over-reverse) all bit for bit those of max_pool2d, for NCHW and
    channels-last inputs; the input's gradient comes in the input's layout."""
    x = _tied(shape, dtype, 1).contiguous(memory_format=layout)
    v = torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=dtype)

    def derivatives(pool):
        def loss(z):
            pooled = pool(z)
            return (pooled * torch.sin(3 * pooled)).sum()  # curved, so the second order is not zero

        leaf = x.clone().requires_grad_()
        (grad,) = torch.autograd.grad(loss(leaf), leaf, create_graph=True)
        (hvp,) = torch.autograd.grad((grad * v).sum(), leaf)
        _, jvp = torch.func.jvp(torch.func.grad(loss), (x,), (v,))
        return pool(x).detach(), grad.detach(), hvp, jvp

    ours, reference = derivatives(MaxPool2x2()), derivatives(nn.MaxPool2d(2))
    for name, a, b in zip(("values", "grad", "hvp", "jvp"), ours, reference):
        assert torch.equal(a, b), f"{name}: max |diff| {(a - b).abs().max()}"
    assert ours[1].is_contiguous(memory_format=layout) and ours[2].is_contiguous(memory_format=layout)
    assert ours[2].abs().sum() > 0 and ours[3].abs().sum() > 0


def _second_order(net, x, y, arch):
    """Output, gradient and a Hessian-vector product of a curved loss, in the model's dtype."""
    params = list(net.parameters())
    out = net(x) if arch == "inner" else net(x, y)
    grads = torch.autograd.grad((out ** 2).sum(), params, create_graph=True)
    return [out.detach(), *grads, *torch.autograd.grad(sum((g * g).sum() for g in grads), params)]


@pytest.mark.parametrize("arch", ["inner", "rater"])
def test_pool_then_relu_trunks_match_relu_then_pool_bit_for_bit(arch):
    """The trunks pool before ReLU: the same outputs, gradients and second-order terms as ReLU
    then pool, bit for bit."""
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(10, (32,))
    model = build_inner("cnn", (28, 28), 10) if arch == "inner" else build_rater("cnn", (28, 28), 10)
    relu_first = copy.deepcopy(model)
    for trunk in (m for m in relu_first.modules() if isinstance(m, nn.Sequential)):
        for i, module in enumerate(list(trunk)):
            if isinstance(module, MaxPool2x2):
                trunk[i], trunk[i + 1] = nn.ReLU(), MaxPool2x2()
    for a, b in zip(_second_order(model, x, y, arch), _second_order(relu_first, x, y, arch)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("arch", ["inner", "rater"])
def test_models_match_their_torch_layer_copies_to_second_order(arch):
    """Against the same architecture built of torch's own layers (with_torch_layers: nn.Conv2d,
    ReLU, nn.MaxPool2d), in float64: outputs, gradients and Hessian-vector products agree to
    rounding, and the state_dict keys are the same (raters saved by earlier versions load)."""
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28, dtype=torch.float64), torch.randint(10, (32,))
    model = (build_inner("cnn", (28, 28), 10) if arch == "inner" else build_rater("cnn", (28, 28), 10)).double()
    reference = with_torch_layers(model)
    kinds = [type(m) for m in reference.modules()]
    assert kinds.count(nn.MaxPool2d) == 2 and ImageConv2d not in kinds and MaxPool2x2 not in kinds
    assert list(reference.state_dict()) == list(model.state_dict())
    for a, b in zip(_second_order(model, x, y, arch), _second_order(reference, x, y, arch)):
        assert torch.allclose(a, b, rtol=1e-11, atol=1e-11 * float(b.abs().max()))


@pytest.mark.parametrize("channels, padding", [(1, 0), (1, 1), (3, 1)])
def test_image_conv_derivatives_match_conv2d(channels, padding):
    """ImageConv2d's gradient (create_graph; bit for bit, given the same channels-last input), its
    double backward and the JVP of its gradient (mixflow's forward-over-reverse) against
    nn.Conv2d's autograd, in float64."""
    torch.manual_seed(0)
    x = torch.randn(6, channels, 9, 8, dtype=torch.float64)
    conv = ImageConv2d(channels, 4, 3, padding=padding).double()
    plain = nn.Conv2d(channels, 4, 3, padding=padding).double()
    plain.load_state_dict(conv.state_dict())

    def derivatives(module, x):
        def loss(params):
            return torch.tanh(torch.func.functional_call(module, params, (x,))).pow(2).sum()

        params = {k: v.detach().clone().requires_grad_() for k, v in module.named_parameters()}
        grads = torch.autograd.grad(loss(params), list(params.values()), create_graph=True)
        hvp = torch.autograd.grad(sum((g * g.detach().sin()).sum() for g in grads), list(params.values()))
        point = {k: v.detach() for k, v in params.items()}
        direction = {k: torch.randn_like(v, generator=torch.Generator().manual_seed(3)) for k, v in point.items()}
        _, jvp = torch.func.jvp(torch.func.grad(loss), (point,), (direction,))
        return [*grads, *hvp, *jvp.values()]

    ours, reference = derivatives(conv, x), derivatives(plain, _channels_last(x))
    assert conv(x).is_contiguous(memory_format=torch.channels_last)
    assert all(torch.equal(a, b) for a, b in zip(ours[:2], reference[:2]))  # the gradient: torch's own kernel
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))
    ours, reference = derivatives(conv, x[0]), derivatives(plain, x[0])  # one unbatched image, as nn.Conv2d takes it
    for a, b in zip(ours, reference):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-12 * float(b.abs().max()))


@pytest.mark.parametrize("side", [8, 28])
def test_models_score_the_same_with_and_without_autograd(side):
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, side, side), torch.randint(10, (16,))
    for model, args in ((build_rater("cnn", (side, side), 10), (x, y)), (build_inner("cnn", (side, side), 10), (x,))):
        with torch.no_grad():
            fast = model(*args)
        assert torch.allclose(fast, model(*args).detach(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("row_shape", [(28, 28), (8, 8), (32, 32, 3), (20, 24, 3)])
def test_cnn_large_has_about_a_million_parameters_for_any_image(row_shape):
    """Gray 28x28 and 8x8, colour of any size: the same ~1M-parameter model (global pooling), ~9x
    the cnn inner model at 28x28, with one logit per class."""
    model = build_inner("cnn_large", row_shape, 10)
    count = sum(p.numel() for p in model.parameters())
    channels = row_shape[2] if len(row_shape) == 3 else 1
    # convs 3x3 (c -> 64 -> 128 -> 256 -> 256) with biases, and a 256 -> 10 head
    convs = (9 * channels * 64 + 64) + (9 * 64 * 128 + 128) + (9 * 128 * 256 + 256) + (9 * 256 * 256 + 256)
    assert count == convs + 256 * 10 + 10
    assert 700_000 < count < 1_500_000
    assert count > 8 * sum(p.numel() for p in build_inner("cnn", (28, 28), 10).parameters())
    x = torch.rand(3, channels, *row_shape[:2])
    assert model(x).shape == (3, 10)


def test_transformer_large_is_d_model_128_with_4_layers():
    from drray.models.text import TransformerLM

    model = build_inner("transformer_large", (32,), 1)
    assert isinstance(model, TransformerLM) and len(model.trunk.blocks) == 4
    assert model.trunk.tokens.embedding_dim == 128 and model.trunk.blocks[0].attention.heads == 4
    count = sum(p.numel() for p in model.parameters())
    base = sum(p.numel() for p in build_inner("transformer", (32,), 1).parameters())
    assert 800_000 < count < 900_000 and count > 6 * base
    tokens = torch.randint(0, 256, (2, 32))
    assert model(tokens).shape == (2, 32, 256)

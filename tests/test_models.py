"""The conv trunks' 2x2 max-pool against nn.MaxPool2d, and the trunks' pool-then-ReLU order."""
import copy

import pytest
import torch
from torch import nn

from drray.models import MaxPool2x2, build_inner, build_rater


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
def test_pool_under_autograd_equals_max_pool2d_to_second_order_and_forward_mode(shape, dtype):
    """Values, gradients, gradients of gradients (create_graph, as backprop's unroll) and JVPs of
    gradients (mixflow's forward-over-reverse) all bit for bit those of max_pool2d."""
    x = _tied(shape, dtype, 1)
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
    assert ours[2].abs().sum() > 0 and ours[3].abs().sum() > 0


def _relu_before_pool(model: nn.Module) -> nn.Module:
    """A copy of a model whose conv stages run ReLU then nn.MaxPool2d, the order of earlier versions."""
    reference = copy.deepcopy(model)
    for trunk in (m for m in reference.modules() if isinstance(m, nn.Sequential)):
        for i, module in enumerate(list(trunk)):
            if isinstance(module, MaxPool2x2):
                assert isinstance(trunk[i + 1], nn.ReLU)
                trunk[i], trunk[i + 1] = nn.ReLU(), nn.MaxPool2d(2)
    return reference


@pytest.mark.parametrize("arch", ["inner", "rater"])
def test_pool_then_relu_trunks_match_relu_then_pool_in_values_and_meta_gradients(arch):
    """The trunks pool before ReLU: the same outputs, gradients and second-order terms, bit for
    bit, and the same state_dict keys (saved raters still load)."""
    torch.manual_seed(0)
    x, y = torch.rand(32, 1, 28, 28), torch.randint(10, (32,))
    model = build_inner("cnn", (28, 28), 10) if arch == "inner" else build_rater("cnn", (28, 28), 10)
    reference = _relu_before_pool(model)
    assert list(reference.state_dict()) == list(model.state_dict())

    def second_order(net):
        params = list(net.parameters())
        out = net(x) if arch == "inner" else net(x, y)
        grads = torch.autograd.grad((out.double() ** 2).sum(), params, create_graph=True)
        return [out.detach(), *grads, *torch.autograd.grad(sum((g * g).sum() for g in grads), params)]

    for a, b in zip(second_order(model), second_order(reference)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("side", [8, 28])
def test_models_score_the_same_with_and_without_autograd(side):
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, side, side), torch.randint(10, (16,))
    for model, args in ((build_rater("cnn", (side, side), 10), (x, y)), (build_inner("cnn", (side, side), 10), (x,))):
        with torch.no_grad():
            fast = model(*args)
        assert torch.allclose(fast, model(*args).detach(), rtol=0, atol=1e-6)

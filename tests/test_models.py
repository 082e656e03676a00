"""The conv trunks' 2x2 max-pool: its fast no-autograd path against nn.MaxPool2d."""
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


def test_pool_records_max_pool2d_gradients_under_autograd():
    x = torch.randn(2, 3, 7, 7, generator=torch.Generator().manual_seed(1), requires_grad=True)
    upstream = torch.randn(2, 3, 3, 3, generator=torch.Generator().manual_seed(2))
    (ours,) = torch.autograd.grad(MaxPool2x2()(x), x, upstream)
    (reference,) = torch.autograd.grad(nn.MaxPool2d(2)(x), x, upstream)
    assert torch.equal(ours, reference)


@pytest.mark.parametrize("side", [8, 28])
def test_models_score_the_same_with_and_without_autograd(side):
    torch.manual_seed(0)
    x, y = torch.rand(16, 1, side, side), torch.randint(10, (16,))
    for model, args in ((build_rater("cnn", (side, side), 10), (x, y)), (build_inner("cnn", (side, side), 10), (x,))):
        with torch.no_grad():
            fast = model(*args)
        assert torch.allclose(fast, model(*args).detach(), rtol=0, atol=1e-6)

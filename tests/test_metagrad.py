"""The two meta-gradient methods agree with each other and with central finite differences."""
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from drray.meta.inner_optim import SGD, Adam
from drray.meta.metagrad import MIXFLOW_MODES, MetaProblem, meta_step
from drray.models import build_inner, build_rater
from drray.models.image import ClassConditionedRater

ROOT = Path(__file__).resolve().parents[1]


def tiny_problem(optimizer, dtype=torch.float64, seed=0):
    """Smooth (tanh) models so that finite differences are accurate."""
    torch.manual_seed(seed)
    inner = nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    rater = ClassConditionedRater(nn.Sequential(nn.Flatten(), nn.Linear(16, 5), nn.Tanh(), nn.Linear(5, 3))).to(dtype)
    return MetaProblem(inner, rater, optimizer, temperature=0.5), inner, rater


def batches(n, size, shape, classes, dtype, seed):
    """Images [size, C, H, W] for row shape (H, W) (C = 1) or (H, W, C)."""
    g = torch.Generator().manual_seed(seed)
    channels, sides = (shape[2], shape[:2]) if len(shape) == 3 else (1, shape)
    return [
        (torch.rand(size, channels, *sides, generator=g, dtype=dtype), torch.randint(0, classes, (size,), generator=g))
        for _ in range(n)
    ]


def params_of(module):
    return tuple(p.detach().clone() for p in module.parameters())


def outer_loss(problem, theta, state, eta, inner_batches, outer_batch):
    with torch.no_grad():
        for x, y in inner_batches:
            theta_req = tuple(t.detach().requires_grad_() for t in theta)
            with torch.enable_grad():
                loss = (problem.weights(eta, x, y) * problem.losses(theta_req, x, y)).sum()
                grads = torch.autograd.grad(loss, theta_req)
            theta, state = problem.optimizer.update(theta, grads, state)
        return problem.losses(theta, *outer_batch).mean().item()


OPTIMIZERS = {"sgd": SGD(lr=0.3, momentum=0.9), "adam": Adam(lr=0.05)}


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("method", ["backprop", "mixflow", "mixflow-chunk3", "mixflow-rr", "mixflow-rr-chunk3"])
def test_meta_gradient_matches_finite_differences_float64(method, T, opt_name):
    optimizer = OPTIMIZERS[opt_name]
    problem, inner, rater = tiny_problem(optimizer)
    method, _, chunk = method.partition("-chunk")  # mixflow's JVP over 3 + 3 + 2 of the 8 examples
    problem.mixflow_chunk = int(chunk) if chunk else None
    if method == "mixflow-rr":  # the double-backward backward instead of the JVP
        method, problem.mixflow_mode = "mixflow", "reverse_over_reverse"
    theta, eta = params_of(inner), params_of(rater)
    state = optimizer.init(theta)
    if opt_name == "adam":  # start mid-training: nonzero moments and a step count
        state = {"count": 5, "m": tuple(0.01 * torch.randn_like(t) for t in theta),
                 "v": tuple(1e-3 * torch.rand_like(t) for t in theta)}
    inner_b = batches(T, 8, (4, 4), 3, torch.float64, seed=1)
    outer_b = batches(1, 10, (4, 4), 3, torch.float64, seed=2)[0]

    result = meta_step(problem, method, theta, state, eta, inner_b, outer_b)

    gen = torch.Generator().manual_seed(3)
    eps = 1e-6
    for _ in range(4):  # random directions: <grad, v> against the central difference along v
        v = tuple(torch.randn(e.shape, generator=gen, dtype=e.dtype) for e in eta)
        plus = tuple(e + eps * d for e, d in zip(eta, v))
        minus = tuple(e - eps * d for e, d in zip(eta, v))
        fd = (outer_loss(problem, theta, state, plus, inner_b, outer_b)
              - outer_loss(problem, theta, state, minus, inner_b, outer_b)) / (2 * eps)
        analytic = sum((g * d).sum() for g, d in zip(result.grad, v)).item()
        assert analytic == pytest.approx(fd, rel=1e-6, abs=1e-10)
    assert result.outer_loss == pytest.approx(outer_loss(problem, theta, state, eta, inner_b, outer_b), rel=1e-12)


def relative_error(a, b):
    num = torch.sqrt(sum(((x - y) ** 2).sum() for x, y in zip(a, b)))
    den = torch.sqrt(sum((y**2).sum() for y in b))
    return (num / den).item()


@pytest.mark.parametrize("opt_name", ["sgd", "adam"])
@pytest.mark.parametrize("T", [1, 3])
@pytest.mark.parametrize("shape,arch", [((8, 8), "mlp"), ((28, 28), "cnn"), ((8, 8), "cnn"), ((16, 16, 3), "cnn_gap"),
                                        ((13, 13), "cnn_gap"), ((8, 8, 3), "mlp")])
def test_methods_agree_float32_on_real_models(shape, arch, T, opt_name):
    torch.manual_seed(0)
    optimizer = {"sgd": SGD(lr=0.1, momentum=0.9), "adam": Adam(lr=1e-3)}[opt_name]
    inner, rater = build_inner(arch, shape, 10), build_rater(arch, shape, 10)
    problem = MetaProblem(inner, rater, optimizer, temperature=0.3)
    theta, eta = params_of(inner), params_of(rater)
    state = optimizer.init(theta)
    inner_b = batches(T, 32, shape, 10, torch.float32, seed=1)
    outer_b = batches(1, 32, shape, 10, torch.float32, seed=2)[0]
    ref = meta_step(problem, "backprop", theta, state, eta, inner_b, outer_b)
    for mode in MIXFLOW_MODES:
        problem.mixflow_mode = mode
        mix = meta_step(problem, "mixflow", theta, state, eta, inner_b, outer_b)
        assert relative_error(mix.grad, ref.grad) <= 1e-5, mode
        assert relative_error(mix.theta, ref.theta) <= 1e-6, mode
        assert mix.outer_loss == pytest.approx(ref.outer_loss, rel=1e-6), mode
    assert sum(g.abs().sum() for g in ref.grad) > 0  # a zero gradient would agree trivially


def test_chunked_mixflow_agrees_with_backprop_on_the_mnist_cnn():
    torch.manual_seed(0)
    optimizer = Adam(lr=1e-3)
    inner, rater = build_inner("cnn", (28, 28), 10), build_rater("cnn", (28, 28), 10)
    theta, eta = params_of(inner), params_of(rater)
    args = (theta, optimizer.init(theta), eta, batches(3, 32, (28, 28), 10, torch.float32, seed=1),
            batches(1, 32, (28, 28), 10, torch.float32, seed=2)[0])
    ref = meta_step(MetaProblem(inner, rater, optimizer, temperature=0.3), "backprop", *args)
    chunked = meta_step(MetaProblem(inner, rater, optimizer, temperature=0.3, mixflow_chunk=5), "mixflow", *args)
    assert relative_error(chunked.grad, ref.grad) <= 1e-5 and sum(g.abs().sum() for g in ref.grad) > 0


@pytest.mark.parametrize("arch", ["cnn_classifier", "cnn_classifier_large"])
def test_log_prob_rater_scores_the_labels_log_probability_and_both_methods_agree(arch):
    torch.manual_seed(0)
    rater = build_rater(arch, (28, 28), 10)
    x, y = torch.rand(5, 1, 28, 28, dtype=torch.float32), torch.tensor([0, 3, 9, 3, 1])
    logits = rater.body(x)
    by_hand = logits.gather(1, y[:, None]).squeeze(1) - torch.logsumexp(logits, 1)
    assert torch.allclose(rater(x, y), by_hand, atol=1e-6) and (rater(x, y) < 0).all()
    optimizer = Adam(lr=1e-3)
    problem = MetaProblem(build_inner("cnn", (28, 28), 10), rater, optimizer, temperature=0.3)
    theta, eta = params_of(problem.inner), params_of(rater)
    args = (theta, optimizer.init(theta), eta, batches(3, 32, (28, 28), 10, torch.float32, seed=1),
            batches(1, 32, (28, 28), 10, torch.float32, seed=2)[0])
    ref, mix = (meta_step(problem, method, *args) for method in ("backprop", "mixflow"))
    assert relative_error(mix.grad, ref.grad) <= 1e-5 and sum(g.abs().sum() for g in ref.grad) > 0


def test_inner_model_moves_and_meta_step_is_truncated():
    """theta_T differs from theta_0 and carries no graph: the next step starts from it."""
    problem, inner, rater = tiny_problem(SGD(lr=0.3), dtype=torch.float32)
    theta, eta = params_of(inner), params_of(rater)
    result = meta_step(problem, "mixflow", theta, problem.optimizer.init(theta), eta,
                       batches(2, 8, (4, 4), 3, torch.float32, 1), batches(1, 8, (4, 4), 3, torch.float32, 2)[0])
    assert all(not t.requires_grad for t in result.theta)
    assert any(not torch.equal(a, b) for a, b in zip(result.theta, theta))


def test_adam_step_backward_matches_finite_differences_float64():
    """The Adam op's hand-written backward, against central differences, through all three outputs
    (p', m', v') and with the bias corrections of step 3."""
    from drray.meta.inner_optim import _AdamStep

    torch.manual_seed(0)
    p, g, m = (torch.randn(6, dtype=torch.float64, requires_grad=True) for _ in range(3))
    v = torch.rand(6, dtype=torch.float64).add(0.1).requires_grad_()
    constants = (0.05, 0.9, 0.999, 1e-8, 1e-16, 1 / (1 - 0.9**3), 1 / (1 - 0.999**3))
    assert torch.autograd.gradcheck(lambda *args: _AdamStep.apply(*args, *constants), (p, g, m, v))


def test_adam_update_matches_torch_optim_adam():
    """The functional Adam's forward, 4 steps against torch.optim.Adam (an independent implementation)."""
    torch.manual_seed(0)
    ours = Adam(lr=0.01)
    params = (torch.randn(5, 3, dtype=torch.float64), torch.randn(3, dtype=torch.float64))
    grads = [tuple(torch.randn_like(p) for p in params) for _ in range(4)]
    reference = [p.clone().requires_grad_() for p in params]
    optimizer = torch.optim.Adam(reference, lr=0.01, eps=ours.eps)
    state = ours.init(params)
    for step_grads in grads:
        params, state = ours.update(params, step_grads, state)
        for p, g in zip(reference, step_grads):
            p.grad = g.clone()
        optimizer.step()
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(params, reference))


@pytest.mark.parametrize("mode", list(MIXFLOW_MODES))
def test_mixflow_breaks_pool_ties_like_backprop(mode):
    """Images whose rows repeat, and a first-layer kernel whose bottom row is zero: different
    patches give equal conv outputs, so pool windows tie between different tangents. Every path
    must send a tied window's derivative to its first winner, as backprop's max_pool2d does; a
    JVP through the pool's no-graph path (an elementwise max averages tied tangents) was 1.4e-4
    off at T=1 (the step where theta_0 is a constant)."""
    torch.manual_seed(0)
    inner, rater = build_inner("cnn", (12, 12), 3).double(), build_rater("mlp", (12, 12), 3).double()
    theta = [p.detach().clone() for p in inner.parameters()]
    theta[0][:, :, 2, :] = 0
    theta, eta = tuple(theta), tuple(p.detach() for p in rater.parameters())
    generator = torch.Generator().manual_seed(1)
    batch = lambda: (torch.rand(8, 1, 12, 12, generator=generator, dtype=torch.float64),  # noqa: E731
                     torch.randint(0, 3, (8,), generator=generator))
    inner_batch, outer_batch = batch(), batch()
    for row in (1, 5, 9):
        inner_batch[0][:, :, row:row + 3] = inner_batch[0][:, :, row:row + 1]
    grads = {}
    for method in ("backprop", "mixflow"):
        problem = MetaProblem(inner, rater, SGD(lr=0.3), 0.5, mixflow_mode=mode)
        result = meta_step(problem, method, theta, problem.optimizer.init(theta), eta, [inner_batch], outer_batch)
        grads[method] = torch.cat([g.flatten() for g in result.grad])
    assert float((grads["mixflow"] - grads["backprop"]).norm() / grads["backprop"].norm()) < 1e-12


def test_reverse_over_reverse_mixflow_runs_without_forward_mode_ad():
    """Its point on CPU: no dual tensors, so torch never imports torch._dynamo and sympy (the first
    mul of a dual tensor does in PyTorch 2.13, ~70 MB per process; so does a first explicit
    grad_outputs, which the rater's VJP therefore avoids). Run in a fresh interpreter."""
    script = (
        "import sys, torch\n"
        "from drray.meta.inner_optim import Adam\n"
        "from drray.meta.metagrad import MetaProblem, meta_step\n"
        "from drray.models import build_inner, build_rater\n"
        "inner, rater = build_inner('cnn', (8, 8), 10), build_rater('cnn', (8, 8), 10)\n"
        "problem = MetaProblem(inner, rater, Adam(lr=1e-3), 0.3, mixflow_mode=sys.argv[1])\n"
        "theta = tuple(p.detach() for p in inner.parameters())\n"
        "eta = tuple(p.detach() for p in rater.parameters())\n"
        "batch = lambda: (torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,)))\n"
        "result = meta_step(problem, 'mixflow', theta, Adam(lr=1e-3).init(theta), eta, [batch(), batch()], batch())\n"
        "assert sum(g.abs().sum() for g in result.grad) > 0\n"
        "print('torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n")
    imported = {mode: subprocess.run([sys.executable, "-c", script, mode], capture_output=True, text=True,
                                     check=True, cwd=ROOT).stdout.split()[-2:] for mode in MIXFLOW_MODES}
    assert imported["reverse_over_reverse"] == ["False", "False"]
    assert imported["forward_over_reverse"] == ["True", "True"]  # what the mode avoids (a torch upgrade may change it)


def test_unknown_mixflow_mode_is_refused():
    with pytest.raises(ValueError, match="mixflow_mode='sideways'"):
        MetaProblem(nn.Linear(2, 2), nn.Linear(2, 2), SGD(lr=0.1), 0.3, mixflow_mode="sideways")

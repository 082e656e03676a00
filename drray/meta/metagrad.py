"""The meta-gradient: d/d(eta) of the held-out loss after T rater-weighted inner steps.

Two methods, one answer (docs/design.md):
- `backprop`: unroll with create_graph=True and backpropagate (reverse-over-reverse);
  autograd keeps every step's activations, so memory grows with T.
- `mixflow`: the weighted inner gradient g(theta, eta) is one custom autograd op. Its forward
  runs without a graph; its backward, for a cotangent lam, computes H_w lam and
  d_i = <lam, grad l_i> with ONE forward-over-reverse JVP, then sum_i d_i grad_eta w_i with one
  VJP through the rater. Autograd stores only theta_t, the optimizer state and the batch per step.
  `mixflow_mode="reverse_over_reverse"` computes the same two quantities with a double backward
  instead of the JVP: on CPU in PyTorch 2.13 its transient is smaller and it avoids forward-mode
  AD, whose first use imports torch._dynamo and sympy (~70 MB per process; BENCHMARKS.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call

from drray.data.modality import ImageModality
from drray.meta.inner_optim import Params, State, detach_state

Batch = tuple[torch.Tensor, torch.Tensor]  # (x: float [B, C, H, W] images or int64 [B, L] tokens, y int64 [B])


class MetaProblem:
    """Binds an inner model, a rater, the inner optimizer and the softmax temperature to pure
    functions of parameter tuples. The modules serve only as templates for functional_call."""

    def __init__(self, inner: nn.Module, rater: nn.Module, optimizer, temperature: float, modality=ImageModality,
                 mixflow_chunk: int | None = None, mixflow_mode: str = "forward_over_reverse"):
        """mixflow_chunk: mixflow's backward runs over this many examples at a time (None: the whole
        batch); smaller chunks lower its transient memory, at some speed. mixflow_mode: how that
        backward gets H_w lam and d_i (MIXFLOW_MODES: the paper's JVP or a double backward)."""
        if mixflow_chunk is not None and mixflow_chunk < 1:
            raise ValueError(f"mixflow_chunk={mixflow_chunk}: need at least 1 example per chunk (or None)")
        if mixflow_mode not in MIXFLOW_MODES:
            raise ValueError(f"mixflow_mode={mixflow_mode!r}: expected one of {sorted(MIXFLOW_MODES)}")
        self.inner, self.rater = inner, rater
        self.mixflow_chunk = mixflow_chunk
        self.mixflow_mode = mixflow_mode
        self.inner_names = [n for n, _ in inner.named_parameters()]
        self.rater_names = [n for n, _ in rater.named_parameters()]
        self.optimizer = optimizer
        self.temperature = temperature
        self.modality = modality  # its losses(outputs, x, y) is the per-example inner loss

    def losses(self, theta: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-example inner losses l_i(theta), shape [B] (images: cross-entropy at the label;
        text: mean next-byte cross-entropy of the sequence)."""
        outputs = functional_call(self.inner, dict(zip(self.inner_names, theta)), (x,))
        return self.modality.losses(outputs, x, y)

    def scores(self, eta: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return functional_call(self.rater, dict(zip(self.rater_names, eta)), (x, y))

    def weights(self, eta: Params, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """w = softmax over the batch of score / temperature; sums to 1."""
        return torch.softmax(self.scores(eta, x, y) / self.temperature, dim=0)


class _WeightedGrad(torch.autograd.Function):
    """g(theta, eta) = sum_i w_i(eta) grad_theta l_i(theta), differentiable in both arguments."""

    @staticmethod
    def forward(ctx, problem: MetaProblem, x, y, n_theta: int, *params):
        theta, eta = params[:n_theta], params[n_theta:]
        w = problem.weights(eta, x, y)
        with torch.enable_grad():
            leaves = tuple(t.detach().requires_grad_() for t in theta)
            losses = problem.losses(leaves, x, y)
            grads = torch.autograd.grad((w * losses).sum(), leaves)
        ctx.problem, ctx.n_theta = problem, n_theta
        ctx.save_for_backward(x, y, *params)
        mean_loss = losses.detach().mean()
        ctx.mark_non_differentiable(mean_loss)
        return (*grads, mean_loss)

    @staticmethod
    def backward(ctx, *cotangents):
        problem, n_theta = ctx.problem, ctx.n_theta
        lam = cotangents[:-1]  # the last output, the mean loss, is a statistic
        x, y, *params = ctx.saved_tensors
        theta, eta = tuple(params[:n_theta]), tuple(params[n_theta:])
        with torch.enable_grad():  # one rater forward serves both the JVP (w) and the VJP below
            eta_leaves = tuple(e.detach().requires_grad_() for e in eta)
            w_graph = problem.weights(eta_leaves, x, y)
        need_theta = any(ctx.needs_input_grad[4 : 4 + n_theta])
        # H_w lam = sum_i w_i H_i lam and d_i are a sum and a list over examples: chunks add up.
        chunk, w = problem.mixflow_chunk or len(x), w_graph.detach()
        hvp, dlosses = None, []
        for i in range(0, len(x), chunk):
            part_hvp, part_dlosses = MIXFLOW_MODES[problem.mixflow_mode](
                problem, theta, lam, x[i:i + chunk], y[i:i + chunk], w[i:i + chunk], need_theta)
            # not in place: a part may be lam itself (autograd may return a cotangent as is)
            hvp = part_hvp if hvp is None else tuple(a + b for a, b in zip(hvp, part_hvp))
            dlosses.append(part_dlosses)
        hvp = hvp if need_theta else (None,) * n_theta
        dlosses = torch.cat(dlosses)
        # The VJP sum_i d_i grad_eta w_i as the gradient of a scalar: the same seeds (d_i) as
        # grad_outputs=dlosses, without the sympy import PyTorch 2.13 makes on a first explicit
        # grad_outputs (~30 MB per process; BENCHMARKS.md).
        with torch.enable_grad():
            seeded = (w_graph * dlosses).sum()
        eta_grads = torch.autograd.grad(seeded, eta_leaves, allow_unused=True)
        return (None, None, None, None, *hvp, *eta_grads)


def _jvp_part(problem: MetaProblem, theta: Params, lam, x, y, w, need_theta: bool):
    """(H_w lam restricted to these examples or None, d_i = <lam, grad l_i> for each), one JVP."""
    if not need_theta:  # theta_0 is a constant: only the directional derivatives of the losses are needed
        # With grad enabled (a Function's backward runs without): layers with a no-graph fast path
        # (MaxPool2x2) take their differentiable one, whose tangents at ties are backprop's.
        with torch.enable_grad():
            _, dlosses = torch.func.jvp(lambda th: problem.losses(th, x, y), (theta,), (tuple(lam),))
        return None, dlosses

    def grad_and_losses(th):
        def weighted(th):
            losses = problem.losses(th, x, y)
            return (w * losses).sum(), losses
        return torch.func.grad(weighted, has_aux=True)(th)

    _, (hvp, dlosses) = torch.func.jvp(grad_and_losses, (theta,), (tuple(lam),))
    return hvp, dlosses


def _double_backward_part(problem: MetaProblem, theta: Params, lam, x, y, w, need_theta: bool):
    """The same pair by reverse-over-reverse: with w a leaf, s = <lam, grad_theta sum_i w_i l_i>
    has ds/dtheta = H_w lam and ds/dw_i = <lam, grad l_i> = d_i; one backward through the gradient."""
    with torch.enable_grad():
        leaves = tuple(t.detach().requires_grad_() for t in theta)
        w_leaf = w.detach().requires_grad_()
        grads = torch.autograd.grad((w_leaf * problem.losses(leaves, x, y)).sum(), leaves, create_graph=True)
        s = sum((g * l).sum() for g, l in zip(grads, lam))
        wrt = (*leaves, w_leaf) if need_theta else (w_leaf,)
        out = torch.autograd.grad(s, wrt)
    return (out[:-1] if need_theta else None), out[-1]


MIXFLOW_MODES = {"forward_over_reverse": _jvp_part, "reverse_over_reverse": _double_backward_part}


# Each returns (g, mean unweighted loss of the batch), the loss as a detached statistic.

def weighted_grad_mixflow(problem: MetaProblem, theta: Params, eta: Params, batch: Batch):
    x, y = batch
    *grads, mean_loss = _WeightedGrad.apply(problem, x, y, len(theta), *theta, *eta)
    return tuple(grads), mean_loss


def weighted_grad_backprop(problem: MetaProblem, theta: Params, eta: Params, batch: Batch):
    x, y = batch
    losses = problem.losses(theta, x, y)
    grads = torch.autograd.grad((problem.weights(eta, x, y) * losses).sum(), theta, create_graph=True)
    return grads, losses.detach().mean()


WEIGHTED_GRAD = {"backprop": weighted_grad_backprop, "mixflow": weighted_grad_mixflow}


@dataclass
class MetaStepResult:
    grad: Params          # d outer_loss / d eta
    theta: Params         # theta_T, detached: the inner model continues from here
    state: State          # optimizer state after T steps, detached
    outer_loss: float     # mean held-out loss at theta_T
    inner_loss: float     # mean (unweighted) training loss over the T steps


def meta_step(
    problem: MetaProblem,
    method: str,
    theta: Params,
    state: State,
    eta: Params,
    inner_batches: list[Batch],
    outer_batch: Batch,
) -> MetaStepResult:
    """Run T = len(inner_batches) weighted inner steps from (theta, state) and return the
    meta-gradient through all of them (truncated BPTT: theta is the model's current weights)."""
    weighted_grad = WEIGHTED_GRAD[method]
    eta = tuple(e.detach().requires_grad_() for e in eta)
    # backprop needs theta_0 in the graph to differentiate l_i(theta); mixflow does not.
    theta = tuple(t.detach().requires_grad_(method == "backprop") for t in theta)
    inner_losses = []
    for x, y in inner_batches:
        grads, mean_loss = weighted_grad(problem, theta, eta, (x, y))
        inner_losses.append(mean_loss)
        theta, state = problem.optimizer.update(theta, grads, state)
    outer = problem.losses(theta, *outer_batch).mean()
    grad = torch.autograd.grad(outer, eta, allow_unused=True)
    grad = tuple(torch.zeros_like(e) if g is None else g for e, g in zip(eta, grad))
    return MetaStepResult(
        grad=grad,
        theta=tuple(t.detach() for t in theta),
        state=detach_state(state),
        outer_loss=outer.item(),
        inner_loss=torch.stack(inner_losses).mean().item(),
    )

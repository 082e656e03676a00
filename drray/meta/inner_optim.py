"""Differentiable inner optimizers: pure functions (params, grads, state) -> (params, state).

Both meta-gradient methods differentiate through the update. SGD is built from ordinary torch
ops; Adam is one custom autograd op per tensor whose backward is written out, so each inner step
keeps only g, m' and v' for the backward pass (3 tensors the size of the parameters, where
autograd on the elementwise formula keeps ~7). State is a dict of tuples of tensors plus an int
step count; nothing is updated in place.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

Params = tuple[torch.Tensor, ...]
State = dict  # {"count": int, name: tuple[Tensor, ...]}


@dataclass(frozen=True)
class SGD:
    lr: float
    momentum: float = 0.9

    def init(self, params: Params) -> State:
        return {"count": 0, "momentum": tuple(torch.zeros_like(p) for p in params)}

    def update(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        buf = tuple(self.momentum * b + g for b, g in zip(state["momentum"], grads))
        new = tuple(p - self.lr * b for p, b in zip(params, buf))
        return new, {"count": state["count"] + 1, "momentum": buf}


class _AdamStep(torch.autograd.Function):
    """(p, g, m, v) -> (p', m', v'): m' = b1 m + (1-b1) g, v' = b2 v + (1-b2) g^2,
    p' = p - lr a / d with a = m' ms, d = sqrt(v' vs + eps_root) + eps (ms, vs: bias corrections)."""

    @staticmethod
    def forward(ctx, p, g, m, v, lr, b1, b2, eps, eps_root, m_scale, v_scale):
        m_new = b1 * m + (1 - b1) * g
        v_new = b2 * v + (1 - b2) * g * g
        p_new = p - lr * (m_new * m_scale) / (torch.sqrt(v_new * v_scale + eps_root) + eps)
        ctx.save_for_backward(g, m_new, v_new)
        ctx.constants = (lr, b1, b2, eps, eps_root, m_scale, v_scale)
        return p_new, m_new, v_new

    @staticmethod
    def backward(ctx, dp, dm, dv):
        g, m_new, v_new = ctx.saved_tensors
        lr, b1, b2, eps, eps_root, m_scale, v_scale = ctx.constants
        root = torch.sqrt(v_new * v_scale + eps_root)
        denom = root + eps
        # Autograd passes zeros, never None, for an output that was not used.
        dm_total = dm - lr * m_scale * dp / denom  # direct, and through p' -> m'
        dv_total = dv + lr * (m_new * m_scale) * v_scale * dp / (2 * denom * denom * root)  # and through p' -> v'
        dg = (1 - b1) * dm_total + (2 * (1 - b2)) * g * dv_total
        return dp, dg, b1 * dm_total, b2 * dv_total, None, None, None, None, None, None, None


@dataclass(frozen=True)
class Adam:
    lr: float
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    # sqrt(v + eps_root): d sqrt(v)/dv is infinite at v = 0 (a parameter whose gradient is
    # exactly zero, e.g. a dead ReLU), which would turn the meta-gradient into NaN.
    eps_root: float = 1e-16

    def init(self, params: Params) -> State:
        zeros = lambda: tuple(torch.zeros_like(p) for p in params)  # noqa: E731
        return {"count": 0, "m": zeros(), "v": zeros()}

    def update(self, params: Params, grads: Params, state: State) -> tuple[Params, State]:
        count = state["count"] + 1
        constants = (self.lr, self.beta1, self.beta2, self.eps, self.eps_root,
                     1.0 / (1 - self.beta1**count), 1.0 / (1 - self.beta2**count))
        steps = [_AdamStep.apply(p, g, m, v, *constants) for p, g, m, v in zip(params, grads, state["m"], state["v"])]
        new, m, v = (tuple(parts) for parts in zip(*steps))
        return new, {"count": count, "m": m, "v": v}


def build_inner_optimizer(name: str, lr: float, momentum: float = 0.9):
    if name == "sgd":
        return SGD(lr=lr, momentum=momentum)
    if name == "adam":
        return Adam(lr=lr)
    raise ValueError(f"unknown inner optimizer {name!r}; allowed: sgd, adam")


def detach_state(state: State) -> State:
    return {k: v if isinstance(v, int) else tuple(t.detach() for t in v) for k, v in state.items()}

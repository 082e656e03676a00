"""Differentiable inner optimizers: pure functions (params, grads, state) -> (params, state).

The update is elementwise and built from ordinary torch ops, so autograd differentiates it
(both meta-gradient methods rely on that). State is a dict of tuples of tensors plus an int
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
        m = tuple(self.beta1 * m + (1 - self.beta1) * g for m, g in zip(state["m"], grads))
        v = tuple(self.beta2 * v + (1 - self.beta2) * g * g for v, g in zip(state["v"], grads))
        m_scale = 1.0 / (1 - self.beta1**count)
        v_scale = 1.0 / (1 - self.beta2**count)
        new = tuple(
            p - self.lr * (mi * m_scale) / (torch.sqrt(vi * v_scale + self.eps_root) + self.eps)
            for p, mi, vi in zip(params, m, v)
        )
        return new, {"count": count, "m": m, "v": v}


def build_inner_optimizer(name: str, lr: float, momentum: float = 0.9):
    if name == "sgd":
        return SGD(lr=lr, momentum=momentum)
    if name == "adam":
        return Adam(lr=lr)
    raise ValueError(f"unknown inner optimizer {name!r}; allowed: sgd, adam")


def detach_state(state: State) -> State:
    return {k: v if isinstance(v, int) else tuple(t.detach() for t in v) for k, v in state.items()}

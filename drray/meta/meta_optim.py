"""The meta-optimizer H: Adam on the rater parameters, applied to each inner model's
meta-gradient from the same state; the new parameters and moments are the means of the N
proposals (docs/design.md, "The meta-optimizer"). As the DataRater paper sets it, optionally with
decoupled weight decay (AdamW's) and a linear learning-rate warm-up."""
from __future__ import annotations

import math

import torch

from drray.meta.inner_optim import Params


def global_norm(grad: Params) -> float:
    return math.sqrt(sum(float((g.double() ** 2).sum()) for g in grad))


def clip_by_global_norm(grad: Params, max_norm: float | None) -> tuple[Params, float]:
    """Scale grad so its global norm is at most max_norm; returns (grad, norm before clipping)."""
    norm = global_norm(grad)
    if max_norm is None or norm <= max_norm:
        return grad, norm
    scale = max_norm / (norm + 1e-12)
    return tuple(g * scale for g in grad), norm


class AveragedAdam:
    def __init__(self, params: Params, lr: float, clip_norm: float | None = None,
                 beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, warmup_steps: int = 0):
        self.params = tuple(p.detach().clone() for p in params)
        self.lr, self.clip_norm, self.beta1, self.beta2, self.eps = lr, clip_norm, beta1, beta2, eps
        self.weight_decay, self.warmup_steps = weight_decay, warmup_steps
        self.m = tuple(torch.zeros_like(p) for p in self.params)
        self.v = tuple(torch.zeros_like(p) for p in self.params)
        self.count = 0

    def apply(self, grads: list[Params]) -> list[float]:
        """One meta step from N meta-gradients; returns their global norms before clipping."""
        clipped, norms = zip(*(clip_by_global_norm(g, self.clip_norm) for g in grads))
        count = self.count + 1
        m_scale, v_scale = 1 / (1 - self.beta1**count), 1 / (1 - self.beta2**count)
        lr = self.lr_at(count)
        new_params, new_m, new_v = [], [], []
        for j, (p, m, v) in enumerate(zip(self.params, self.m, self.v)):
            g = torch.stack([grad[j] for grad in clipped])  # [N, *shape]
            m_i = self.beta1 * m + (1 - self.beta1) * g
            v_i = self.beta2 * v + (1 - self.beta2) * g * g
            decayed = p * (1 - lr * self.weight_decay)  # decoupled, as AdamW: not through the moments
            proposals = decayed - lr * (m_i * m_scale) / (torch.sqrt(v_i * v_scale) + self.eps)
            new_params.append(proposals.mean(0))
            new_m.append(m_i.mean(0))
            new_v.append(v_i.mean(0))
        self.params, self.m, self.v, self.count = tuple(new_params), tuple(new_m), tuple(new_v), count
        return list(norms)

    def lr_at(self, count: int) -> float:
        """The learning rate of step `count` (from 1): linear warm-up over warmup_steps, then lr."""
        return self.lr * min(1.0, count / self.warmup_steps) if self.warmup_steps else self.lr

    def state_dict(self) -> dict:
        return {"params": list(self.params), "m": list(self.m), "v": list(self.v), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        self.params, self.m, self.v = tuple(state["params"]), tuple(state["m"]), tuple(state["v"])
        self.count = int(state["count"])

"""Warm start: the rater begins as a classifier trained on the held-out split.

A class-conditioned rater scores (x, y) by its body's output at the label. Learned from the
meta-gradient alone, that body becomes a classifier slowly (MNIST with 40% flips: ~3,000 outer
steps to AUROC 0.976). With `rater.warm_start_steps: N` the body is first trained for N steps
with cross-entropy on the held-out split, the same data the outer loss uses (clean unless
data.heldout=same), so the rater starts out ranking wrong labels low and meta-training refines what it keeps. Off by default
(0), as in the paper.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drray.data.modality import modality_of_array
from drray.errors import ConfigError
from drray.models.image import ClassConditionedRater


def check_warm_start(rater: nn.Module, arch: str, steps: int) -> None:
    if steps and not isinstance(rater, ClassConditionedRater):
        raise ConfigError(f"rater.warm_start_steps={steps}: rater {arch!r} does not classify its input; warm start "
                          "needs a class-conditioned rater (cnn, cnn_classifier, cnn_classifier_large, mlp); "
                          "set rater.warm_start_steps=0")


def warm_start(rater: nn.Module, rows: np.ndarray, labels: np.ndarray, steps: int, lr: float, batch_size: int,
               seed: int) -> float:
    """Trains rater.body in place for `steps` Adam steps of cross-entropy on (rows, labels);
    returns the mean loss of the last 10% of steps. Seeded: the same rater in every run of one
    process; on Ray (another thread count) it agrees to float rounding."""
    modality = modality_of_array(rows)
    stored = torch.from_numpy(np.array(rows))  # a copy: object-store arrays are read-only
    targets = torch.from_numpy(np.array(labels, dtype=np.int64))
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(rater.body.parameters(), lr=lr)
    tail = []
    for step in range(steps):
        index = torch.randint(len(targets), (batch_size,), generator=generator)
        loss = F.cross_entropy(rater.body(modality.inputs(stored[index])), targets[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= steps - max(1, steps // 10):
            tail.append(loss.item())
    return float(np.mean(tail)) if tail else float("nan")

"""Fresh inner models, trained from scratch and measured. Budget is what every fresh model gets
(arch, optimizer, batch size, steps); train_fresh trains one, each batch drawn and kept by the
paper's batch rule when it is given scores (draw_and_keep: draw N = B / (1 - discard) examples,
keep the B highest-scored); the rest measure a model per example (loss, accuracy, class
probabilities) or score examples with a rater. Rows are images (a classifier) or token sequences
(a language model): drray.data.modality. With Budget.stratify (and more than one class) every
batch keeps each class's share of what it draws, so no score can starve a class; ClassTally
counts, per class, the rows drawn and kept.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from drray import seeds
from drray.config import Config
from drray.curation.batch_rule import select_top
from drray.curation.filtering import batch_draw_size
from drray.data.examples import ExampleSet
from drray.data.modality import modality_of_array
from drray.models import build_inner
from drray.seeds import derive_seed

CHUNK = 2048


@dataclass(frozen=True)
class Budget:
    """What every fresh model gets, whatever the method."""
    arch: str
    optimizer: str
    lr: float
    momentum: float
    batch_size: int
    steps: int
    stratify: bool = False  # selections keep each class's share of the draw (when there are classes)

    @staticmethod
    def from_config(cfg: Config) -> Budget:
        return Budget(cfg.evaluate.arch or cfg.inner.arch, cfg.inner.optimizer, cfg.inner.lr, cfg.inner.momentum,
                      cfg.inner.batch_size, cfg.evaluate.steps, cfg.evaluate.stratify == "label")

    def stratifies(self, num_classes: int) -> bool:
        """Text has one class (no labels): nothing to stratify."""
        return self.stratify and num_classes > 1


def _inputs(rows: np.ndarray, index=slice(None)) -> torch.Tensor:
    """Stored rows -> model inputs (a copy: object-store arrays are read-only)."""
    return modality_of_array(rows).inputs(torch.from_numpy(np.array(rows[index])))


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(labels, dtype=np.int64))


@dataclass
class ClassTally:
    """Per class, over a run's batches: how many rows the batch rule drew, how many it kept."""
    drawn: np.ndarray
    kept: np.ndarray

    @staticmethod
    def zeros(num_classes: int) -> ClassTally:
        return ClassTally(np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64))

    def add(self, drawn_labels: np.ndarray, kept_labels: np.ndarray) -> None:
        self.drawn += np.bincount(drawn_labels, minlength=len(self.drawn))
        self.kept += np.bincount(kept_labels, minlength=len(self.kept))

    def kept_fractions(self) -> list[float]:
        """kept / drawn per class; NaN for a class never drawn."""
        return [k / d if d else math.nan for k, d in zip(self.kept.tolist(), self.drawn.tolist())]


def draw_and_keep(rng: np.random.Generator, n: int, batch_size: int, scores: np.ndarray | None = None,
                  discard: float = 0.0, labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(drawn, kept) indices of one training batch: B uniform draws, all kept; with scores, N =
    B / (1 - discard) draws of which the B highest-scored are kept, with labels each class
    keeping its share of the draw (drray.curation.batch_rule.select_top; ties of the quotas at
    random, so that no class is favoured batch after batch)."""
    if scores is None:
        drawn = rng.integers(n, size=batch_size)
        return drawn, drawn
    drawn = rng.integers(n, size=batch_draw_size(discard, batch_size))
    if labels is None:
        return drawn, drawn[select_top(scores[drawn], batch_size)]
    return drawn, drawn[select_top(scores[drawn], batch_size, labels[drawn], tie_rng=rng)]


def draw_batch(rng: np.random.Generator, n: int, batch_size: int, scores: np.ndarray | None = None,
               discard: float = 0.0, labels: np.ndarray | None = None) -> np.ndarray:
    """Indices of one training batch: B uniform draws; with scores, the top B of N = B / (1 - discard)
    (with labels: stratified by class)."""
    return draw_and_keep(rng, n, batch_size, scores, discard, labels)[1]


def train_fresh(budget: Budget, rows: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                scores: np.ndarray | None = None, discard: float = 0.0,
                tally: ClassTally | None = None) -> nn.Module:
    """A model trained from scratch for budget.steps batches of budget.batch_size; with scores,
    each batch is the top B of N = B / (1 - discard) examples drawn uniformly (stratified by
    class as budget says). Rows are images (a classifier) or token sequences (a language model):
    drray.data.modality. tally, when given, counts each class's drawn and kept rows."""
    modality = modality_of_array(rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_inner(budget.arch, rows.shape[1:], num_classes)
    if budget.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=budget.lr, momentum=budget.momentum)
    rng = np.random.default_rng(derive_seed(seed, seeds.FRESH_MODEL_BATCHES))
    labels_t, strata = _labels(labels), labels if budget.stratifies(num_classes) else None
    for _ in range(budget.steps):
        drawn, index = draw_and_keep(rng, len(labels), budget.batch_size, scores, discard, strata)
        if tally is not None:
            tally.add(labels[drawn], labels[index])
        x, y = _inputs(rows, index), labels_t[index]
        loss = modality.losses(model(x), x, y).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def losses_and_accuracies(model: nn.Module, rows: np.ndarray, labels: np.ndarray,
                          with_accuracies: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Per example, in one forward pass (chunks): the modality's loss, and its accuracy (images: 1
    if classified right; text: the fraction of next bytes predicted right; None if not asked)."""
    modality, labels_t = modality_of_array(rows), _labels(labels)
    losses, accuracies = [], []
    for i in range(0, len(labels), CHUNK):
        x, y = _inputs(rows, slice(i, i + CHUNK)), labels_t[i:i + CHUNK]
        logits = model(x)
        losses.append(modality.losses(logits, x, y))
        if with_accuracies:
            accuracies.append(modality.accuracies(logits, x, y))
    return torch.cat(losses).numpy(), torch.cat(accuracies).numpy() if with_accuracies else None


def per_example_losses(model: nn.Module, rows: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return losses_and_accuracies(model, rows, labels, with_accuracies=False)[0]


@torch.no_grad()
def rater_scores(rater: nn.Module, examples: ExampleSet) -> np.ndarray:
    labels = _labels(examples.labels)
    return torch.cat([rater(_inputs(examples.rows, slice(i, i + CHUNK)), labels[i:i + CHUNK])
                      for i in range(0, len(examples), CHUNK)]).numpy()


@torch.no_grad()
def class_probabilities(model: nn.Module, rows: np.ndarray) -> np.ndarray:
    """A classifier's softmax per row, float64 [N, classes] (chunks)."""
    return torch.cat([torch.softmax(model(_inputs(rows, slice(i, i + CHUNK))), dim=1)
                      for i in range(0, len(rows), CHUNK)]).double().numpy()

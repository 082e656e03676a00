"""Does curation pay? Fresh classifiers trained from scratch at one budget (steps, batch size,
optimizer) on all the training data or on data selected by a score; their test accuracy.

Every method is one score per training example fed to the same selection, the paper's batch rule
(draw N = B / (1 - discard) examples, keep the B highest-scored), so methods differ only in what
they know about the data:
  baseline   no selection (N = B);
  datarater  the trained rater's score;
  random     a fixed random score per example (new for each seed): a random drop, the control;
  loss       minus the loss under a model trained on the clean held-out split: drop the
             highest-loss examples.
Seed s gives every method the same initial weights, so the comparison is paired.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from drray.config import Config
from drray.corruption import seeded_rng
from drray.data import DataSplits, ExampleSet
from drray.batch_rule import top_b_indices
from drray.filtering import batch_draw_size, quantile_cut, summarize
from drray.models import build_inner
from drray.population import derive_seed

METHODS = ("baseline", "datarater", "random", "loss")
SCORED_METHODS = ("datarater", "loss")  # scores that exist before any run: computed once
STAGE_RANDOM_SCORES, STAGE_LOSS_MODEL = 301, 302
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

    @staticmethod
    def from_config(cfg: Config) -> "Budget":
        return Budget(cfg.inner.arch, cfg.inner.optimizer, cfg.inner.lr, cfg.inner.momentum,
                      cfg.inner.batch_size, cfg.evaluate.steps)


@dataclass(frozen=True)
class RunSpec:
    method: str
    discard: float
    seed: int


def _images(images: np.ndarray, index=slice(None)) -> torch.Tensor:
    """uint8 [n, H, W] -> float [n, 1, H, W] in [0, 1] (a copy: object-store arrays are read-only)."""
    return torch.from_numpy(np.asarray(images[index], dtype=np.float32)).unsqueeze(1).div_(255.0)


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(labels, dtype=np.int64))


def draw_batch(rng: np.random.Generator, n: int, batch_size: int, scores: Optional[np.ndarray] = None,
               discard: float = 0.0) -> np.ndarray:
    """Indices of one training batch: B uniform draws; with scores, the top B of N = B / (1 - discard)."""
    if scores is None:
        return rng.integers(n, size=batch_size)
    index = rng.integers(n, size=batch_draw_size(discard, batch_size))
    return index[top_b_indices(scores[index], batch_size)]


def train_fresh(budget: Budget, images: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                scores: Optional[np.ndarray] = None, discard: float = 0.0) -> nn.Module:
    """A model trained from scratch for budget.steps batches of budget.batch_size; with scores,
    each batch is the top B of N = B / (1 - discard) examples drawn uniformly."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_inner(budget.arch, images.shape[1:3], num_classes)
    if budget.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=budget.lr, momentum=budget.momentum)
    rng = np.random.default_rng(derive_seed(seed, 1))
    labels_t = _labels(labels)
    for _ in range(budget.steps):
        index = draw_batch(rng, len(labels), budget.batch_size, scores, discard)
        loss = F.cross_entropy(model(_images(images, index)), labels_t[index])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def per_example_losses(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> np.ndarray:
    labels_t = _labels(labels)
    parts = [F.cross_entropy(model(_images(images, slice(i, i + CHUNK))), labels_t[i:i + CHUNK], reduction="none")
             for i in range(0, len(labels), CHUNK)]
    return torch.cat(parts).numpy()


@torch.no_grad()
def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    correct = sum(int((model(_images(images, slice(i, i + CHUNK))).argmax(1).numpy() == labels[i:i + CHUNK]).sum())
                  for i in range(0, len(labels), CHUNK))
    return correct / len(labels)


@torch.no_grad()
def rater_scores(rater: nn.Module, examples: ExampleSet) -> np.ndarray:
    labels = _labels(examples.labels)
    return torch.cat([rater(_images(examples.images, slice(i, i + CHUNK)), labels[i:i + CHUNK])
                      for i in range(0, len(examples), CHUNK)]).numpy()


def loss_heuristic_scores(budget: Budget, splits: DataSplits, seed: int) -> np.ndarray:
    """Minus each training example's loss under a model trained (same budget) on the held-out split."""
    model = train_fresh(budget, splits.heldout.images, splits.heldout.labels, splits.num_classes,
                        derive_seed(seed, STAGE_LOSS_MODEL))
    return -per_example_losses(model, splits.train.images, splits.train.labels)


def random_scores(n: int, seed: int) -> np.ndarray:
    return seeded_rng(seed, STAGE_RANDOM_SCORES).random(n)


def run_specs(methods: list[str], discards: list[float], seeds: int, base_seed: int) -> list[RunSpec]:
    """Baseline once per seed (discard 0), every other method at every discard fraction."""
    specs = [RunSpec("baseline", 0.0, base_seed + s) for s in range(seeds)] if "baseline" in methods else []
    return specs + [RunSpec(m, d, base_seed + s) for m in methods if m != "baseline" for d in discards
                    for s in range(seeds)]


def run_one(spec: RunSpec, data: dict, budget: Budget) -> dict:
    """Train one fresh model for `spec` and measure it. data: shared_arrays(), with "scores":
    the per-example scores of the SCORED_METHODS."""
    if spec.method == "baseline":
        method_scores = None
    elif spec.method == "random":
        method_scores = random_scores(len(data["train_labels"]), spec.seed)
    else:
        method_scores = data["scores"][spec.method]
    model = train_fresh(budget, data["train_images"], data["train_labels"], data["num_classes"], spec.seed,
                        method_scores, spec.discard)
    heldout_loss = float(per_example_losses(model, data["heldout_images"], data["heldout_labels"]).mean())
    return {**asdict(spec), "acc": accuracy(model, data["test_images"], data["test_labels"]),
            "heldout_loss": heldout_loss}


def shared_arrays(splits: DataSplits, scores: dict) -> dict:
    return {"scores": scores, "train_images": splits.train.images, "train_labels": splits.train.labels,
            "test_images": splits.test.images, "test_labels": splits.test.labels,
            "heldout_images": splits.heldout.images, "heldout_labels": splits.heldout.labels,
            "num_classes": splits.num_classes}


def selection_quality(scores: np.ndarray, is_corrupted: np.ndarray, discard: float) -> dict:
    """Against the ground truth: AUROC of the score, and of the globally lowest `discard`
    fraction, the precision of removal and the fraction of the corrupted rows it holds."""
    ids = np.arange(len(scores))
    kept = quantile_cut(scores, discard, ids).keep(scores, ids)
    summary = summarize(scores, kept, is_corrupted)
    return {"auroc": summary["auroc"], "removal_precision": summary["removal_precision"],
            "corrupted_removed_fraction": summary["corrupted_removed_fraction"]}


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (method, discard): mean, standard deviation (ddof 1) and standard error of the
    test accuracy over seeds, and the mean held-out loss."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["discard"]), []).append(r)
    rows = []
    for (method, discard), runs in groups.items():
        accs = np.array([r["acc"] for r in runs])
        std = float(accs.std(ddof=1)) if len(accs) > 1 else math.nan
        rows.append({"method": method, "discard": discard, "acc_mean": float(accs.mean()), "acc_std": std,
                     "acc_se": std / math.sqrt(len(accs)), "n": len(accs),
                     "heldout_loss_mean": float(np.mean([r["heldout_loss"] for r in runs]))})
    return rows


def best_row(rows: list[dict], method: str) -> Optional[dict]:
    candidates = [r for r in rows if r["method"] == method]
    return max(candidates, key=lambda r: r["acc_mean"]) if candidates else None


def paired_difference(results: list[dict], a: tuple, b: tuple) -> dict:
    """Mean and standard error of acc(a) - acc(b) over the seeds both have (paired: same seed,
    same initial weights); a and b are (method, discard)."""
    by_seed = {}
    for r in results:
        by_seed.setdefault(r["seed"], {})[(r["method"], r["discard"])] = r["acc"]
    diffs = np.array([accs[a] - accs[b] for accs in by_seed.values() if a in accs and b in accs])
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    return {"diff": float(diffs.mean()) if len(diffs) else math.nan, "se": se, "n": len(diffs)}


def verdicts(results: list[dict], rows: list[dict]) -> list[dict]:
    """The data rater at its best fraction against the baseline, random drop at the same fraction,
    and every other method at its own best fraction; `beats` means by more than 2 standard errors."""
    best = best_row(rows, "datarater")
    if best is None:
        return []
    ours = ("datarater", best["discard"])
    rivals = [("baseline", 0.0)] if best_row(rows, "baseline") else []
    if any(r["method"] == "random" and r["discard"] == best["discard"] for r in rows):
        rivals.append(("random", best["discard"]))
    rivals += [(m, best_row(rows, m)["discard"]) for m in ("random", "loss") if best_row(rows, m)]
    out = []
    for rival in dict.fromkeys(rivals):
        d = paired_difference(results, ours, rival)
        out.append({"datarater_discard": best["discard"], "rival": rival[0], "rival_discard": rival[1], **d,
                    "beats": bool(d["diff"] > 2 * d["se"]) if math.isfinite(d["se"]) else False})
    return out

"""Does curation pay? Fresh inner models (classifiers on images, language models on text)
trained from scratch at one budget (steps, batch size, optimizer) on all the training data or on
data selected by a score; judged by a Metric: test accuracy on images, test loss on text.

Every method is one score per training example fed to the same selection, the paper's batch rule
(draw N = B / (1 - discard) examples, keep the B highest-scored), so methods differ only in what
they know about the data:
  baseline   no selection (N = B);
  datarater  the trained rater's score;
  random     a fixed random score per example (new for each seed): a random drop, the control;
  loss       minus the loss under a model trained on the clean held-out split: drop the
             highest-loss examples;
  oracle     (opt-in, experiments only) minus the ground truth is_corrupted: the clean rows first,
             an upper bound of what any score can select.
Seed s gives every method the same initial weights, so the comparison is paired.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from drray import seeds
from drray.config import Config
from drray.curation.batch_rule import top_b_indices
from drray.curation.filtering import batch_draw_size, quantile_cut, summarize
from drray.data.examples import DataSplits, ExampleSet
from drray.data.modality import describe_rows, modality_of_array
from drray.errors import ConfigError
from drray.models import build_inner, choose_arch
from drray.seeds import derive_seed, seeded_rng

METHODS = ("baseline", "datarater", "random", "loss", "oracle")
SCORED_METHODS = ("datarater", "loss", "oracle")  # scores that exist before any run: computed once
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


@dataclass(frozen=True)
class Metric:
    """What a fresh model is judged by: a field of run_one's result, and which way is better."""
    key: str
    label: str
    higher_is_better: bool
    scale: float  # shown as value * scale (accuracy in %)
    plot: str  # the file name of its plot against the discard fraction

    def gain(self, ours: float, rival: float) -> float:
        """How much better `ours` is than `rival` (positive = better)."""
        return ours - rival if self.higher_is_better else rival - ours


# Images: test accuracy. Text: the language model's test loss (nats per byte), lower is better.
METRICS = {"image": Metric("acc", "test accuracy (%)", True, 100.0, "accuracy.png"),
           "text": Metric("test_loss", "test loss (nats/byte)", False, 1.0, "test_loss.png")}


def metric_for(rows: np.ndarray) -> Metric:
    return METRICS[modality_of_array(rows).name]


def _inputs(rows: np.ndarray, index=slice(None)) -> torch.Tensor:
    """Stored rows -> model inputs (a copy: object-store arrays are read-only)."""
    return modality_of_array(rows).inputs(torch.from_numpy(np.array(rows[index])))


def _labels(labels: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.array(labels, dtype=np.int64))


def draw_batch(rng: np.random.Generator, n: int, batch_size: int, scores: Optional[np.ndarray] = None,
               discard: float = 0.0) -> np.ndarray:
    """Indices of one training batch: B uniform draws; with scores, the top B of N = B / (1 - discard)."""
    if scores is None:
        return rng.integers(n, size=batch_size)
    index = rng.integers(n, size=batch_draw_size(discard, batch_size))
    return index[top_b_indices(scores[index], batch_size)]


def check_setup(cfg: Config, splits: DataSplits, rater_info: Optional[dict] = None, rater_dir: str = "") -> None:
    """Refuse, before any training, what would fail in every run: data that is not in memory, an
    oracle without ground truth, a rater (rater_info: load_rater's metadata) of other data, an
    unknown inner arch (built once here, as every run builds it)."""
    if splits.train is None:
        raise ConfigError("evaluate needs the training set in memory; set data.stream=false")
    if "oracle" in cfg.evaluate.methods and not splits.train.is_corrupted.any():
        raise ConfigError("the oracle method needs ground truth (corrupted rows) in the training set; "
                          "add data.corruption or leave oracle out of --methods")
    if rater_info is not None:
        check_rater_fits(rater_info, rater_dir, splits, cfg.data.source)
    with torch.random.fork_rng(devices=[]):  # a check: leaves the global generator as it was
        build_inner(cfg.inner.arch, splits.row_shape, splits.num_classes)


def check_rater_fits(meta: dict, rater_dir: str, splits: DataSplits, data_name: str) -> None:
    shape, classes = tuple(meta["row_shape"]), int(meta["num_classes"])
    if shape != tuple(splits.row_shape) or classes != splits.num_classes:
        raise ConfigError(
            f"rater {rater_dir} was trained on {describe_rows(shape)} with {classes} classes, but data "
            f"{data_name} has {describe_rows(splits.row_shape)} with {splits.num_classes} "
            "classes; evaluate it with the config it was meta-trained on")


def train_fresh(budget: Budget, rows: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                scores: Optional[np.ndarray] = None, discard: float = 0.0) -> nn.Module:
    """A model trained from scratch for budget.steps batches of budget.batch_size; with scores,
    each batch is the top B of N = B / (1 - discard) examples drawn uniformly. Rows are images
    (a classifier) or token sequences (a language model): drray.data.modality."""
    modality = modality_of_array(rows)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_inner(budget.arch, rows.shape[1:], num_classes)
    if budget.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=budget.lr)
    else:
        optimizer = torch.optim.SGD(model.parameters(), lr=budget.lr, momentum=budget.momentum)
    rng = np.random.default_rng(derive_seed(seed, seeds.FRESH_MODEL_BATCHES))
    labels_t = _labels(labels)
    for _ in range(budget.steps):
        index = draw_batch(rng, len(labels), budget.batch_size, scores, discard)
        x, y = _inputs(rows, index), labels_t[index]
        loss = modality.losses(model(x), x, y).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return model.eval()


@torch.no_grad()
def losses_and_accuracies(model: nn.Module, rows: np.ndarray, labels: np.ndarray,
                          with_accuracies: bool = True) -> tuple[np.ndarray, Optional[np.ndarray]]:
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


def loss_heuristic_scores(budget: Budget, splits: DataSplits, seed: int) -> np.ndarray:
    """Minus each training example's loss under a model trained (same budget) on the held-out split."""
    model = train_fresh(budget, splits.heldout.rows, splits.heldout.labels, splits.num_classes,
                        derive_seed(seed, seeds.EVAL_LOSS_MODEL))
    return -per_example_losses(model, splits.train.rows, splits.train.labels)


def oracle_scores(is_corrupted: np.ndarray) -> np.ndarray:
    return -np.asarray(is_corrupted, dtype=np.float64)


def random_scores(n: int, seed: int) -> np.ndarray:
    return seeded_rng(seed, seeds.EVAL_RANDOM_SCORES).random(n)


def method_scores(cfg: Config, splits: DataSplits, rater: Optional[nn.Module] = None) -> dict:
    """The per-example scores of the SCORED_METHODS asked for, computed once before the runs."""
    scores = {}
    if rater is not None:
        scores["datarater"] = rater_scores(rater, splits.train)
    if "oracle" in cfg.evaluate.methods:
        scores["oracle"] = oracle_scores(splits.train.is_corrupted)
    if "loss" in cfg.evaluate.methods:
        print("training the loss-heuristic model on the held-out split ...", flush=True)
        scores["loss"] = loss_heuristic_scores(Budget.from_config(cfg), splits, cfg.run.seed)
    return scores


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
    model = train_fresh(budget, data["train_rows"], data["train_labels"], data["num_classes"], spec.seed,
                        method_scores, spec.discard)
    heldout_loss = float(per_example_losses(model, data["heldout_rows"], data["heldout_labels"]).mean())
    test_losses, test_accuracies = losses_and_accuracies(model, data["test_rows"], data["test_labels"])
    return {**asdict(spec), "acc": float(test_accuracies.mean()), "test_loss": float(test_losses.mean()),
            "heldout_loss": heldout_loss}


def eval_subset(examples: ExampleSet, max_rows: Optional[int], seed: int) -> ExampleSet:
    """At most max_rows of `examples`, a seeded random subset in stored order (all when None)."""
    if max_rows is None or len(examples) <= max_rows:
        return examples
    return examples.subset(np.sort(seeded_rng(seed, seeds.EVAL_ROWS).choice(len(examples), max_rows, replace=False)))


def shared_arrays(splits: DataSplits, scores: dict, max_eval_rows: Optional[int] = None, seed: int = 0) -> dict:
    """What every run reads (shipped once to Ray's object store): the training split, the scores,
    and the test and held-out rows each model is measured on."""
    test, heldout = (eval_subset(part, max_eval_rows, seed) for part in (splits.test, splits.heldout))
    return {"scores": scores, "train_rows": splits.train.rows, "train_labels": splits.train.labels,
            "test_rows": test.rows, "test_labels": test.labels,
            "heldout_rows": heldout.rows, "heldout_labels": heldout.labels,
            "num_classes": splits.num_classes}


def selection_quality(scores: np.ndarray, is_corrupted: np.ndarray, discard: float) -> dict:
    """Against the ground truth: AUROC of the score, and of the globally lowest `discard`
    fraction, the precision of removal and the fraction of the corrupted rows it holds."""
    ids = np.arange(len(scores))
    kept = quantile_cut(scores, discard, ids).keep(scores, ids)
    summary = summarize(scores, kept, is_corrupted)
    return {"auroc": summary["auroc"], "removal_precision": summary["removal_precision"],
            "corrupted_removed_fraction": summary["corrupted_removed_fraction"]}


def add_selection_quality(rows: list[dict], scores: dict, is_corrupted: np.ndarray, seed: int) -> None:
    """With ground truth, each row's selection_quality for its method's score (random: the one
    of random_scores; none for the baseline)."""
    if not is_corrupted.any():
        return
    for row in rows:
        row_scores = scores.get(row["method"])
        if row["method"] == "random":
            row_scores = random_scores(len(is_corrupted), seed)
        if row_scores is not None:
            row.update(selection_quality(row_scores, is_corrupted, row["discard"]))


def describe_setup(cfg: Config, budget: Budget, splits: DataSplits, seconds: float) -> dict:
    """The `meta` of results.json: what every fresh model got, and the whole config."""
    return {"data": cfg.data.source, "arch": choose_arch(budget.arch, splits.row_shape), "steps": budget.steps,
            "batch_size": budget.batch_size, "optimizer": budget.optimizer, "lr": budget.lr,
            "seeds": cfg.evaluate.seeds, "seconds": round(seconds, 1), "config": cfg.to_dict()}


def _stats(values: list[float], prefix: str) -> dict:
    """Mean, standard deviation (ddof 1) and standard error over seeds, keyed prefix_mean etc."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_std": std, f"{prefix}_se": std / math.sqrt(len(values))}


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (method, discard): test accuracy and test loss over seeds (mean, std, standard
    error), the number of seeds and the mean held-out loss."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["discard"]), []).append(r)
    return [{"method": method, "discard": discard, **_stats([r["acc"] for r in runs], "acc"),
             **_stats([r["test_loss"] for r in runs], "test_loss"), "n": len(runs),
             "heldout_loss_mean": float(np.mean([r["heldout_loss"] for r in runs]))}
            for (method, discard), runs in groups.items()]


def best_row(rows: list[dict], method: str, metric: Metric) -> Optional[dict]:
    candidates = [r for r in rows if r["method"] == method]
    if not candidates:
        return None
    sign = 1.0 if metric.higher_is_better else -1.0
    return max(candidates, key=lambda r: sign * r[f"{metric.key}_mean"])


def paired_difference(results: list[dict], a: tuple, b: tuple, metric: Metric) -> dict:
    """Mean and standard error over the seeds both have (paired: same seed, same initial weights)
    of how much better a is than b by `metric`; a and b are (method, discard)."""
    by_seed = {}
    for r in results:
        by_seed.setdefault(r["seed"], {})[(r["method"], r["discard"])] = r[metric.key]
    diffs = np.array([metric.gain(values[a], values[b]) for values in by_seed.values() if a in values and b in values])
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    return {"diff": float(diffs.mean()) if len(diffs) else math.nan, "se": se, "n": len(diffs)}


def verdicts(results: list[dict], rows: list[dict], metric: Metric) -> list[dict]:
    """The data rater at its best fraction against the baseline, random drop at the same fraction,
    and random drop and the loss heuristic at their own best fractions (the oracle is a bound,
    not a rival); `beats` means better by more than 2 standard errors (diff > 0 is better,
    whichever way the metric points)."""
    best = best_row(rows, "datarater", metric)
    if best is None:
        return []
    ours = ("datarater", best["discard"])
    rivals = [("baseline", 0.0)] if best_row(rows, "baseline", metric) else []
    if any(r["method"] == "random" and r["discard"] == best["discard"] for r in rows):
        rivals.append(("random", best["discard"]))
    rivals += [(m, best_row(rows, m, metric)["discard"]) for m in ("random", "loss") if best_row(rows, m, metric)]
    out = []
    for rival in dict.fromkeys(rivals):
        d = paired_difference(results, ours, rival, metric)
        out.append({"datarater_discard": best["discard"], "rival": rival[0], "rival_discard": rival[1],
                    "metric": metric.key, **d,
                    "beats": bool(d["diff"] > 2 * d["se"]) if math.isfinite(d["se"]) else False})
    return out

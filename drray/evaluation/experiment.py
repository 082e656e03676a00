"""Does curation pay? Fresh inner models (classifiers on images, language models on text)
trained from scratch at one budget (steps, batch size, optimizer) on all the training data or on
data selected by a score; judged by a Metric: test accuracy on images, test loss on text.

Every method is one score per training example fed to the same selection, the paper's batch rule
(draw N = B / (1 - discard) examples, keep the B highest-scored), so methods differ only in what
they know about the data:
  baseline   no selection (N = B);
  datarater  the trained rater's score;
  random     a fixed random score per example (new for each seed): a random drop, the control;
  loss       minus the loss under the reference model, one trained (same budget) on the held-out
             split (clean or not, as data.heldout says): drop the highest-loss examples;
  loss_high  plus that loss: keep the highest-loss examples (drop the easy ones);
  loss_mid   minus |q - 0.5|, q the example's loss rank quantile over the training split (0: the
             lowest loss, 1: the highest): the top of any batch is the rows nearest the median
             loss, so both tails go. On text, loss, loss_mid and loss_high are perplexity filtering
             as the DataRater paper compares it (keep low, middle or high perplexity). One
             reference model serves all three;
  cleanlab   (labelled data) cleanlab's label quality score (self-confidence: the out-of-sample
             probability of the given label), from K-fold cross-validation (evaluate.folds,
             stratified) of fresh models on the training split itself: each row is scored by the
             model that did not train on it, and no clean data is used;
  oracle     (opt-in, experiments only) minus the ground truth is_corrupted: the clean rows first,
             an upper bound of what any score can select.
Seed s gives every method the same initial weights, so the comparison is paired. The fresh models
(and the reference and cross-validation models) are evaluate.arch, inner.arch when null: a larger
arch than the rater was meta-trained with measures transfer. With evaluate.stratify=label (and
more than one class) every batch keeps each class's share of what it draws, so no score can starve
a class; each run records, per class, the fraction of the drawn rows it kept.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Optional

import numpy as np
import torch
from torch import nn

from drray import seeds
from drray.config import EVALUATE_METHODS, Config
from drray.curation.batch_rule import select_top
from drray.curation.filtering import batch_draw_size, quantile_cut, summarize
from drray.data.examples import DataSplits, ExampleSet
from drray.data.modality import describe_rows, modality_of_array
from drray.errors import ConfigError
from drray.models import build_inner, choose_arch
from drray.seeds import derive_seed, seeded_rng

METHODS = EVALUATE_METHODS
# scores that exist before any run: computed once
SCORED_METHODS = ("datarater", "loss", "loss_mid", "loss_high", "cleanlab", "oracle")
LOSS_METHODS = ("loss", "loss_mid", "loss_high")  # the scores of one reference model
RIVALS = ("random", "loss", "loss_mid", "loss_high", "cleanlab")  # the oracle is a bound, not a rival
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
    def from_config(cfg: Config) -> "Budget":
        return Budget(cfg.evaluate.arch or cfg.inner.arch, cfg.inner.optimizer, cfg.inner.lr, cfg.inner.momentum,
                      cfg.inner.batch_size, cfg.evaluate.steps, cfg.evaluate.stratify == "label")

    def stratifies(self, num_classes: int) -> bool:
        """Text has one class (no labels): nothing to stratify."""
        return self.stratify and num_classes > 1


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


@dataclass
class ClassTally:
    """Per class, over a run's batches: how many rows the batch rule drew, how many it kept."""
    drawn: np.ndarray
    kept: np.ndarray

    @staticmethod
    def zeros(num_classes: int) -> "ClassTally":
        return ClassTally(np.zeros(num_classes, np.int64), np.zeros(num_classes, np.int64))

    def add(self, drawn_labels: np.ndarray, kept_labels: np.ndarray) -> None:
        self.drawn += np.bincount(drawn_labels, minlength=len(self.drawn))
        self.kept += np.bincount(kept_labels, minlength=len(self.kept))

    def kept_fractions(self) -> list[float]:
        """kept / drawn per class; NaN for a class never drawn."""
        return [k / d if d else math.nan for k, d in zip(self.kept.tolist(), self.drawn.tolist())]


def draw_and_keep(rng: np.random.Generator, n: int, batch_size: int, scores: Optional[np.ndarray] = None,
                  discard: float = 0.0, labels: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
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


def draw_batch(rng: np.random.Generator, n: int, batch_size: int, scores: Optional[np.ndarray] = None,
               discard: float = 0.0, labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Indices of one training batch: B uniform draws; with scores, the top B of N = B / (1 - discard)
    (with labels: stratified by class)."""
    return draw_and_keep(rng, n, batch_size, scores, discard, labels)[1]


def check_setup(cfg: Config, splits: DataSplits, rater_info: Optional[dict] = None, rater_dir: str = "") -> None:
    """Refuse, before any training, what would fail in every run: data that is not in memory, an
    oracle without ground truth, cleanlab without labels or with a class smaller than the folds, a
    rater (rater_info: load_rater's metadata) of other data, an unknown arch of the fresh models
    (built once here, as every run builds it)."""
    if splits.train is None:
        raise ConfigError("evaluate needs the training set in memory; set data.stream=false")
    if "oracle" in cfg.evaluate.methods and not splits.train.is_corrupted.any():
        raise ConfigError("the oracle method needs ground truth (corrupted rows) in the training set; "
                          "add data.corruption or leave oracle out of --methods")
    if "cleanlab" in cfg.evaluate.methods:
        check_cleanlab_fits(splits.train.labels, cfg.evaluate.folds, cfg.data.source)
    if rater_info is not None:
        check_rater_fits(rater_info, rater_dir, splits, cfg.data.source)
    check_arch(cfg, splits)


def check_arch(cfg: Config, splits: DataSplits) -> None:
    """Build the fresh models' arch once; an error names the key that chose it."""
    try:
        with torch.random.fork_rng(devices=[]):  # a check: leaves the global generator as it was
            build_inner(Budget.from_config(cfg).arch, splits.row_shape, splits.num_classes)
    except ConfigError as exc:
        if cfg.evaluate.arch is None:
            raise
        raise ConfigError(str(exc).replace("inner.arch", "evaluate.arch")) from None


def check_cleanlab_fits(labels: np.ndarray, folds: int, data_name: str) -> None:
    """cleanlab scores labels: it needs two classes or more, each in every fold."""
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        raise ConfigError(f"the cleanlab method scores labels, but the training set of data {data_name} has "
                          f"{len(classes)} class (text has no labels); leave cleanlab out of --methods")
    fewest = int(counts.min())
    if fewest < folds:
        fix = f"set evaluate.folds to at most {fewest} or " if fewest >= 2 else ""
        raise ConfigError(f"the cleanlab method: class {classes[counts.argmin()]} has {fewest} training rows, "
                          f"fewer than evaluate.folds={folds}; {fix}leave cleanlab out of --methods")


def check_rater_fits(meta: dict, rater_dir: str, splits: DataSplits, data_name: str) -> None:
    shape, classes = tuple(meta["row_shape"]), int(meta["num_classes"])
    if shape != tuple(splits.row_shape) or classes != splits.num_classes:
        raise ConfigError(
            f"rater {rater_dir} was trained on {describe_rows(shape)} with {classes} classes, but data "
            f"{data_name} has {describe_rows(splits.row_shape)} with {splits.num_classes} "
            "classes; evaluate it with the config it was meta-trained on")
    from drray.data.examples import check_same_class_names  # label ids must mean the rater's classes

    check_same_class_names(splits.class_names, meta.get("class_names"), f"data {data_name}", rater_dir, ConfigError)


def train_fresh(budget: Budget, rows: np.ndarray, labels: np.ndarray, num_classes: int, seed: int,
                scores: Optional[np.ndarray] = None, discard: float = 0.0,
                tally: Optional[ClassTally] = None) -> nn.Module:
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


@torch.no_grad()
def class_probabilities(model: nn.Module, rows: np.ndarray) -> np.ndarray:
    """A classifier's softmax per row, float64 [N, classes] (chunks)."""
    return torch.cat([torch.softmax(model(_inputs(rows, slice(i, i + CHUNK))), dim=1)
                      for i in range(0, len(rows), CHUNK)]).double().numpy()


def reference_losses(budget: Budget, splits: DataSplits, seed: int) -> np.ndarray:
    """Each training example's loss under the reference model: one trained (same budget) on the
    held-out split, the source of the LOSS_METHODS' scores."""
    model = train_fresh(budget, splits.heldout.rows, splits.heldout.labels, splits.num_classes,
                        derive_seed(seed, seeds.EVAL_LOSS_MODEL))
    return per_example_losses(model, splits.train.rows, splits.train.labels)


def loss_rank_quantiles(losses: np.ndarray) -> np.ndarray:
    """Each loss's rank among all, scaled to [0, 1]: 0 the lowest, 1 the highest (ties in stored order)."""
    ranks = np.empty(len(losses))
    ranks[np.argsort(losses, kind="stable")] = np.arange(len(losses))
    return ranks / max(len(losses) - 1, 1)


def loss_scores(losses: np.ndarray, methods) -> dict:
    """The reference losses as the scores of the LOSS_METHODS in `methods`: loss keeps the lowest
    losses (-loss), loss_high the highest (+loss), loss_mid the middle (-|q - 0.5|, q the rank
    quantile: both tails dropped)."""
    make = {"loss": lambda: -losses, "loss_high": lambda: np.array(losses),
            "loss_mid": lambda: -np.abs(loss_rank_quantiles(losses) - 0.5)}
    return {method: make[method]() for method in LOSS_METHODS if method in methods}


def stratified_folds(labels: np.ndarray, folds: int, seed: int) -> np.ndarray:
    """Each row's fold in 0..folds-1: the rows, shuffled (seeded) within their class and taken
    class after class, are dealt round the folds, so every fold holds each class's share to
    within one row and the folds' sizes differ by at most one."""
    shuffle = seeded_rng(seed, seeds.EVAL_CLEANLAB_FOLDS).random(len(labels))
    fold_of = np.empty(len(labels), dtype=np.int64)
    fold_of[np.lexsort((shuffle, labels))] = np.arange(len(labels)) % folds
    return fold_of


def train_fold(fold: int, data: dict, budget: Budget, seed: int) -> dict:
    """One fold of the cross-validation: a fresh model (budget) trained on the rows of the other
    folds gives the class probabilities of this fold's rows, which it never saw. data: rows,
    labels, num_classes and fold_of (stratified_folds)."""
    inside = np.asarray(data["fold_of"]) == fold
    trained_on, predicted = np.flatnonzero(~inside), np.flatnonzero(inside)
    model = train_fresh(budget, data["rows"][trained_on], data["labels"][trained_on], data["num_classes"],
                        derive_seed(seed, seeds.EVAL_CLEANLAB_FOLDS, fold))
    return {"fold": fold, "index": predicted, "probabilities": class_probabilities(model, data["rows"][predicted])}


def map_in_process(fn, items: list, args: tuple, shared: dict) -> list:
    """[fn(item, shared, *args) for item in items]: actors.tasks.map_tasks without Ray."""
    return [fn(item, shared, *args) for item in items]


def cleanlab_scores(budget: Budget, splits: DataSplits, folds: int, seed: int, map_fn=map_in_process) -> np.ndarray:
    """cleanlab.rank.get_label_quality_scores (self-confidence) of each training label, from the
    out-of-sample probabilities of a stratified `folds`-fold cross-validation on the training
    split (train_fold, each fold run by map_fn: map_tasks on Ray)."""
    from cleanlab.rank import get_label_quality_scores  # imports pandas and scikit-learn: only when asked

    labels = splits.train.labels
    data = {"rows": splits.train.rows, "labels": labels, "num_classes": splits.num_classes,
            "fold_of": stratified_folds(labels, folds, seed)}
    probabilities = np.full((len(labels), splits.num_classes), np.nan)
    for result in map_fn(train_fold, list(range(folds)), (budget, seed), data):
        probabilities[result["index"]] = result["probabilities"]
    return get_label_quality_scores(np.asarray(labels, dtype=np.int64), probabilities)


def oracle_scores(is_corrupted: np.ndarray) -> np.ndarray:
    return -np.asarray(is_corrupted, dtype=np.float64)


def random_scores(n: int, seed: int) -> np.ndarray:
    return seeded_rng(seed, seeds.EVAL_RANDOM_SCORES).random(n)


def method_scores(cfg: Config, splits: DataSplits, rater: Optional[nn.Module] = None, map_fn=map_in_process) -> dict:
    """The per-example scores of the SCORED_METHODS asked for, computed once before the runs;
    map_fn runs cleanlab's folds (map_in_process's signature)."""
    scores, methods, budget = {}, cfg.evaluate.methods, Budget.from_config(cfg)
    if rater is not None:
        scores["datarater"] = rater_scores(rater, splits.train)
    if "oracle" in methods:
        scores["oracle"] = oracle_scores(splits.train.is_corrupted)
    asked = [m for m in LOSS_METHODS if m in methods]
    if asked:
        print(f"training the reference model ({', '.join(asked)}) on the held-out split ...", flush=True)
        scores.update(loss_scores(reference_losses(budget, splits, cfg.run.seed), asked))
    if "cleanlab" in methods:
        print(f"cleanlab: {cfg.evaluate.folds}-fold cross-validation on the training split ...", flush=True)
        scores["cleanlab"] = cleanlab_scores(budget, splits, cfg.evaluate.folds, cfg.run.seed, map_fn)
    return scores


def run_specs(methods: list[str], discards: list[float], seeds: int, base_seed: int) -> list[RunSpec]:
    """Baseline once per seed (discard 0), every other method at every discard fraction."""
    specs = [RunSpec("baseline", 0.0, base_seed + s) for s in range(seeds)] if "baseline" in methods else []
    return specs + [RunSpec(m, d, base_seed + s) for m in methods if m != "baseline" for d in discards
                    for s in range(seeds)]


def run_one(spec: RunSpec, data: dict, budget: Budget) -> dict:
    """Train one fresh model for `spec` and measure it; kept_fraction_by_class: per class, the
    fraction of the rows its batches drew that they kept. data: shared_arrays(), with "scores":
    the per-example scores of the SCORED_METHODS."""
    if spec.method == "baseline":
        method_scores = None
    elif spec.method == "random":
        method_scores = random_scores(len(data["train_labels"]), spec.seed)
    else:
        method_scores = data["scores"][spec.method]
    tally = ClassTally.zeros(data["num_classes"])
    model = train_fresh(budget, data["train_rows"], data["train_labels"], data["num_classes"], spec.seed,
                        method_scores, spec.discard, tally)
    heldout_loss = float(per_example_losses(model, data["heldout_rows"], data["heldout_labels"]).mean())
    test_losses, test_accuracies = losses_and_accuracies(model, data["test_rows"], data["test_labels"])
    return {**asdict(spec), "acc": float(test_accuracies.mean()), "test_loss": float(test_losses.mean()),
            "heldout_loss": heldout_loss, "kept_fraction_by_class": tally.kept_fractions()}


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
            "stratify": budget.stratifies(splits.num_classes),
            "seeds": cfg.evaluate.seeds, "seconds": round(seconds, 1), "config": cfg.to_dict()}


def _stats(values: list[float], prefix: str) -> dict:
    """Mean, standard deviation (ddof 1) and standard error over seeds, keyed prefix_mean etc."""
    values = np.asarray(values, dtype=np.float64)
    std = float(values.std(ddof=1)) if len(values) > 1 else math.nan
    return {f"{prefix}_mean": float(values.mean()), f"{prefix}_std": std, f"{prefix}_se": std / math.sqrt(len(values))}


def _kept_fractions(runs: list[dict]) -> dict:
    """Per class, the mean over the runs of the fraction of its drawn rows kept (NaN: never
    drawn), and the smallest of those means: the class the selection spared least."""
    fractions = np.array([r["kept_fraction_by_class"] for r in runs], dtype=np.float64)  # [runs, classes]
    drawn = np.isfinite(fractions)
    with np.errstate(invalid="ignore"):
        means = np.where(drawn, fractions, 0.0).sum(0) / drawn.sum(0)
    finite = means[np.isfinite(means)]
    return {"kept_fraction_by_class": means.tolist(),
            "min_class_kept_fraction": float(finite.min()) if len(finite) else math.nan}


def aggregate(results: list[dict]) -> list[dict]:
    """One row per (method, discard): test accuracy and test loss over seeds (mean, std, standard
    error), the number of seeds, the mean held-out loss and the kept fractions per class."""
    groups: dict[tuple, list[dict]] = {}
    for r in results:
        groups.setdefault((r["method"], r["discard"]), []).append(r)
    return [{"method": method, "discard": discard, **_stats([r["acc"] for r in runs], "acc"),
             **_stats([r["test_loss"] for r in runs], "test_loss"), "n": len(runs),
             "heldout_loss_mean": float(np.mean([r["heldout_loss"] for r in runs])), **_kept_fractions(runs)}
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
    and each of the RIVALS at its own best fraction (the oracle is a bound, not a rival); `beats`
    means better by more than 2 standard errors (diff > 0 is better, whichever way the metric
    points)."""
    best = best_row(rows, "datarater", metric)
    if best is None:
        return []
    ours = ("datarater", best["discard"])
    rivals = [("baseline", 0.0)] if best_row(rows, "baseline", metric) else []
    if any(r["method"] == "random" and r["discard"] == best["discard"] for r in rows):
        rivals.append(("random", best["discard"]))
    rivals += [(m, best_row(rows, m, metric)["discard"]) for m in RIVALS if best_row(rows, m, metric)]
    out = []
    for rival in dict.fromkeys(rivals):
        d = paired_difference(results, ours, rival, metric)
        out.append({"datarater_discard": best["discard"], "rival": rival[0], "rival_discard": rival[1],
                    "metric": metric.key, **d,
                    "beats": bool(d["diff"] > 2 * d["se"]) if math.isfinite(d["se"]) else False})
    return out

"""Does curation pay? Fresh inner models (classifiers on images, language models on text)
trained from scratch at one budget (steps, batch size, optimizer) on all the training data or on
data selected by a score; judged by a Metric: test accuracy on images, test loss on text.

Every method is one score per training example fed to the same selection, the paper's batch rule
(draw N = B / (1 - discard) examples, keep the B highest-scored), so methods differ only in what
they know about the data:
  baseline   no selection (N = B);
  datarater  the trained rater's score;
  random, loss, loss_mid, loss_high, cleanlab and oracle: the rivals' scores and the oracle's
             bound (drray.evaluation.rivals says what each knows).
Seed s gives every method the same initial weights, so the comparison is paired. The fresh models
(and the reference and cross-validation models) are evaluate.arch, inner.arch when null: a larger
arch than the rater was meta-trained with measures transfer. With evaluate.stratify=label (and
more than one class) every batch keeps each class's share of what it draws, so no score can starve
a class; each run records, per class, the fraction of the drawn rows it kept.

This module is the experiment: the checks made before any training, the methods' scores, the runs
(run_specs, run_one) and what is made of their results (aggregate, verdicts). Training and
measuring one fresh model is drray.evaluation.fresh.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from drray import seeds
from drray.config import EVALUATE_METHODS, Config
from drray.curation.filtering import quantile_cut, summarize
from drray.data.examples import DataSplits, ExampleSet
from drray.data.modality import describe_rows, modality_of_array
from drray.errors import ConfigError
from drray.evaluation.fresh import (
    Budget,
    ClassTally,
    losses_and_accuracies,
    rater_scores,
    train_fresh,
)
from drray.evaluation.rivals import (
    LOSS_METHODS,
    cleanlab_scores,
    loss_scores,
    map_in_process,
    oracle_scores,
    random_scores,
    reference_losses,
)
from drray.models import build_inner, choose_arch
from drray.seeds import seeded_rng

METHODS = EVALUATE_METHODS
# scores that exist before any run: computed once
SCORED_METHODS = ("datarater", "loss", "loss_mid", "loss_high", "cleanlab", "oracle")
RIVALS = ("random", "loss", "loss_mid", "loss_high", "cleanlab")  # the oracle is a bound, not a rival


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
# The same measure on the held-out split: what a run without a test split can judge by.
HELDOUT_METRICS = {"image": Metric("heldout_acc", "held-out accuracy (%)", True, 100.0, ""),
                   "text": Metric("heldout_loss", "held-out loss (nats/byte)", False, 1.0, "")}


def metric_for(rows: np.ndarray) -> Metric:
    return METRICS[modality_of_array(rows).name]


def heldout_metric_for(rows: np.ndarray) -> Metric:
    return HELDOUT_METRICS[modality_of_array(rows).name]


def check_setup(cfg: Config, splits: DataSplits, rater_info: dict | None = None, rater_dir: str = "") -> None:
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
    from drray.data.examples import (
        check_same_class_names,  # label ids must mean the rater's classes
    )

    check_same_class_names(splits.class_names, meta.get("class_names"), f"data {data_name}", rater_dir, ConfigError)


def method_scores(cfg: Config, splits: DataSplits, rater: nn.Module | None = None, map_fn=map_in_process) -> dict:
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
    """Train one fresh model for `spec` and measure it on the test and held-out splits (loss and
    accuracy on each); kept_fraction_by_class: per class, the
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
    heldout_losses, heldout_accuracies = losses_and_accuracies(model, data["heldout_rows"], data["heldout_labels"])
    test_losses, test_accuracies = losses_and_accuracies(model, data["test_rows"], data["test_labels"])
    return {**asdict(spec), "acc": float(test_accuracies.mean()), "test_loss": float(test_losses.mean()),
            "heldout_loss": float(heldout_losses.mean()), "heldout_acc": float(heldout_accuracies.mean()),
            "kept_fraction_by_class": tally.kept_fractions()}


def eval_subset(examples: ExampleSet, max_rows: int | None, seed: int) -> ExampleSet:
    """At most max_rows of `examples`, a seeded random subset in stored order (all when None)."""
    if max_rows is None or len(examples) <= max_rows:
        return examples
    return examples.subset(np.sort(seeded_rng(seed, seeds.EVAL_ROWS).choice(len(examples), max_rows, replace=False)))


def shared_arrays(splits: DataSplits, scores: dict, max_eval_rows: int | None = None, seed: int = 0) -> dict:
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


def best_row(rows: list[dict], method: str, metric: Metric) -> dict | None:
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


def _paired_check(results: list[dict], ours: tuple, control: tuple, metric: Metric, prefix: str) -> dict:
    """paired_difference as {prefix}_diff, _se, _n and _worse (the control better by more than 2
    standard errors; never with fewer than 2 seeds, whose standard error is undefined)."""
    d = paired_difference(results, ours, control, metric)
    worse = bool(d["diff"] < -2 * d["se"]) if math.isfinite(d["se"]) else False
    return {f"{prefix}_{k}": v for k, v in d.items()} | {f"{prefix}_worse": worse}


def selection_checks(results: list[dict], metric: Metric, heldout_metric: Metric) -> list[dict]:
    """At every fraction the data rater ran at, its selection against random drop at that
    fraction (is its ranking better than none?) and against all the data (does curating at this
    fraction pay?), paired over seeds: by the test metric (the judge) and by the same measure on
    the held-out split (what a run without a test split can see; on text that is the loss the
    rater was meta-trained on, which favours it)."""
    have = {(r["method"], r["discard"]) for r in results}
    out = []
    for discard in sorted({d for m, d in have if m == "datarater"}):
        for control in (("random", discard), ("baseline", 0.0)):
            if control in have:
                ours = ("datarater", discard)
                out.append({"discard": discard, "control": control[0],
                            **_paired_check(results, ours, control, metric, "test"),
                            **_paired_check(results, ours, control, heldout_metric, "heldout")})
    return out


def selection_warnings(checks: list[dict], metric: Metric) -> list[str]:
    """One line for each check in which the control beats the rater's selection on test: against
    random drop the rater's ranking does harm; against all the data the fraction costs more than
    the ranking gains."""
    name, unit = metric.label.split(" (")[0], metric.label.split("(")[-1].rstrip(")")
    unit, digits = ("points", 2) if unit == "%" else (unit, 4)
    lines = []
    for c in (c for c in checks if c["test_worse"]):
        by = (f"by {metric.scale * -c['test_diff']:.{digits}f} ± {metric.scale * c['test_se']:.{digits}f} {unit} "
              f"of {name} ({c['test_n']} seeds)")
        if c["control"] == "random":
            lines.append(f"the rater's selection at discard {c['discard']:g} is worse than random drop {by}: its "
                         "ranking does harm here; do not curate with this rater at this fraction")
        else:
            lines.append(f"curating with the rater at discard {c['discard']:g} is worse than all the data {by}: "
                         "train on all of it, or drop a smaller fraction")
    return lines

"""The scores the data rater is compared with, and the oracle's bound: one score per training
example, which drray.evaluation.experiment feeds to the same batch rule as the rater's, so the
methods differ only in what they know about the data:
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
The reference and cross-validation models are fresh models (drray.evaluation.fresh) on the
evaluation's Budget.
"""
from __future__ import annotations

import numpy as np

from drray import seeds
from drray.data.examples import DataSplits
from drray.evaluation.fresh import (
    Budget,
    class_probabilities,
    per_example_losses,
    train_fresh,
)
from drray.seeds import derive_seed, seeded_rng

LOSS_METHODS = ("loss", "loss_mid", "loss_high")  # the scores of one reference model


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
    from cleanlab.rank import (
        get_label_quality_scores,  # imports pandas and scikit-learn: only when asked
    )

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

"""Filtering a scored data set with a discard fraction rho (docs/design.md, "Using a trained rater").

Three rules, no Ray (the jobs and the evaluation wire them to Ray Data):

- `quantile`: drop the globally lowest rho. `kept_count(n, rho)` rows are kept, the threshold is
  the lowest kept score, and ties at the threshold are broken by id (`quantile_cut`).
- `batch`: the paper's training-time rule, in `drray.curation.batch_rule`. Draw N = round(B / (1 - rho))
  examples, score them, keep the top B.
- `sample`: one streaming pass keeping each row with `p_accept(CDF(score))`, the probability that
  the batch rule keeps an example at that quantile; so it matches `batch` in expectation
  (`SampleRule`). The CDF is estimated from a sample of scores (`empirical_cdf`).

Stratified by class (`ByClass`: one rule per label), each class keeps its share, so a score that
runs higher for one class cannot starve another: `quantile_cut_by_class` keeps
`class_quotas(class counts, kept_count(n, rho))` rows of each class, its highest; and
`sample_rule_by_class` takes each class's CDF from its own scores.

`summarize` turns scores and a keep mask into the numbers of a filter's `summary.json`.

jobs.filter reads a scored input and builds these rules from it in drray.curation.scored_input.

Rounding is half-up everywhere (`round_half_up`), never Python's round-half-to-even.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from drray import seeds
from drray.seeds import seeded_rng
from drray.train.metrics import corruption_auroc

# No torch here: the Ray Data workers that apply the quantile and sample rules never load it
# (seconds and some hundred MB per worker).

__all__ = [
    "ByClass", "QuantileCut", "SampleRule", "batch_draw_size", "cdf_sample_rows", "class_quotas", "class_rows",
    "cut_keeping", "empirical_cdf", "finite_or_none", "kept_count", "p_accept", "quantile_cut",
    "quantile_cut_by_class", "quantile_threshold", "round_half_up", "row_uniforms", "sample_rule_by_class",
    "summarize",
]  # fmt: skip


def round_half_up(x: float) -> int:
    """Nearest integer, halves rounded up (7.5 -> 8, 6.5 -> 7), forgiving float error
    (0.75 * 10 must not become 7.4999999)."""
    return int(math.floor(x + 0.5 + 1e-9))


def _check_discard(discard: float) -> float:
    discard = float(discard)
    if not 0.0 <= discard < 1.0:
        raise ValueError(f"discard fraction must be in [0, 1), got {discard}")
    return discard


# ---------------------------------------------------------------------------------------------
# quantile: a global threshold


def kept_count(n: int, discard: float) -> int:
    """Rows that the quantile rule keeps out of n: round_half_up((1 - discard) * n)."""
    return min(int(n), max(0, round_half_up((1.0 - _check_discard(discard)) * n)))


@dataclass(frozen=True)
class QuantileCut:
    """Keep a row when score > threshold, or score == threshold and (tie_id is None or id <= tie_id).

    threshold is the lowest kept score (+inf when nothing is kept). With ids, exactly `kept`
    rows pass: of the rows tied at the threshold, those with the smallest ids. Without ids
    (tie_id None), every tied row passes, so `kept` is a lower bound."""

    threshold: float
    tie_id: Optional[int]
    kept: int

    def keep(self, scores: np.ndarray, ids: Optional[np.ndarray] = None) -> np.ndarray:
        scores = np.asarray(scores)
        if self.kept == 0:
            return np.zeros(scores.shape, dtype=bool)
        above, tied = scores > self.threshold, scores == self.threshold
        if self.tie_id is None:
            return above | tied
        if ids is None:
            raise ValueError("this cut breaks ties by id; pass the ids")
        return above | (tied & (np.asarray(ids) <= self.tie_id))


def _kth_largest(scores: np.ndarray, k: int) -> float:
    """The k-th largest score; +inf when k = 0. NaN scores are not allowed."""
    scores = np.asarray(scores).reshape(-1)
    if scores.dtype.kind != "f":
        scores = scores.astype(np.float64)
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN; a threshold over them is undefined")
    if k == 0:
        return math.inf
    # the k-th largest is the (n - k)-th smallest (0-based)
    return float(np.partition(scores, len(scores) - k)[len(scores) - k])


def quantile_threshold(scores: np.ndarray, discard: float) -> float:
    """The lowest score that the quantile rule keeps: the k-th largest score with
    k = kept_count(n, discard); +inf when k = 0. Keeping `score >= threshold` keeps exactly k rows
    when no other row ties with the threshold, and every tied row otherwise (see `quantile_cut`
    for an exact count). NaN scores are not allowed."""
    return _kth_largest(scores, kept_count(np.size(scores), discard))


def cut_keeping(scores: np.ndarray, k: int, ids: Optional[np.ndarray] = None) -> QuantileCut:
    """The cut that keeps the k highest scores; with (unique) ids exactly k rows, ties at the
    threshold kept smallest id first."""
    scores = np.asarray(scores).reshape(-1)
    k = max(0, min(int(k), len(scores)))
    threshold = _kth_largest(scores, k)
    if ids is None or k == 0:
        return QuantileCut(threshold, None, k)
    ids = np.asarray(ids).reshape(-1)
    need = k - int((scores > threshold).sum())  # >= 1: the threshold itself is kept
    tied_ids = ids[scores == threshold]
    tie_id = np.partition(tied_ids, need - 1)[need - 1]
    return QuantileCut(threshold, int(tie_id), k)


def quantile_cut(scores: np.ndarray, discard: float, ids: Optional[np.ndarray] = None) -> QuantileCut:
    """The quantile rule as a cut; with (unique) ids it keeps exactly kept_count(n, discard) rows."""
    return cut_keeping(scores, kept_count(np.size(scores), discard), ids)


def class_quotas(counts: np.ndarray, b: int, tie_rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """How many of b kept rows each class gets when its share of the kept rows is its share of
    the rows (counts): the largest-remainder apportionment of b * counts / counts.sum(), in
    integers. Ties of the remainders go to the lower class, or at random with tie_rng: a rule
    applied batch after batch must not favour the lower classes every time. Sums to
    min(b, counts.sum()); never above counts."""
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    b = max(0, min(int(b), total))
    if total == 0:
        return np.zeros_like(counts)
    quotas, remainders = np.divmod(counts * b, total)
    ties = tie_rng.random(len(counts)) if tie_rng is not None else np.arange(len(counts))
    quotas[np.lexsort((ties, -remainders))[: b - int(quotas.sum())]] += 1
    return quotas


class ByClass:
    """One keep rule per class (label -> rule with `.keep(scores, ids)`), each applied to its own
    class's rows. Picklable, for Ray tasks."""

    def __init__(self, rules: dict):
        self.rules = rules

    def keep(self, scores: np.ndarray, ids: Optional[np.ndarray], labels: Optional[np.ndarray]) -> np.ndarray:
        if labels is None:
            raise ValueError("this rule keeps rows by class; pass the labels")
        scores = np.asarray(scores).reshape(-1)
        kept = np.zeros(len(scores), dtype=bool)
        for label, rows in zip(*class_rows(labels)):
            if label not in self.rules:
                raise ValueError(f"label {label!r} is not among the classes this rule was made for")
            kept[rows] = self.rules[label].keep(scores[rows], None if ids is None else np.asarray(ids)[rows])
        return kept


def class_rows(labels: np.ndarray) -> tuple[list, list[np.ndarray]]:
    """The distinct labels (sorted, as Python values) and the row indices of each (ascending)."""
    classes, inverse, counts = np.unique(np.asarray(labels).reshape(-1), return_inverse=True, return_counts=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")  # one sort, not a pass over the rows per class
    return classes.tolist(), np.split(order, np.cumsum(counts)[:-1])


def quantile_cut_by_class(scores: np.ndarray, labels: np.ndarray, discard: float,
                          ids: Optional[np.ndarray] = None) -> ByClass:
    """The quantile rule within each class: class_quotas(class counts, kept_count(n, discard)) rows
    of each, its highest scores (ties by id as in `quantile_cut`); with ids exactly
    kept_count(n, discard) rows in all."""
    scores = np.asarray(scores).reshape(-1)
    classes, rows = class_rows(labels)
    quotas = class_quotas([len(r) for r in rows], kept_count(len(scores), discard))
    return ByClass({label: cut_keeping(scores[r], quota, None if ids is None else np.asarray(ids)[r])
                    for label, r, quota in zip(classes, rows, quotas)})


def batch_draw_size(discard: float, batch_size: int) -> int:
    """N = round_half_up(B / (1 - discard)): examples drawn per kept batch of B."""
    discard = _check_discard(discard)
    if int(batch_size) < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    return max(int(batch_size), round_half_up(batch_size / (1.0 - discard)))


# ---------------------------------------------------------------------------------------------
# sample: keep each row with P_accept(CDF(score))


def _log_binomial_coefficients(n: int, j: np.ndarray) -> np.ndarray:
    return np.array([math.lgamma(n + 1) - math.lgamma(k + 1) - math.lgamma(n - k + 1) for k in j])


def p_accept(cdf: np.ndarray, discard: float, batch_size: int, chunk: int = 65536) -> np.ndarray:
    """Probability that the batch rule (draw N = batch_draw_size(discard, B), keep the top B)
    keeps an example whose score has CDF value u: it is kept when at most B - 1 of the other
    N - 1 draws score higher, i.e. P(Binomial(N - 1, u) >= N - B). Vectorised over `cdf`;
    the mean over u ~ U(0, 1) is B / N (= 1 - discard when B / (1 - discard) is whole)."""
    u = np.clip(np.asarray(cdf, dtype=np.float64), 0.0, 1.0)
    draw = batch_draw_size(discard, batch_size)
    n, k = draw - 1, draw - batch_size  # P(Binomial(n, u) >= k)
    if k <= 0:
        return np.ones_like(u)
    # Sum whichever tail has fewer terms: upper (j = k..n) or 1 - lower (j = 0..k-1).
    upper = n - k + 1 <= k
    j = np.arange(k, n + 1) if upper else np.arange(0, k)
    log_choose = _log_binomial_coefficients(n, j)
    flat, out = u.reshape(-1), np.empty(u.size, dtype=np.float64)
    rows = max(1, chunk // len(j))  # bound the [rows, terms] temporaries
    with np.errstate(divide="ignore", invalid="ignore"):
        for start in range(0, flat.size, rows):
            x = flat[start : start + rows][:, None]
            log_u, log_1mu = np.log(x), np.log1p(-x)
            # j * log(u) with 0 * log(0) = 0, likewise (n - j) * log(1 - u)
            term_u = np.where(j == 0, 0.0, j * log_u)
            term_v = np.where(n - j == 0, 0.0, (n - j) * log_1mu)
            tail = np.exp(log_choose + term_u + term_v).sum(axis=1)
            out[start : start + len(x)] = tail if upper else 1.0 - tail
    return np.clip(out, 0.0, 1.0).reshape(u.shape)


def empirical_cdf(sample: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """F(x) = (#{sample < x} + #{sample <= x}) / (2 m): the fraction of the sample below x, ties
    counting half (so a sample's own values map to the midpoints of their steps)."""
    sorted_sample = np.sort(np.asarray(sample, dtype=np.float64).reshape(-1))
    if sorted_sample.size == 0 or np.isnan(sorted_sample).any():
        raise ValueError("empirical_cdf needs a non-empty sample without NaN")

    def cdf(x: np.ndarray) -> np.ndarray:
        return _midpoint_ranks(sorted_sample, x) / (2.0 * len(sorted_sample))

    cdf.sorted_sample = sorted_sample
    return cdf


def _midpoint_ranks(sorted_sample: np.ndarray, x) -> np.ndarray:
    """#{sample < x} + #{sample <= x}: an integer in 0..2m, twice the CDF numerator."""
    x = np.asarray(x, dtype=np.float64)
    return np.searchsorted(sorted_sample, x, side="left") + np.searchsorted(sorted_sample, x, side="right")


_GOLDEN, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.uint64).copy()  # uint64 array arithmetic wraps around silently
    x += _GOLDEN
    x = (x ^ (x >> np.uint64(30))) * _MIX1
    x = (x ^ (x >> np.uint64(27))) * _MIX2
    return x ^ (x >> np.uint64(31))


def row_uniforms(ids: np.ndarray, seed: int) -> np.ndarray:
    """A U[0, 1) number per row from (seed, id) alone: the same row gets the same number however
    the data set is split into files, blocks or batches, on any machine."""
    ids = np.asarray(ids).astype(np.int64).view(np.uint64)
    key = _splitmix64(np.array([seed % 2**64], dtype=np.uint64))
    return (_splitmix64(ids ^ key) >> np.uint64(11)).astype(np.float64) * 2.0**-53


class SampleRule:
    """Keep a row when row_uniforms(id, seed) < p_accept(CDF(score)); CDF from `sample`.

    The CDF takes one of 2m + 1 values (midpoint ranks over a sample of m), so P_accept is
    tabulated once and each batch costs two binary searches a row. Picklable, for Ray tasks."""

    def __init__(self, sample: np.ndarray, discard: float, batch_size: int, seed: int):
        self.discard, self.batch_size, self.seed = float(discard), int(batch_size), int(seed)
        self.draw_size = batch_draw_size(discard, batch_size)
        self.sorted_sample = empirical_cdf(sample).sorted_sample
        m = len(self.sorted_sample)
        self.table = p_accept(np.arange(2 * m + 1) / (2.0 * m), discard, batch_size)

    def probability(self, scores: np.ndarray) -> np.ndarray:
        return self.table[_midpoint_ranks(self.sorted_sample, scores)]

    def keep(self, scores: np.ndarray, ids: np.ndarray) -> np.ndarray:
        return row_uniforms(ids, self.seed) < self.probability(scores)


def cdf_sample_rows(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """min(size, n) distinct row indices out of n, sorted: the rows a CDF is estimated from."""
    return np.sort(rng.choice(n, min(size, n), replace=False))


def sample_rule_by_class(scores: np.ndarray, labels: np.ndarray, discard: float, batch_size: int, seed: int,
                         cdf_sample: int = 100_000) -> ByClass:
    """The sample rule within each class: each class's CDF from a seeded sample of up to
    cdf_sample of its own scores, so each class keeps B / N of itself in expectation."""
    scores = np.asarray(scores).reshape(-1)
    rng = seeded_rng(seed, seeds.FILTER_CDF_SAMPLE)
    classes, rows = class_rows(labels)
    return ByClass({label: SampleRule(scores[r[cdf_sample_rows(rng, len(r), cdf_sample)]], discard, batch_size, seed)
                    for label, r in zip(classes, rows)})


# ---------------------------------------------------------------------------------------------
# summary


def finite_or_none(value: float) -> Optional[float]:
    return None if value is None or not math.isfinite(value) else float(value)


def summarize(scores: np.ndarray, kept_mask: np.ndarray, is_corrupted: Optional[np.ndarray] = None,
              labels: Optional[np.ndarray] = None) -> dict:
    """rows_in, rows_kept, rows_removed; with labels also kept_fraction_by_class ({str(label):
    fraction of its rows kept}, by label); with ground truth also: auroc (clean above corrupted,
    drray.train.metrics.corruption_auroc), corrupted_rows, corrupted_kept, corrupted_removed,
    corrupted_removed_fraction (of the corrupted rows, how many were removed), removal_precision
    (of the removed rows, how many were corrupted), and corrupted_fraction_in / _kept. A value
    that is undefined (no corrupted rows, nothing removed) is None."""
    scores = np.asarray(scores).reshape(-1)
    kept = np.asarray(kept_mask, dtype=bool).reshape(-1)
    if len(kept) != len(scores):
        raise ValueError(f"{len(kept)} keep flags for {len(scores)} scores")
    n, n_kept = len(scores), int(kept.sum())
    summary: dict[str, Any] = {"rows_in": n, "rows_kept": n_kept, "rows_removed": n - n_kept}
    if labels is not None:
        classes, rows = class_rows(labels)
        summary["kept_fraction_by_class"] = {str(label): float(kept[r].mean()) for label, r in zip(classes, rows)}
    if is_corrupted is None:
        return summary
    bad = np.asarray(is_corrupted, dtype=bool).reshape(-1)
    n_bad, bad_removed = int(bad.sum()), int((bad & ~kept).sum())
    summary.update(
        auroc=finite_or_none(corruption_auroc(scores, bad)),
        corrupted_rows=n_bad,
        corrupted_kept=n_bad - bad_removed,
        corrupted_removed=bad_removed,
        corrupted_removed_fraction=bad_removed / n_bad if n_bad else None,
        removal_precision=bad_removed / (n - n_kept) if n > n_kept else None,
        corrupted_fraction_in=n_bad / n if n else None,
        corrupted_fraction_kept=(n_bad - bad_removed) / n_kept if n_kept else None,
    )
    return summary

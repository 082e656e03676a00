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

For jobs.filter (its streaming pass is actors.filter_pipeline): `open_scored` checks a scored
input, `read_narrow` reads its narrow columns, `resolve_stratify` settles --stratify, `make_rule`
builds the keep rule from them, `keep_rows` applies it to a batch and `format_summary` reports the result.

Rounding is half-up everywhere (`round_half_up`), never Python's round-half-to-even.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np

from drray import seeds
from drray.errors import ConfigError, DataError
from drray.seeds import seeded_rng
from drray.train.metrics import corruption_auroc

# No torch here: the Ray Data workers that apply the quantile and sample rules never load it
# (seconds and some hundred MB per worker).

__all__ = [
    "ByClass", "QuantileCut", "SampleRule", "batch_draw_size", "class_quotas", "class_rows", "cut_keeping", "empirical_cdf",
    "kept_count", "keep_mask", "p_accept", "quantile_cut", "quantile_cut_by_class", "quantile_threshold",
    "round_half_up", "row_uniforms", "sample_rule_by_class", "summarize", "check_settings", "open_scored",
    "read_narrow", "resolve_stratify", "make_rule", "keep_rows", "format_summary", "MODES", "STRATIFY",
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


def _finite_or_none(value: float) -> Optional[float]:
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
        auroc=_finite_or_none(corruption_auroc(scores, bad)),
        corrupted_rows=n_bad,
        corrupted_kept=n_bad - bad_removed,
        corrupted_removed=bad_removed,
        corrupted_removed_fraction=bad_removed / n_bad if n_bad else None,
        removal_precision=bad_removed / (n - n_kept) if n > n_kept else None,
        corrupted_fraction_in=n_bad / n if n else None,
        corrupted_fraction_kept=(n_bad - bad_removed) / n_kept if n_kept else None,
    )
    return summary


# ---------------------------------------------------------------------------------------------
# a scored data set, for jobs.filter (the messages name its flags)

MODES = ("quantile", "sample")
STRATIFY = ("label", "none")


def check_settings(discard: float, batch_size: int, cdf_sample: int, stratify: Optional[str] = None) -> None:
    if not (math.isfinite(discard) and 0.0 <= discard < 1.0):
        raise ConfigError(f"--discard must be in [0, 1), got {discard:g}")
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {batch_size}")
    if cdf_sample < 1:
        raise ConfigError(f"--cdf-sample must be >= 1, got {cdf_sample}")
    if stratify is not None and stratify not in STRATIFY:
        raise ConfigError(f"--stratify must be one of {', '.join(STRATIFY)} (or left out), got {stratify!r}")


def _stratifiable_label(schema) -> bool:
    """Whether the input has a label column that rows can be grouped by (integers or strings)."""
    import pyarrow as pa

    if "label" not in schema.names:
        return False
    kind = schema.field("label").type
    return pa.types.is_integer(kind) or pa.types.is_string(kind) or pa.types.is_large_string(kind)


def open_scored(location: str, mode: str, stratify: Optional[str] = None):
    """(fs, files, schema) of a scored input (a Parquet file or folder, path or URI), its columns checked."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from drray.storage import parquet_files

    fs, _, files = parquet_files(location, "a scored Parquet file or folder (the output of jobs.score)")
    try:
        schema = pads.dataset(files, filesystem=fs, format="parquet").schema
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{location}: cannot read as Parquet ({exc})".replace("\n", " ")) from None
    if "score" not in schema.names:
        raise DataError(f"{location}: no score column (columns: {', '.join(schema.names)}); score it first "
                        "with jobs.score")
    if not pa.types.is_floating(schema.field("score").type):
        raise DataError(f"{location}: score must be a float column, got {schema.field('score').type}")
    has_id = "id" in schema.names and pa.types.is_integer(schema.field("id").type)
    if mode == "sample" and not has_id:
        raise DataError(f"{location}: sample mode draws each row's fate from its id; needs an integer id "
                        "column (drray's Parquet schema, docs/design.md)")
    if stratify == "label" and "label" not in schema.names:
        raise ConfigError(f"--stratify label: {location} has no label column to keep each class's share of; "
                          "pass --stratify none (the lowest scores go, whatever their class)")
    if stratify == "label" and not _stratifiable_label(schema):
        raise DataError(f"{location}: --stratify label needs an integer or string label column, got "
                        f"{schema.field('label').type}; pass --stratify none")
    return fs, files, schema


def read_narrow(fs, files, schema, location: str, stratify: Optional[str] = None) -> dict:
    """score (and id, is_corrupted, label where present) of every row, as numpy. A label column with
    nulls is an error under --stratify label, and left out otherwise."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    columns = ["score"] + [c for c in ("id", "is_corrupted") if c in schema.names]
    if "id" in columns and not pa.types.is_integer(schema.field("id").type):
        columns.remove("id")
    if _stratifiable_label(schema):
        columns.append("label")
    table = pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns)
    if table.num_rows == 0:
        raise DataError(f"{location}: no rows to filter")
    score = table.column("score")
    if score.null_count:
        raise DataError(f"{location}: {score.null_count} rows have no score (null); re-score them or drop them")
    narrow = {"score": score.to_numpy()}
    bad = np.isnan(narrow["score"])
    if bad.any():
        raise DataError(f"{location}: {int(bad.sum())} rows have a NaN score; re-score them or drop them")
    if "id" in columns:
        narrow["id"] = pc.fill_null(table.column("id"), 0).to_numpy()
        if len(np.unique(narrow["id"])) != len(narrow["id"]):
            raise DataError(f"{location}: ids repeat; every row needs a unique id (drray's Parquet schema, docs/design.md)")
    if "is_corrupted" in columns:
        narrow["is_corrupted"] = np.asarray(pc.fill_null(table.column("is_corrupted"), False), dtype=bool)
    if "label" in columns:
        label = table.column("label")
        if label.null_count and stratify == "label":
            raise DataError(f"{location}: {label.null_count} rows have no label (null); give them one, or "
                            "pass --stratify none")
        if not label.null_count:
            narrow["label"] = label.to_numpy()
    return narrow


def resolve_stratify(stratify: Optional[str], narrow: dict) -> str:
    """--stratify as given; left out: `label` when the rows have labels of more than one class
    (images), else `none` (text, whose label is absent or always 0)."""
    if stratify is not None:
        return stratify
    return "label" if "label" in narrow and len(np.unique(narrow["label"])) > 1 else "none"


def make_rule(mode: str, discard: float, narrow: dict, batch_size: int = 128, cdf_sample: int = 100_000,
              seed: int = 0, stratify: str = "none"):
    """The keep rule of `mode` (picklable; apply it with `keep_mask`) and what the summary says about
    it. stratify `label`: one rule per class of narrow["label"] (`ByClass`). batch_size, cdf_sample
    (per class when stratified) and seed are the sample mode's."""
    scores, ids = narrow["score"], narrow.get("id")
    labels = narrow["label"] if stratify == "label" else None
    if mode == "quantile" and labels is None:
        cut = quantile_cut(scores, discard, ids)
        return cut, {"threshold": _finite_or_none(cut.threshold), "tie_id": cut.tie_id,
                     "ties_at_threshold": int((scores == cut.threshold).sum())}
    if mode == "quantile":
        by_class = quantile_cut_by_class(scores, labels, discard, ids)
        return by_class, {"threshold_by_class": {str(label): _finite_or_none(cut.threshold)
                                                 for label, cut in by_class.rules.items()}}
    if labels is None:
        rows = cdf_sample_rows(seeded_rng(seed, seeds.FILTER_CDF_SAMPLE), len(scores), cdf_sample)
        rule = SampleRule(scores[rows], discard, batch_size, seed)
        sampled, expected = len(rows), float(rule.probability(scores).sum())
    else:
        rule = sample_rule_by_class(scores, labels, discard, batch_size, seed, cdf_sample)
        sampled = sum(len(r.sorted_sample) for r in rule.rules.values())
        expected = float(sum(rule.rules[label].probability(scores[r]).sum() for label, r in zip(*class_rows(labels))))
    info = {"cdf_sample_size": sampled, "batch_size": batch_size, "draw_size": batch_draw_size(discard, batch_size),
            "seed": seed, "expected_rows_kept": expected}
    return rule, info


def keep_mask(rule, scores: np.ndarray, ids: Optional[np.ndarray], labels: Optional[np.ndarray] = None) -> np.ndarray:
    """Which rows `rule` (from make_rule) keeps; labels are needed when it is by class."""
    return rule.keep(scores, ids, labels) if isinstance(rule, ByClass) else rule.keep(scores, ids)


def keep_rows(table, rule):
    """The rows of a pyarrow batch that `rule` keeps (a Ray Data map_batches function)."""
    import pyarrow as pa

    scores = table.column("score").to_numpy()
    ids = table.column("id").to_numpy() if "id" in table.column_names else None
    labels = table.column("label").to_numpy() if isinstance(rule, ByClass) else None
    return table.filter(pa.array(keep_mask(rule, scores, ids, labels), type=pa.bool_()))


def format_summary(summary: dict) -> str:
    """A filter's summary.json as the lines jobs.filter prints."""
    lines = [f"kept {summary['rows_kept']} of {summary['rows_in']} rows ({summary['mode']}, discard "
             f"{summary['discard']:g}) -> {summary['output']}"]
    if summary.get("threshold") is not None:
        ties = summary["ties_at_threshold"]
        lines.append(f"threshold {summary['threshold']:.6g}" + (f" ({ties} rows tie at it; kept smallest id first)"
                                                                if ties > 1 else ""))
    by_class = summary.get("kept_fraction_by_class")
    if by_class:  # the class the filter spared least, where a score that favours some classes shows
        label, fraction = min(by_class.items(), key=lambda item: item[1])
        lines.append(f"lowest kept fraction of a class: {fraction:.1%} (label {label}, of {len(by_class)} classes; "
                     f"stratify {summary.get('stratify', 'none')})")
    if summary.get("corrupted_rows") is not None:
        def show(value, fmt="{:.3f}"):
            return "n/a" if value is None else fmt.format(value)

        lines.append(f"corrupted rows: {summary['corrupted_rows']}, removed {summary['corrupted_removed']} "
                     f"({show(summary['corrupted_removed_fraction'], '{:.1%}')}); precision of removal "
                     f"{show(summary['removal_precision'], '{:.1%}')}; AUROC {show(summary['auroc'])}")
    return "\n".join(lines)

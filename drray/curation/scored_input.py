"""A scored data set, for jobs.filter (its streaming pass is actors.filter_pipeline); the messages
name the job's flags. `open_scored` checks a scored input, `read_narrow` reads its narrow columns,
`resolve_stratify` settles --stratify, `make_rule` builds the keep rule from them (the rules are
drray.curation.filtering's), `keep_rows` applies it to a batch and `format_summary` reports the result.
"""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from drray import seeds
from drray.curation.filtering import (ByClass, SampleRule, batch_draw_size, cdf_sample_rows, class_rows, finite_or_none, quantile_cut,
                                      quantile_cut_by_class, sample_rule_by_class)
from drray.errors import ConfigError, DataError
from drray.seeds import seeded_rng

# No torch here: the Ray Data workers that apply the rules never load it.

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
        return cut, {"threshold": finite_or_none(cut.threshold), "tie_id": cut.tie_id,
                     "ties_at_threshold": int((scores == cut.threshold).sum())}
    if mode == "quantile":
        by_class = quantile_cut_by_class(scores, labels, discard, ids)
        return by_class, {"threshold_by_class": {str(label): finite_or_none(cut.threshold)
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

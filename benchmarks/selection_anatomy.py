"""What a rater's selection drops and keeps, judged by a model that knows the truth: why a rater
that ranks the flips well (AUROC) can still select worse than random drop.

    python -m benchmarks.selection_anatomy --config configs/mnist.yaml --set data.heldout_size=1000 \
        --rater RUN_DIR [--discard 0.2,0.4] --name NAME

At each fraction the selection is the quantile rule within each class (what `jobs.filter --mode
quantile --stratify label` keeps over the whole split; jobs.evaluate's batch rule keeps the top of
each drawn batch, which drops the same rows in expectation up to the batch's sampling). The judge
is a fresh model (the evaluation's budget) trained on the clean training rows only, the most any
score could know. For each fraction:
  clean dropped       the fraction of the clean rows the selection drops, and the judge's
                      accuracy on them beside its accuracy on all clean rows (rows it trained
                      on, so this is how well it fits them; lower: the selection drops hard rows);
  flips kept          the fraction of the label_flip rows it keeps, and the judge's mean
                      probability of their (wrong) given label beside all flipped rows'
                      (higher: the flips it keeps are the plausible ones).
Rows of other corruption kinds count as neither. Labelled images with label flips only.
Results: benchmarks/results/selection_anatomy/NAME.json and .md.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "selection_anatomy"


def kept_by_class(scores: np.ndarray, labels: np.ndarray, ids: np.ndarray, discard: float) -> np.ndarray:
    """The rows the quantile rule keeps within each class (exactly, ties by id)."""
    from drray.curation.filtering import quantile_cut_by_class

    return quantile_cut_by_class(scores, labels, discard, ids).keep(scores, ids, labels)


def _mean(values: np.ndarray) -> float | None:
    return float(values.mean()) if len(values) else None  # None: no such rows (JSON null)


def anatomy(kept: np.ndarray, corruption: np.ndarray, judge_probabilities: np.ndarray, labels: np.ndarray) -> dict:
    """The figures of one selection (see the module's docstring) from each training row's
    corruption kind ("" when clean) and the judge's class probabilities of every training row."""
    right = judge_probabilities.argmax(1) == labels
    p_given = judge_probabilities[np.arange(len(labels)), labels]
    clean, flips = corruption == "", corruption == "label_flip"
    dropped_clean, kept_flips = clean & ~kept, flips & kept
    return {"clean_dropped": float(dropped_clean.sum() / clean.sum()),
            "judge_acc_dropped_clean": _mean(right[dropped_clean]), "judge_acc_all_clean": _mean(right[clean]),
            "flips_kept": float(kept_flips.sum() / flips.sum()),
            "judge_p_given_kept_flips": _mean(p_given[kept_flips]), "judge_p_given_all_flips": _mean(p_given[flips])}


def measure(cfg, rater_dir: str, discards: list[float]) -> dict:
    from drray.data.splits import build_splits
    from drray.evaluation.fresh import Budget, class_probabilities, rater_scores, train_fresh
    from drray.train.checkpoint import load_rater

    splits = build_splits(cfg.data, cfg.run.seed)
    train = splits.train
    if splits.num_classes < 2 or not (train.corruption == "label_flip").any():
        raise SystemExit("selection_anatomy: needs labelled images with label flips (data.corruption: label_flip)")
    rater, _ = load_rater(Path(rater_dir))
    scores = rater_scores(rater, train)
    clean = np.flatnonzero(~train.is_corrupted)
    print(f"training the judge on the {len(clean)} clean training rows ...", flush=True)
    judge = train_fresh(Budget.from_config(cfg), train.rows[clean], train.labels[clean], splits.num_classes,
                        cfg.run.seed)
    probabilities = class_probabilities(judge, train.rows)
    return {str(d): anatomy(kept_by_class(scores, train.labels, train.ids, d), train.corruption, probabilities,
                            train.labels) for d in discards}


def markdown(by_discard: dict) -> str:
    lines = ["| discard | clean rows dropped | judge's accuracy on them (all clean) | flips kept | "
             "judge's p(given label) on them (all flips) |", "|---|---|---|---|---|"]
    def shown(value, scale: float, digits: int) -> str:
        return "–" if value is None else f"{scale * value:.{digits}f}"

    for d, a in by_discard.items():
        lines.append(f"| {d} | {100 * a['clean_dropped']:.1f}% | {shown(a['judge_acc_dropped_clean'], 100, 1)}% "
                     f"({shown(a['judge_acc_all_clean'], 100, 1)}%) | {100 * a['flips_kept']:.1f}% | "
                     f"{shown(a['judge_p_given_kept_flips'], 1, 4)} ({shown(a['judge_p_given_all_flips'], 1, 4)}) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from drray.config import load_config

    parser = argparse.ArgumentParser(prog="python -m benchmarks.selection_anatomy", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config the rater was meta-trained with")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--rater", required=True, help="the --out directory of a meta-train run")
    parser.add_argument("--discard", default="0.2,0.4", help="comma-separated fractions (default 0.2,0.4)")
    parser.add_argument("--name", required=True, help="results go to benchmarks/results/selection_anatomy/NAME.*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    started = time.monotonic()
    by_discard = measure(cfg, args.rater, [float(d) for d in args.discard.split(",")])
    table = markdown(by_discard)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"config": args.config, "set": args.set, "rater": args.rater, "seconds": round(time.monotonic() - started)}
    (RESULTS / f"{args.name}.json").write_text(json.dumps({"meta": meta, "by_discard": by_discard}, indent=2, allow_nan=False))
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

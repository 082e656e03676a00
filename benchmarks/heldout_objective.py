"""What the outer loss rewards: for each corruption kind, does dropping it lower the held-out loss
the rater is meta-trained on, and does it lower the clean test loss the user cares about?

    python -m benchmarks.heldout_objective --config configs/text.yaml --set data.heldout=same \
        [--set ...] [--seeds 4] [--variants "clean only,all but shuffled_words"] --name text-same

The rater follows the meta-gradient of the inner models' loss on the held-out split. Whatever that
loss does not reward, the rater cannot learn. This measures it directly, without a rater: fresh
models (the evaluation's budget: evaluate.arch, evaluate.steps, the inner optimizer) are trained
on the whole training split ("all"), on its clean rows only ("clean only"), and on all but one
corruption kind ("all but KIND"), each with the same seeds (paired). For each, against "all":
  heldout   the change in the mean loss on the run's held-out split (data.heldout says which);
  test      the change in the clean test split's metric (accuracy on images, loss on text);
and the held-out loss on the held-out split's own rows of each kind. A kind whose dropping helps
the test but raises the held-out loss is one the held-out loss, over a whole training, rewards
keeping (the rater's meta-gradient sees only the last T inner steps, so it need not follow).
Results: benchmarks/results/heldout_objective/NAME.json and .md.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "heldout_objective"


def training_variants(is_corrupted: np.ndarray, corruption: np.ndarray) -> dict[str, np.ndarray]:
    """Name -> boolean mask of the training rows a fresh model trains on."""
    variants = {"all": np.ones(len(is_corrupted), dtype=bool), "clean only": ~is_corrupted}
    kinds = sorted(set(corruption[is_corrupted]))
    for kind in kinds if len(kinds) > 1 else ():  # with one kind, "all but" it is "clean only"
        variants[f"all but {kind}"] = corruption != kind
    return variants


def mean_by_kind(losses: np.ndarray, corruption: np.ndarray) -> dict[str, float]:
    """The mean loss over all rows, the clean rows ("clean") and each corruption kind's rows."""
    out = {"overall": float(losses.mean())}
    for kind in sorted(set(corruption)):
        out[kind or "clean"] = float(losses[corruption == kind].mean())
    return out


def measure(cfg, seeds: int, only: tuple[str, ...] = ()) -> tuple[list[dict], bool]:
    """One record per (seed, variant): held-out losses by kind, test loss and accuracy; and
    whether the rows are images (judged by accuracy) rather than text (by loss). only: the
    variants to train ("all" always), every one when empty."""
    from drray.data.splits import build_splits
    from drray.evaluation import experiment as ev
    from drray.evaluation.fresh import Budget, losses_and_accuracies, train_fresh

    splits = build_splits(cfg.data, cfg.run.seed)
    budget, train = Budget.from_config(cfg), splits.train
    test = ev.eval_subset(splits.test, cfg.evaluate.max_eval_rows, cfg.run.seed)
    heldout = splits.heldout
    variants = training_variants(train.is_corrupted, train.corruption)
    unknown = sorted(set(only) - set(variants))
    if unknown:
        raise SystemExit(f"--variants: unknown variant {unknown[0]!r}; variants: {', '.join(variants)}")
    variants = {name: mask for name, mask in variants.items() if not only or name in only or name == "all"}
    records = []
    for seed in range(cfg.run.seed, cfg.run.seed + seeds):
        for name, mask in variants.items():
            started = time.monotonic()
            model = train_fresh(budget, train.rows[mask], train.labels[mask], splits.num_classes, seed)
            heldout_losses, _ = losses_and_accuracies(model, heldout.rows, heldout.labels, with_accuracies=False)
            test_losses, test_accuracies = losses_and_accuracies(model, test.rows, test.labels)
            records.append({"seed": seed, "variant": name, "rows": int(mask.sum()),
                            "heldout": mean_by_kind(heldout_losses, heldout.corruption),
                            "test_loss": float(test_losses.mean()), "acc": float(test_accuracies.mean())})
            print(f"seed {seed} {name:<24} held-out {records[-1]['heldout']['overall']:.4f}  "
                  f"test loss {records[-1]['test_loss']:.4f}  acc {records[-1]['acc']:.4f}  "
                  f"({time.monotonic() - started:.0f} s)", flush=True)
    return records, ev.metric_for(train.rows).key == "acc"


def paired_change(records: list[dict], variant: str, value) -> tuple[float, float]:
    """Mean and standard error over seeds of value(variant's record) - value("all"'s record)."""
    by_seed: dict[int, dict] = {}
    for r in records:
        by_seed.setdefault(r["seed"], {})[r["variant"]] = r
    diffs = np.array([value(v[variant]) - value(v["all"]) for v in by_seed.values() if variant in v and "all" in v])
    se = float(diffs.std(ddof=1) / math.sqrt(len(diffs))) if len(diffs) > 1 else math.nan
    return float(diffs.mean()), se


def markdown(records: list[dict], image: bool) -> str:
    """One row per variant: its change against "all" in the held-out loss (overall and on the
    held-out rows of the kind it drops: "clean only" drops every kind, shown when there is one)
    and in the test metric, mean ± SE over seeds."""
    variants = list(dict.fromkeys(r["variant"] for r in records))
    kinds = [k for k in records[0]["heldout"] if k not in ("overall", "clean")]
    sole_kind = kinds[0] if len(kinds) == 1 else None  # "clean only" drops just that kind
    test_key, test_label, scale = ("acc", "test accuracy (points)", 100.0) if image else ("test_loss", "test loss", 1.0)
    lines = [f"| trained on | held-out loss, all rows | held-out loss, the dropped kind's rows | {test_label} |",
             "|---|---|---|---|"]
    for variant in variants:
        if variant == "all":
            mean = np.mean([r["heldout"]["overall"] for r in records if r["variant"] == "all"])
            test = scale * np.mean([r[test_key] for r in records if r["variant"] == "all"])
            lines.append(f"| all (absolute) | {mean:.4f} | – | {test:.4g} |")
            continue
        kind = variant.removeprefix("all but ") if variant.startswith("all but ") else sole_kind
        cells = [paired_change(records, variant, lambda r: r["heldout"]["overall"])]
        if kind is not None and all(kind in r["heldout"] for r in records):
            cells.append(paired_change(records, variant, lambda r, k=kind: r["heldout"][k]))
        else:
            cells.append(None)
        diff, se = paired_change(records, variant, lambda r: r[test_key])
        cells.append((scale * diff, scale * se))
        shown = ["–" if c is None else f"{c[0]:+.4f} ± {c[1]:.4f}" for c in cells]
        lines.append(f"| {variant} | " + " | ".join(shown) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    from drray.config import load_config

    parser = argparse.ArgumentParser(prog="python -m benchmarks.heldout_objective", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML config (default: the built-in defaults)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override")
    parser.add_argument("--seeds", type=int, default=4, help="paired seeds (default 4)")
    parser.add_argument("--variants", default="",
                        help='comma-separated, e.g. "all but shuffled_words" (default: every one)')
    parser.add_argument("--name", required=True, help="results go to benchmarks/results/heldout_objective/NAME.*")
    args = parser.parse_args(argv)
    cfg = load_config(args.config, args.set)
    started = time.monotonic()
    records, image = measure(cfg, args.seeds, tuple(v.strip() for v in args.variants.split(",") if v.strip()))
    table = markdown(records, image)
    RESULTS.mkdir(parents=True, exist_ok=True)
    meta = {"config": args.config, "set": args.set, "seeds": args.seeds, "variants": args.variants,
            "heldout": cfg.data.heldout, "seconds": round(time.monotonic() - started, 1),
            "date": time.strftime("%Y-%m-%d")}
    results = {"meta": meta, "records": records}
    (RESULTS / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")
    (RESULTS / f"{args.name}.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())

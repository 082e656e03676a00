"""The rater's quality on MNIST: AUROC of trained raters at separating corrupted from clean rows.

    python -m benchmarks.mnist_quality run NAME [--config configs/mnist.yaml] [--set KEY=VALUE ...]
        meta-trains into runs/bench-NAME (python -m jobs.meta_train, timed), then evaluates it
    python -m benchmarks.mnist_quality eval RUN_DIR [--name NAME] [--wall-seconds S]
        evaluates an existing run
    python -m benchmarks.mnist_quality table
        prints the table of every recorded result

Evaluation: the learning curve from RUN_DIR/metrics.jsonl (probe-set AUROC logged during training:
first step with AUROC >= 0.95, the AUROC every 50 steps, the last one) and, with the final rater
(RUN_DIR/checkpoint/rater.pt), the AUROC over the WHOLE training split rebuilt from the run's
config: overall, per corruption kind, and for pixel noise per noise level (the fraction of pixels
replaced) in bins [0.1,0.3) [0.3,0.5) [0.5,0.7) [0.7,0.9], each bin against all clean rows.
Results accumulate in benchmarks/results/mnist_quality.json, keyed by NAME; see BENCHMARKS.md.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "mnist_quality.json"
LEVEL_BINS = ((0.1, 0.3), (0.3, 0.5), (0.5, 0.7), (0.7, 0.9))


def level_bin_masks(level: np.ndarray) -> dict[str, np.ndarray]:
    """Masks per noise-level bin. The edges are open-ended at both ends: a level rounds to whole
    pixels (78/784 = 0.0995 is drawn as 0.1), so the first bin takes everything below 0.3 and the
    last everything from 0.7."""
    masks = {}
    for i, (lo, hi) in enumerate(LEVEL_BINS):
        lower = -np.inf if i == 0 else lo
        upper = np.inf if i == len(LEVEL_BINS) - 1 else hi
        close = "]" if i == len(LEVEL_BINS) - 1 else ")"
        masks[f"[{lo},{hi}{close}"] = (level >= lower) & (level < upper)
    return masks


def score_examples(rater, examples, batch: int = 1024) -> np.ndarray:
    import torch

    from drray.data.examples import to_tensors

    x, y = to_tensors(examples)
    with torch.no_grad():
        return torch.cat([rater(xb, yb) for xb, yb in zip(x.split(batch), y.split(batch))]).numpy()


def evaluate_rater(run_dir: Path) -> dict:
    """AUROC of the run's final rater over the whole training split (rebuilt from its config)."""
    from drray.config import validate_config
    from drray.data.splits import build_splits
    from drray.models import build_rater
    from drray.train.checkpoint import load_rater_weights, load_run_config
    from drray.train.metrics import corruption_auroc

    cfg = validate_config(load_run_config(run_dir), origin=str(run_dir))
    splits = build_splits(cfg.data, cfg.run.seed)
    weights = load_rater_weights(run_dir)
    rater = build_rater(cfg.rater.arch, splits.row_shape, splits.num_classes)
    rater.load_state_dict(weights["rater"])
    rater.eval()
    train = splits.train
    scores = score_examples(rater, train)
    bad, clean = train.is_corrupted, ~train.is_corrupted
    out = {"rater_step": int(weights["step"]), "rows": int(len(train)), "corrupted_rows": int(bad.sum()),
           "auroc": corruption_auroc(scores, bad), "auroc_by_kind": {}, "pixel_noise_by_level": {},
           "mean_score_clean": float(scores[clean].mean()), "mean_score_corrupted": float(scores[bad].mean())}
    for kind in sorted(set(train.corruption[bad])):
        rows = (train.corruption == kind) | clean
        out["auroc_by_kind"][kind] = corruption_auroc(scores[rows], bad[rows])
    noisy = train.corruption == "pixel_noise"
    if noisy.any():
        for name, in_bin in level_bin_masks(train.corruption_level).items():
            rows = (noisy & in_bin) | clean
            out["pixel_noise_by_level"][name] = {"auroc": corruption_auroc(scores[rows], bad[rows]),
                                                 "rows": int((noisy & in_bin).sum())}
    return out


def learning_curve(run_dir: Path, every: int = 50) -> dict:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    aurocs = [(r["step"], r.get("auroc")) for r in records if r.get("auroc") is not None]
    first = next((step + 1 for step, a in aurocs if a >= 0.95), None)  # in outer steps done
    curve = {str(step + 1): a for step, a in aurocs if (step + 1) % every == 0}
    last = records[-1] if records else {}
    return {"steps": len(records), "first_step_auroc_ge_0.95": first, "probe_auroc_every_50": curve,
            "final_probe_auroc": aurocs[-1][1] if aurocs else None,
            "max_probe_auroc": max((a for _, a in aurocs), default=None),
            "final_outer_loss": last.get("outer_loss"), "final_inner_loss": last.get("inner_loss"),
            "max_meta_grad_norm": max((r["meta_grad_norm"] for r in records), default=None)}


def load_results() -> dict:
    return json.loads(RESULTS.read_text()) if RESULTS.exists() else {}


def record(name: str, entry: dict) -> None:
    results = load_results()
    results[name] = entry
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(results, indent=2) + "\n")


def evaluate(run_dir: Path, name: str, command: str | None, wall: float | None) -> dict:
    from drray.train.checkpoint import load_run_config

    curve = learning_curve(run_dir)
    entry = {"run_dir": str(run_dir), "command": command, "wall_seconds": wall,
             "sec_per_step": wall / curve["steps"] if wall and curve["steps"] else None,
             "config": load_run_config(run_dir), **curve, "final_rater": evaluate_rater(run_dir),
             "evaluated": time.strftime("%Y-%m-%d %H:%M")}
    record(name, entry)
    print_entry(name, entry)
    return entry


def fmt(value, spec=".3f") -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def print_entry(name: str, e: dict) -> None:
    f = e["final_rater"]
    print(f"{name}: {e['steps']} steps, {fmt(e['wall_seconds'], '.0f')} s ({fmt(e['sec_per_step'], '.2f')} s/step); "
          f"probe AUROC first >= 0.95 at step {e['first_step_auroc_ge_0.95']}, final {fmt(e['final_probe_auroc'])}")
    print(f"  whole train split ({f['rows']} rows, {f['corrupted_rows']} corrupted): AUROC {fmt(f['auroc'])}  "
          + "  ".join(f"{k} {fmt(v)}" for k, v in f["auroc_by_kind"].items()))
    if f["pixel_noise_by_level"]:
        print("  pixel noise by level: " + "  ".join(f"{k} {fmt(v['auroc'])} (n={v['rows']})"
                                                    for k, v in f["pixel_noise_by_level"].items()))
    print("  probe AUROC every 50 steps: " + " ".join(f"{k}:{v:.3f}" for k, v in e["probe_auroc_every_50"].items()))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.mnist_quality", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="meta-train into runs/bench-NAME, then evaluate")
    r.add_argument("name")
    r.add_argument("--config", default="configs/mnist.yaml")
    r.add_argument("--set", dest="overrides", action="append", default=[])
    e = sub.add_parser("eval", help="evaluate an existing run")
    e.add_argument("run_dir")
    e.add_argument("--name")
    e.add_argument("--wall-seconds", type=float)
    e.add_argument("--command", dest="run_command")
    sub.add_parser("table", help="print every recorded result")
    args = p.parse_args(argv)

    if args.cmd == "run":
        out = f"runs/bench-{args.name}"
        cmd = [sys.executable, "-m", "jobs.meta_train", "--config", args.config, "--out", out, "--overwrite"]
        for item in args.overrides:
            cmd += ["--set", item]
        env = dict(os.environ)
        env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        shown = " ".join(["python", *cmd[1:]])
        print(f"$ {shown}", flush=True)
        t0 = time.perf_counter()
        rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        wall = time.perf_counter() - t0
        if rc != 0:
            print(f"meta_train failed (rc {rc})", file=sys.stderr)
            return rc
        evaluate(ROOT / out, args.name, shown, wall)
    elif args.cmd == "eval":
        run_dir = Path(args.run_dir)
        evaluate(run_dir, args.name or run_dir.name, args.run_command, args.wall_seconds)
    else:
        for name, entry in load_results().items():
            print_entry(name, entry)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The curation study: does curating with a trained rater pay against what a practitioner would
use instead, in the setting they are in?

    python -m benchmarks.curation_study run [--cells NAME,...] [--seeds 8]   # hours; resumable
    python -m benchmarks.curation_study table                               # the table, from what exists

Each cell is a data set, a corruption and a held-out regime; its rater is meta-trained once
(python -m jobs.meta_train) and evaluated (python -m jobs.evaluate) against every method: baseline,
datarater, random, loss, loss_mid, loss_high, cleanlab (labelled data) and the oracle, at every
discard fraction, over --seeds paired seeds; a transfer cell evaluates the same rater with a larger
evaluation arch. Cells run in the order --cells gives (CELLS order by default); a finished step
(marked by its done.json) is skipped, so an interrupted study goes on where it stopped. The runs
land in runs/study/<cell>/; each finished cell's results, the table (table.md, summary.json) and one plot per cell in
benchmarks/results/curation_study/, and the table also in BENCHMARKS.md between the curation-study
markers.

Verdicts, paired over seeds ("beats": better by more than 2 standard errors):
  vs random   at every discard fraction, the datarater minus random drop; "not worse" unless the
              difference is below -2 SE;
  vs rivals   the datarater at its best fraction against the best of loss / loss_mid / loss_high
              (and cleanlab where it runs) at theirs;
  oracle gain (datarater - baseline) / (oracle - baseline) at the datarater's best fraction.
AUROC of the rater over the whole training split, overall and per corruption kind, is computed here
from the run's rater and config (the test split never enters it).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "runs" / "study"
RESULTS = ROOT / "benchmarks" / "results" / "curation_study"
BEGIN, END = "<!-- curation-study:begin -->", "<!-- curation-study:end -->"
IMAGE_METHODS = ["baseline", "datarater", "random", "loss", "loss_mid", "loss_high", "cleanlab", "oracle"]
TEXT_METHODS = [m for m in IMAGE_METHODS if m != "cleanlab"]  # cleanlab needs labels
REGIMES = {"clean": [], "clean-1000": ["data.heldout_size=1000"], "same": ["data.heldout=same"]}


@dataclass(frozen=True)
class Cell:
    name: str
    config: str  # relative to the repository
    regime: str  # a key of REGIMES
    discard: tuple[float, ...]
    methods: tuple[str, ...]
    meta_set: tuple[str, ...] = ()  # more --set for meta-training
    eval_set: tuple[str, ...] = ()  # more --set for the evaluation
    eval_arch: str = ""  # a transfer cell: the evaluation's arch (the rater of cell `rater_of`)
    rater_of: str = ""

    @property
    def rater_cell(self) -> str:
        return self.rater_of or self.name


MNIST_5K = ("data.max_train=5000", "population.lifetime=500")  # lifetime 500: the 5k rater learns faster (BENCHMARKS)
DIGITS_NEW_USER = ("data.source=digits", "data.corruption=[{kind: label_flip, fraction: 0.3}]", "meta.steps=300")

CELLS = [
    # The config a new user writes: digits, 30% label flips, 300 outer steps, the rest default.
    Cell("digits-flip30-new-user", "", "clean", (0.1, 0.3, 0.5), tuple(IMAGE_METHODS), DIGITS_NEW_USER,
         ("evaluate.steps=1000",)),
    Cell("text-same", "configs/text.yaml", "same", (0.3,), tuple(TEXT_METHODS)),
    Cell("text-clean", "configs/text.yaml", "clean", (0.3,), tuple(TEXT_METHODS)),
    Cell("text-clean-1000", "configs/text.yaml", "clean-1000", (0.3,), tuple(TEXT_METHODS)),
    # MNIST, 40% flips, 5,000 training rows: 1,000 steps are ~26 epochs, so a model can memorise the
    # flips and curation has something to gain (the baseline is ~10 points below the oracle).
    Cell("mnist5k-flip40-clean-1000", "configs/mnist.yaml", "clean-1000", (0.2, 0.4), tuple(IMAGE_METHODS), MNIST_5K),
    Cell("mnist5k-flip40-same", "configs/mnist.yaml", "same", (0.4,), tuple(IMAGE_METHODS), MNIST_5K),
    Cell("mnist5k-flip40-clean", "configs/mnist.yaml", "clean", (0.2, 0.4), tuple(IMAGE_METHODS), MNIST_5K),
    # The whole MNIST split (54k rows, ~2 epochs): all the data is already robust to the flips.
    Cell("mnist-flip40-clean-1000", "configs/mnist.yaml", "clean-1000", (0.2, 0.4), tuple(IMAGE_METHODS)),
    # Transfer: the rater of a small-clean-set cell, evaluated with a larger model than it meta-trained with.
    Cell("text-clean-1000-large", "configs/text.yaml", "clean-1000", (0.3,), ("baseline", "datarater", "random"),
         eval_arch="transformer_large", rater_of="text-clean-1000"),
    Cell("mnist5k-flip40-clean-1000-large", "configs/mnist.yaml", "clean-1000", (0.4,),
         ("baseline", "datarater", "random", "loss"), MNIST_5K, eval_arch="cnn_large",
         rater_of="mnist5k-flip40-clean-1000"),
]
CELL_BY_NAME = {cell.name: cell for cell in CELLS}


def config_args(cell: Cell) -> list[str]:
    args = ["--config", cell.config] if cell.config else []
    for item in REGIMES[cell.regime] + list(cell.meta_set):
        args += ["--set", item]
    return args


def _job(module: str, args: list[str], log: Path) -> float:
    """Run `python -m module args`, its output appended to `log`; seconds taken. A failure stops the study."""
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE"}
    started = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as stream:
        stream.write(f"$ python -m {module} {' '.join(args)}\n")
        stream.flush()
        code = subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, env=env, stdout=stream,
                              stderr=subprocess.STDOUT).returncode
    if code != 0:
        raise SystemExit(f"{module} failed (exit {code}); see {log}")
    return time.monotonic() - started


def _done(folder: Path) -> bool:
    return (folder / "done.json").is_file()


def _mark_done(folder: Path, seconds: float, command: list[str]) -> None:
    (folder / "done.json").write_text(json.dumps({"seconds": round(seconds, 1), "command": command,
                                                  "date": time.strftime("%Y-%m-%d")}) + "\n")


def run_cell(cell: Cell, seeds: int) -> None:
    rater_dir = OUT / cell.rater_cell / "rater"
    if not _done(rater_dir):
        owner = CELL_BY_NAME[cell.rater_cell]
        args = ["jobs.meta_train", *config_args(owner), "--out", str(rater_dir), "--overwrite"]
        print(f"[{cell.name}] meta-training {rater_dir}", flush=True)
        _mark_done(rater_dir, _job(args[0], args[1:], OUT / cell.rater_cell / "log.txt"), args)
    eval_dir = OUT / cell.name / "eval"
    if not _done(eval_dir):
        args = ["jobs.evaluate", *config_args(cell), "--rater", str(rater_dir), "--out", str(eval_dir),
                "--overwrite", "--seeds", str(seeds), "--discard", ",".join(map(str, cell.discard)),
                "--methods", ",".join(cell.methods)]
        args += [a for item in cell.eval_set for a in ("--set", item)]
        if cell.eval_arch:
            args += ["--arch", cell.eval_arch]
        print(f"[{cell.name}] evaluating into {eval_dir}", flush=True)
        _mark_done(eval_dir, _job(args[0], args[1:], OUT / cell.name / "log.txt"), args)


# ---------------------------------------------------------------------------------------------
# The table


def rater_aurocs(rater_dir: Path, cache: Path) -> dict:
    """The rater's AUROC over the whole training split of its run (rebuilt from the run's config):
    overall and per corruption kind (that kind against every clean row). Kept in `cache`."""
    if cache.is_file():
        return json.loads(cache.read_text())
    from drray.config import validate_config
    from drray.data.splits import build_splits
    from drray.evaluation.fresh import rater_scores
    from drray.train.checkpoint import load_rater, load_run_config
    from drray.train.metrics import corruption_auroc

    cfg = validate_config(load_run_config(rater_dir))
    train = build_splits(cfg.data, cfg.run.seed).train
    scores = rater_scores(load_rater(rater_dir)[0], train)
    aurocs = {"overall": corruption_auroc(scores, train.is_corrupted)}
    for kind in sorted(set(train.corruption[train.is_corrupted])):
        rows = (train.corruption == kind) | ~train.is_corrupted
        aurocs[kind] = corruption_auroc(scores[rows], train.is_corrupted[rows])
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps(aurocs, indent=1) + "\n")
    return aurocs


def keep_results(cell: Cell) -> None:
    """A finished cell's results.json and done.json, copied into RESULTS/<cell>/ (committed with
    the table, so that `table` rebuilds it without runs/)."""
    kept = RESULTS / cell.name
    kept.mkdir(parents=True, exist_ok=True)
    for name in ("results.json", "results.md", "done.json"):
        (kept / name).write_bytes((OUT / cell.name / "eval" / name).read_bytes())


def cell_summary(cell: Cell) -> dict | None:
    """The cell's figures from its results.json, or None when it has not been evaluated."""
    from drray.evaluation.experiment import METRICS, best_row, paired_difference

    if _done(OUT / cell.name / "eval") and not _done(RESULTS / cell.name):
        keep_results(cell)
    results_path = RESULTS / cell.name / "results.json"
    if not _done(results_path.parent):
        return None
    results = json.loads(results_path.read_text())
    runs, rows = results["runs"], results["rows"]
    metric = METRICS["text" if "text" in cell.name else "image"]
    best = best_row(rows, "datarater", metric)
    summary = {"cell": cell.name, "regime": cell.regime, "metric": metric.key, "arch": results["meta"].get("arch"),
               "seeds": results["meta"]["seeds"], "rows": rows,
               "aurocs": rater_aurocs(OUT / cell.rater_cell / "rater", RESULTS / cell.rater_cell / "aurocs.json"),
               "seconds": json.loads((results_path.parent / "done.json").read_text())["seconds"],
               "vs_random": {}, "vs_rivals": {}}
    for discard in cell.discard:
        if "random" in cell.methods:
            summary["vs_random"][str(discard)] = paired_difference(runs, ("datarater", discard), ("random", discard),
                                                                   metric)
    if best is not None:
        ours = ("datarater", best["discard"])
        summary["datarater_discard"] = best["discard"]
        for rival in [m for m in ("baseline", "loss", "loss_mid", "loss_high", "cleanlab") if m in cell.methods]:
            rival_best = best_row(rows, rival, metric)
            summary["vs_rivals"][rival] = {"discard": rival_best["discard"],
                                           **paired_difference(runs, ours, (rival, rival_best["discard"]), metric)}
        if "oracle" in cell.methods and "baseline" in cell.methods:
            summary["oracle_gain"] = oracle_gain(rows, best["discard"], metric)
    return summary


def oracle_gain(rows: list[dict], discard: float, metric) -> float:
    """(datarater - baseline) / (oracle - baseline) at one discard fraction, by the metric's means."""
    mean = {r["method"]: r[f"{metric.key}_mean"] for r in rows if r["discard"] in (discard, 0.0)}
    oracle = metric.gain(mean["oracle"], mean["baseline"])
    return metric.gain(mean["datarater"], mean["baseline"]) / oracle if oracle > 0 else math.nan


def _signed(d: dict, scale: float) -> str:
    if not d or not math.isfinite(d.get("diff", math.nan)):
        return "–"
    diff, se = scale * d["diff"], scale * d["se"]
    mark = " **beats**" if d["diff"] > 2 * d["se"] else (" *worse*" if d["diff"] < -2 * d["se"] else "")
    return f"{diff:+.3g} ± {se:.2g}{mark}"


def markdown(summaries: list[dict]) -> str:
    from drray.evaluation.experiment import METRICS

    lines = ["| cell | eval arch | seeds | datarater (best discard) | AUROC overall; per kind | vs random, each discard "
             "| vs baseline | vs loss / loss_mid / loss_high | vs cleanlab | oracle gain |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for s in summaries:
        metric = METRICS["text" if s["metric"] == "test_loss" else "image"]
        best = next((r for r in s["rows"] if r["method"] == "datarater" and r["discard"] == s.get("datarater_discard")),
                    None)
        ours = (f"{metric.scale * best[f'{metric.key}_mean']:.4g} ± {metric.scale * best[f'{metric.key}_se']:.2g} "
                f"({best['discard']:g})") if best else "–"
        kinds = "; ".join(f"{k} {v:.3f}" for k, v in s["aurocs"].items() if k != "overall")
        random = ", ".join(f"{d}: {_signed(v, metric.scale)}" for d, v in s["vs_random"].items())
        rivals = " / ".join(_signed(s["vs_rivals"].get(m, {}), metric.scale) for m in ("loss", "loss_mid", "loss_high"))
        gain = s.get("oracle_gain")
        lines.append(f"| {s['cell']} | {s['arch']} | {s['seeds']} | {ours} | {s['aurocs']['overall']:.3f}; {kinds} | "
                     f"{random} | {_signed(s['vs_rivals'].get('baseline', {}), metric.scale)} | {rivals} | "
                     f"{_signed(s['vs_rivals'].get('cleanlab', {}), metric.scale)} | "
                     f"{'–' if gain is None or not math.isfinite(gain) else f'{100 * gain:.0f}%'} |")
    plots = ", ".join(f"[{s['cell']}](benchmarks/results/curation_study/{s['cell']}.png)" for s in summaries)
    return "\n".join(lines) + f"\n\nPlots (each method's gain over the baseline, ± 2 SE): {plots}\n"


def plot_cell(summary: dict, path: Path) -> None:
    """Each method's gain over the baseline (mean ± 2 SE over seeds, unpaired) at each discard fraction."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from drray.evaluation.experiment import METRICS

    metric = METRICS["text" if summary["metric"] == "test_loss" else "image"]
    rows = summary["rows"]
    base = next((r for r in rows if r["method"] == "baseline"), None)
    if base is None:
        return
    others = [r for r in rows if r["method"] != "baseline"]
    labels = [f"{r['method']}\n{r['discard']:g}" for r in others]
    gains = [metric.scale * metric.gain(r[f"{metric.key}_mean"], base[f"{metric.key}_mean"]) for r in others]
    errors = [2 * metric.scale * r[f"{metric.key}_se"] for r in others]
    figure, axes = plt.subplots(figsize=(max(6, 0.6 * len(others)), 3.5))
    axes.bar(range(len(others)), gains, yerr=errors, color=["C3" if r["method"] == "datarater" else "C0" for r in others])
    axes.axhline(0, color="black", linewidth=0.8)
    limit = 4 * float(np.percentile(np.abs(gains), 75)) + 1e-9  # one collapsed method must not flatten the rest
    if max(abs(g) for g in gains) > limit:
        axes.set_ylim(-limit, limit)
        for i, gain in enumerate(gains):
            if abs(gain) > limit:
                axes.annotate(f"{gain:.3g}", (i, math.copysign(0.9 * limit, gain)), ha="center", fontsize=7)
    axes.set_xticks(range(len(others)), labels, fontsize=7)
    axes.set_ylabel(f"gain over baseline\n({metric.label})")
    axes.set_title(summary["cell"])
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def write_table() -> str:
    summaries = [s for s in (cell_summary(c) for c in CELLS) if s is not None]
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "summary.json").write_text(json.dumps(summaries, indent=1) + "\n")
    for s in summaries:
        plot_cell(s, RESULTS / f"{s['cell']}.png")
    table = markdown(summaries)
    (RESULTS / "table.md").write_text(table)
    bench = ROOT / "BENCHMARKS.md"
    text = bench.read_text()
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        bench.write_text(head + BEGIN + "\n" + table + END + rest.split(END, 1)[1])
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.curation_study", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=("run", "table"))
    parser.add_argument("--cells", help="comma-separated cell names, run in the order given (default: all)")
    parser.add_argument("--seeds", type=int, default=8, help="paired seeds per method and fraction (default 8)")
    args = parser.parse_args(argv)
    chosen = args.cells.split(",") if args.cells else list(CELL_BY_NAME)
    unknown = [n for n in chosen if n not in CELL_BY_NAME]
    if unknown:
        parser.error(f"--cells: unknown cell {unknown[0]!r}; cells: {', '.join(CELL_BY_NAME)}")
    if args.action == "run":
        for name in chosen:  # in the order given
            run_cell(CELL_BY_NAME[name], args.seeds)
            write_table()  # after every cell: the table grows as the study runs
    print(write_table())
    return 0


if __name__ == "__main__":
    sys.exit(main())

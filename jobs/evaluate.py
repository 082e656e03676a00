"""Evaluate a trained rater: does training on the data it keeps beat training on everything?

    python -m jobs.evaluate --config configs/mnist.yaml --rater RUN_DIR --discard 0.1,0.25,0.5 --seeds 5 --out DIR

Fresh inner models (the config's inner arch, optimizer, lr and batch size; --steps steps each)
are trained from scratch on the config's training split: on all of it (baseline), and with the
paper's batch rule driven by the rater's score (datarater), by a random score (random drop) and by
minus the loss under a model trained on the held-out split (loss heuristic), at every --discard
fraction; opt-in, the ground truth as the score (oracle, the bound of any selection). The runs
are Ray tasks (a local Ray is started when there is no cluster address). OUT gets results.json
(a row per method and fraction: test accuracy and test loss, each as mean, std, standard error;
n and, with ground truth, AUROC and precision of removal), results.md,
accuracy.png (test_loss.png on text, where the models are language models judged by their test
loss, lower is better) and scores.png.
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time

from drray.errors import ConfigError
from jobs.common import add_address_arg, add_config_args, job_parser, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("evaluate", __doc__)
    add_config_args(parser, "YAML config of the data and the inner model (every field has a default)")
    parser.add_argument("--rater", help="the --out directory of a meta-train run (needed for the datarater method)")
    parser.add_argument("--discard", help="comma-separated fractions in [0, 1) (default: evaluate.discard, 0.1,0.25,0.5)")
    parser.add_argument("--seeds", type=int, help="seeds per method and fraction (default: evaluate.seeds, 5)")
    parser.add_argument("--steps", type=int, help="training steps of every fresh model (default: evaluate.steps, 1000)")
    parser.add_argument("--methods", help="comma-separated subset of baseline,datarater,random,loss,oracle "
                                          "(default: all but oracle, the ground-truth upper bound)")
    parser.add_argument("--out", required=True, help="output directory (local path or URI)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in OUT")
    add_address_arg(parser)
    return parser.parse_args(argv)


EVALUATE_FLAGS = ("discard", "seeds", "steps", "methods")  # each sets evaluate.<same name>


def config_from_args(args: argparse.Namespace):
    from drray.config import load_config

    given = {flag: getattr(args, flag) for flag in EVALUATE_FLAGS if getattr(args, flag) is not None}
    for flag in ("discard", "methods"):  # comma lists, split here: the text never goes through YAML
        if flag in given:
            given[flag] = [item.strip() for item in given[flag].split(",") if item.strip()]
    if "discard" in given:
        given["discard"] = [_number("--discard", item) for item in given["discard"]]
    overrides = list(args.overrides) + [f"evaluate.{flag}={json.dumps(value)}" for flag, value in given.items()]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:  # name the flag the user typed, not the config key it sets
        match = re.match(r"^.*?: evaluate\.(\w+)(?:\.\d+)?: (.*)$", str(exc))
        if match is None or match.group(1) not in given:
            raise
        raise ConfigError(f"--{match.group(1)}: {match.group(2)}") from None
    if "datarater" in cfg.evaluate.methods and not args.rater:
        raise ConfigError("--rater RUN_DIR is needed for the datarater method (or leave it out of --methods)")
    return cfg


def _number(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a number; give comma-separated fractions, e.g. 0.1,0.25") from None


def check_rater_fits(meta: dict, rater_dir: str, splits, data_name: str) -> None:
    from drray.data.modality import describe_rows

    shape, classes = tuple(meta["row_shape"]), int(meta["num_classes"])
    if shape != tuple(splits.row_shape) or classes != splits.num_classes:
        raise ConfigError(
            f"rater {rater_dir} was trained on {describe_rows(shape)} with {classes} classes, but data "
            f"{data_name} has {describe_rows(splits.row_shape)} with {splits.num_classes} "
            "classes; evaluate it with the config it was meta-trained on")


def main(argv=None) -> int:
    return run_job(run, parse_args(argv))


def run(args: argparse.Namespace) -> str:
    from drray.storage import RunDir, check_local_folder

    cfg = config_from_args(args)
    check_local_folder(args.out, "--out")
    with RunDir(args.out, "--out") as out:
        return run_into(out, args, cfg)


def run_into(out, args: argparse.Namespace, cfg) -> str:
    from drray.data.splits import build_splits
    from drray.train.checkpoint import load_rater

    out.pull()
    if (out.local / "results.json").exists() and not args.overwrite:
        raise ConfigError(f"{out.display()} already holds an evaluation; pass --overwrite or choose another --out")
    rater = None
    if "datarater" in cfg.evaluate.methods:
        rater, meta = load_rater(args.rater)
    splits = build_splits(cfg.data, cfg.run.seed)
    if splits.train is None:
        raise ConfigError("evaluate needs the training set in memory; set data.stream=false")
    if "oracle" in cfg.evaluate.methods and not splits.train.is_corrupted.any():
        raise ConfigError("the oracle method needs ground truth (corrupted rows) in the training set; "
                          "add data.corruption or leave oracle out of --methods")
    if rater is not None:
        check_rater_fits(meta, args.rater, splits, cfg.data.source)
    from actors.cluster import connect

    started = connect(args.address)
    try:
        return evaluate(cfg, splits, rater, out)
    finally:
        if started:
            import ray

            ray.shutdown()


def evaluate(cfg, splits, rater, out) -> str:
    from actors.tasks import map_tasks
    from drray.evaluation import experiment as ev
    from drray.evaluation.report import plot_metric, plot_score_histograms, results_markdown, write_results
    from drray.models import choose_arch

    budget, settings = ev.Budget.from_config(cfg), cfg.evaluate
    metric = ev.metric_for(splits.train.rows)
    scores = {}
    if rater is not None:
        scores["datarater"] = ev.rater_scores(rater, splits.train)
    if "oracle" in settings.methods:
        scores["oracle"] = ev.oracle_scores(splits.train.is_corrupted)
    if "loss" in settings.methods:
        print("training the loss-heuristic model on the held-out split ...", flush=True)
        scores["loss"] = ev.loss_heuristic_scores(budget, splits, cfg.run.seed)
    specs = ev.run_specs(settings.methods, settings.discard, settings.seeds, cfg.run.seed)
    print(f"evaluate: {len(specs)} runs of {budget.steps} steps ({len(splits.train)} training examples)", flush=True)
    started = time.monotonic()
    shared = ev.shared_arrays(splits, scores, settings.max_eval_rows, cfg.run.seed)
    runs = map_tasks(ev.run_one, specs, (budget,), shared,
                     describe=lambda s, r: f"{s.method:<9} discard {s.discard:<4g} seed {s.seed}: "
                                           f"{metric.label} {metric.scale * r[metric.key]:.4g}")
    rows = ev.aggregate(runs)
    truth = splits.train.is_corrupted
    if truth.any():
        for row in rows:
            row_scores = scores.get(row["method"])
            if row["method"] == "random":
                row_scores = ev.random_scores(len(truth), cfg.run.seed)
            if row_scores is not None:
                row.update(ev.selection_quality(row_scores, truth, row["discard"]))
    verdicts = ev.verdicts(runs, rows, metric)
    meta = {"data": cfg.data.source, "arch": choose_arch(budget.arch, splits.row_shape), "steps": budget.steps,
            "batch_size": budget.batch_size, "optimizer": budget.optimizer, "lr": budget.lr, "seeds": settings.seeds,
            "seconds": round(time.monotonic() - started, 1), "config": cfg.to_dict()}
    out.local.mkdir(parents=True, exist_ok=True)
    write_results(out.local, rows, verdicts, runs, meta, metric)
    plot_metric(out.local / metric.plot, rows, metric)
    learned = {name: values for name, values in scores.items() if name != "oracle"}  # the oracle's is the truth
    if learned:
        plot_score_histograms(out.local / "scores.png", learned, splits.train.corruption)
    out.push()
    table = results_markdown(rows, verdicts, meta, metric)
    return f"{table}\nwritten: {out.display('results.json')}, results.md, {metric.plot}" + (
        ", scores.png" if learned else "") + f"  ({math.ceil(time.monotonic() - started)} s)"


if __name__ == "__main__":
    sys.exit(main())

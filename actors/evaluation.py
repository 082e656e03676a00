"""The evaluation study on Ray (jobs.evaluate): `evaluate_rater` checks everything, computes the
methods' scores once (cleanlab's cross-validation folds as Ray tasks), trains the fresh models as
Ray tasks (actors.tasks.map_tasks) and writes results.json, results.md and the plots. The study
itself is drray.evaluation.experiment (its fresh models: drray.evaluation.fresh; the rivals'
scores: drray.evaluation.rivals).
"""
from __future__ import annotations

import math
import time

from actors.cluster import ray_session
from actors.tasks import map_tasks
from drray.config import Config
from drray.data.splits import build_splits
from drray.errors import ConfigError
from drray.evaluation import experiment as ev
from drray.evaluation.fresh import Budget
from drray.evaluation.report import (
    plot_metric,
    plot_score_histograms,
    write_results,
)
from drray.storage import RunDir, check_local_folder
from drray.train.checkpoint import load_rater


def evaluate_rater(cfg: Config, out: str, rater_dir: str | None = None, overwrite: bool = False,
                   address: str | None = None) -> str:
    """Evaluate the rater of run `rater_dir` (needed for the datarater method) as `cfg` says, into
    `out` (a local folder or a URI); returns the report. Nothing is trained before the inputs,
    the rater and `out` are checked."""
    if "datarater" in cfg.evaluate.methods and not rater_dir:
        raise ConfigError("--rater RUN_DIR is needed for the datarater method (or leave it out of --methods)")
    check_local_folder(out, "--out")
    with RunDir(out, "--out") as run_dir:
        run_dir.pull()
        if (run_dir.local / "results.json").exists() and not overwrite:
            raise ConfigError(f"{run_dir.display()} already holds an evaluation; pass --overwrite or choose another --out")
        rater, rater_info = load_rater(rater_dir) if "datarater" in cfg.evaluate.methods else (None, None)
        splits = build_splits(cfg.data, cfg.run.seed)
        ev.check_setup(cfg, splits, rater_info, rater_dir)
        with ray_session(address):
            return _evaluate(cfg, splits, rater, run_dir)


def _evaluate(cfg: Config, splits, rater, out: RunDir) -> str:
    budget, settings = Budget.from_config(cfg), cfg.evaluate
    metric = ev.metric_for(splits.train.rows)
    scores = ev.method_scores(cfg, splits, rater, _map_folds)
    specs = ev.run_specs(settings.methods, settings.discard, settings.seeds, cfg.run.seed)
    print(f"evaluate: {len(specs)} runs of {budget.steps} steps ({len(splits.train)} training examples)", flush=True)
    started = time.monotonic()
    shared = ev.shared_arrays(splits, scores, settings.max_eval_rows, cfg.run.seed)
    runs = map_tasks(ev.run_one, specs, (budget,), shared,
                     describe=lambda s, r: f"{s.method:<9} discard {s.discard:<4g} seed {s.seed}: "
                                           f"{metric.label} {metric.scale * r[metric.key]:.4g}")
    rows = ev.aggregate(runs)
    ev.add_selection_quality(rows, scores, splits.train.is_corrupted, cfg.run.seed)
    verdicts = ev.verdicts(runs, rows, metric)
    checks = ev.selection_checks(runs, metric, ev.heldout_metric_for(splits.train.rows))
    warnings = ev.selection_warnings(checks, metric)
    meta = ev.describe_setup(cfg, budget, splits, time.monotonic() - started)
    out.local.mkdir(parents=True, exist_ok=True)
    table = write_results(out.local, rows, verdicts, runs, meta, metric, checks, warnings)
    plot_metric(out.local / metric.plot, rows, metric)
    learned = {name: values for name, values in scores.items() if name != "oracle"}  # the oracle's is the truth
    if learned:
        plot_score_histograms(out.local / "scores.png", learned, splits.train.corruption)
    out.push()
    return f"{table}\nwritten: {out.display('results.json')}, results.md, {metric.plot}" + (
        ", scores.png" if learned else "") + f"  ({math.ceil(time.monotonic() - started)} s)"


def _map_folds(fn, folds: list, args: tuple, shared: dict) -> list:
    """cleanlab's cross-validation folds (drray.evaluation.rivals.train_fold) as Ray tasks."""
    return map_tasks(fn, folds, args, shared,
                     describe=lambda fold, r: f"cleanlab fold {fold}: {len(r['index'])} rows predicted")

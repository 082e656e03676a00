"""The meta-training loop: outer steps of a population, metrics, checkpoints, the final report.

The loop is the same for the in-process Population and the Ray one: anything with step(),
step_count, rater_params, state_dict(), load_state_dict() and close().
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drray.config import Config
from drray.data.examples import DataSplits, to_tensors
from drray.data.splits import build_splits
from drray.errors import ConfigError, TrainingDiverged
from drray.meta.population import Population
from drray.models import build_inner, build_rater, choose_arch
from drray.models.warm_start import check_warm_start
from drray.storage import RunDir
from drray.train import checkpoint
from drray.train.metrics import MetricsLog, Progress, corruption_auroc
from drray.train.resume import RUN_FILES, check_resumable, check_run_output, clear_run


@dataclass
class RunSummary:
    out: RunDir
    steps: int
    auroc: float
    mean_score_clean: float
    mean_score_corrupted: float
    auroc_by_kind: dict
    mean_score_by_kind: dict  # corruption kind (and "clean") -> mean probe score
    heldout: dict | None = None  # heldout_summary: the held-out regime and split of the outer loss


class Prober:
    """Scores the fixed probe set (training examples with ground truth) with the current rater."""

    def __init__(self, cfg: Config, splits: DataSplits):
        self.arch = choose_arch(cfg.rater.arch, splits.row_shape)
        self.image_size = cfg.data.image_size  # scoring resizes encoded images as training did
        self.class_names = splits.class_names  # scoring refuses data that names its classes otherwise
        self.row_shape, self.num_classes = tuple(splits.row_shape), splits.num_classes
        self.rater = build_rater(self.arch, self.row_shape, self.num_classes)
        self.x, self.y = to_tensors(splits.probe)
        self.probe = splits.probe

    @torch.no_grad()
    def scores(self, params) -> np.ndarray:
        for p, value in zip(self.rater.parameters(), params):
            p.copy_(value)
        return torch.cat([self.rater(x, y) for x, y in zip(self.x.split(1024), self.y.split(1024))]).numpy()

    def auroc(self, params) -> float:
        return corruption_auroc(self.scores(params), self.probe.is_corrupted)

    def summary(self, params) -> dict:
        scores, bad = self.scores(params), self.probe.is_corrupted
        kinds = sorted(set(self.probe.corruption[bad]))
        by_kind = {k: corruption_auroc(scores[(self.probe.corruption == k) | ~bad],
                                       bad[(self.probe.corruption == k) | ~bad]) for k in kinds}
        mean_by_kind = {k: float(scores[self.probe.corruption == k].mean()) for k in kinds}
        if (~bad).any():
            mean_by_kind = {"clean": float(scores[~bad].mean()), **mean_by_kind}
        return {"auroc": corruption_auroc(scores, bad), "auroc_by_kind": by_kind,
                "mean_score_clean": float(scores[~bad].mean()) if (~bad).any() else math.nan,
                "mean_score_corrupted": float(scores[bad].mean()) if bad.any() else math.nan,
                "mean_score_by_kind": mean_by_kind}

    def rater_checkpoint(self, params) -> dict:
        weights = {name: value.detach().clone() for (name, _), value in zip(self.rater.named_parameters(), params)}
        return {"rater": weights, "arch": self.arch, "row_shape": list(self.row_shape),
                "num_classes": self.num_classes,
                "image_size": None if self.image_size is None else list(self.image_size),
                "class_names": None if self.class_names is None else list(self.class_names)}


def make_population(cfg: Config, splits: DataSplits) -> Population:
    if splits.train_path is None:
        train = lambda index: (splits.train.rows, splits.train.labels)  # noqa: E731 (shared, not copied)
    else:
        from drray.data.streams import BatchStream, local_parquet_epochs

        epochs = local_parquet_epochs(splits.train_path, cfg.inner.batch_size, splits.row_shape)
        train = lambda index: BatchStream(epochs, splits.row_shape, splits.num_classes,  # noqa: E731
                                          cfg.run.device, splits.train_path)
    return Population(cfg, train, (splits.heldout.rows, splits.heldout.labels), splits.row_shape,
                      splits.num_classes)


def meta_train(cfg: Config, resume: bool = False, overwrite: bool = False, population_factory=make_population,
               splits: DataSplits | None = None, on_record=None) -> RunSummary:
    """on_record(record, population, prober), if given, sees every step's metrics record once the
    step's checkpoint (if due) is written (a Tune trial reports from it)."""
    splits = splits or build_splits(cfg.data, cfg.run.seed)  # bad data fails here, before any output
    check_models_fit(cfg, splits)
    with RunDir(cfg.run.out, names=tuple(RUN_FILES)) as run_dir:
        population = open_run(cfg, splits, run_dir, resume, overwrite, population_factory)
        try:
            final = train(cfg, splits, run_dir, population, on_record)
        finally:
            population.close()  # its actors' resources are free for what runs next, on success or not
    return RunSummary(out=run_dir, steps=population.step_count, heldout=heldout_summary(cfg, splits), **final)


def heldout_summary(cfg: Config, splits: DataSplits) -> dict:
    """The held-out regime (data.heldout) and what the split holds: step 0's metrics line and the report."""
    heldout = splits.heldout
    return {"regime": cfg.data.heldout, "rows": len(heldout),
            "corrupted_fraction": float(heldout.is_corrupted.mean())}


def train(cfg: Config, splits: DataSplits, run_dir: RunDir, population, on_record) -> dict:
    """The outer steps from the population's step to meta.steps; the final summary of the rater."""
    out, start = run_dir.local, population.step_count
    prober = Prober(cfg, splits)
    has_truth = bool(splits.probe.is_corrupted.any())
    log, progress = MetricsLog(out, resume_step=start), Progress(cfg.meta.steps, start, cfg.run.log_every)
    try:
        for step in range(start, cfg.meta.steps):
            stats = population.step()
            if not (math.isfinite(stats.outer_loss) and math.isfinite(stats.meta_grad_norm)):
                raise TrainingDiverged(
                    f"step {step}: outer loss {stats.outer_loss} / meta-gradient norm {stats.meta_grad_norm} is "
                    f"not finite; the last good checkpoint is kept in {run_dir.display(checkpoint.CHECKPOINT_DIR)}"
                    " (lower meta.lr or inner.lr, or set meta.clip_norm)")
            record = {"step": step, "outer_loss": stats.outer_loss, "inner_loss": stats.inner_loss,
                      "meta_grad_norm": stats.meta_grad_norm, "resets": stats.resets, "replaced": stats.replaced}
            if step == 0:  # which held-out split the outer loss uses (nested: TensorBoard takes numbers only)
                record["heldout"] = heldout_summary(cfg, splits)
            if has_truth and ((step + 1) % cfg.run.auroc_every == 0 or step + 1 == cfg.meta.steps):
                record["auroc"] = prober.auroc(population.rater_params)
            log.write(record)
            progress.update(step, record)
            if (step + 1) % cfg.run.checkpoint_every == 0 or step + 1 == cfg.meta.steps:
                save(out, cfg, population, prober)
                run_dir.push()
            if on_record is not None:  # after the checkpoint: a Tune trial reports it with the step
                on_record(record, population, prober)
        return prober.summary(population.rater_params)
    finally:
        log.close()
        run_dir.push()


def open_run(cfg: Config, splits: DataSplits, run_dir: RunDir, resume: bool, overwrite: bool, population_factory):
    """The population, loaded from the checkpoint on resume. An earlier run that --overwrite
    replaces is removed only once the population exists (on Ray: its resources were checked)."""
    replace = check_run_output(run_dir, resume, overwrite)
    if resume:
        where = run_dir.display(checkpoint.CHECKPOINT_DIR)
        check_resumable(cfg, run_dir.local, where, splits.row_shape)
        state = checkpoint.load_state(run_dir.local)
        if state["step"] > cfg.meta.steps:
            raise ConfigError(f"--resume: the checkpoint in {where} is at step {state['step']}, past "
                              f"meta.steps={cfg.meta.steps}; set meta.steps above {state['step']} to train on")
    population = population_factory(without_warm_start(cfg) if resume else cfg, splits)
    try:
        if replace:
            clear_run(run_dir)
        run_dir.local.mkdir(parents=True, exist_ok=True)
        if resume:
            population.load_state_dict(state["population"])
    except BaseException:
        population.close()
        raise
    if resume:
        left = cfg.meta.steps - population.step_count
        print(f"resuming {run_dir.display()} at step {population.step_count}: "
              + (f"{left} of {cfg.meta.steps} outer steps to go" if left else "nothing left to train"), flush=True)
    return population


def without_warm_start(cfg: Config) -> Config:
    """A resumed run loads its rater from the checkpoint: warm-starting it again would be wasted."""
    return cfg.model_copy(update={"rater": cfg.rater.model_copy(update={"warm_start_steps": 0})})


def check_models_fit(cfg: Config, splits: DataSplits) -> None:
    """Build the rater and an inner model once, so an arch made for other data (an image model on
    text, or the reverse) is a one-line ConfigError before any output or worker exists."""
    with torch.random.fork_rng(devices=[]):  # leaves the global RNG as it was
        rater = build_rater(cfg.rater.arch, splits.row_shape, splits.num_classes)
        build_inner(cfg.inner.arch, splits.row_shape, splits.num_classes)
    check_warm_start(rater, choose_arch(cfg.rater.arch, splits.row_shape), cfg.rater.warm_start_steps)


def save(out: Path, cfg: Config, population, prober: Prober) -> None:
    state = {"step": population.step_count, "population": population.state_dict()}
    checkpoint.save_checkpoint(out, state, prober.rater_checkpoint(population.rater_params), cfg.to_dict())


def format_report(summary: RunSummary) -> str:
    lines = [f"meta-training finished: {summary.steps} outer steps"]
    if summary.heldout is not None:
        held = summary.heldout
        lines.append(f"  held-out split ({held['regime']}): {held['rows']} rows, "
                     f"{held['corrupted_fraction']:.1%} corrupted")
    if math.isfinite(summary.auroc):
        lines.append(f"  AUROC on the probe set (clean scored above corrupted): {summary.auroc:.3f}")
        width = max(12, *(len(kind) for kind in summary.auroc_by_kind))
        for kind, value in summary.auroc_by_kind.items():
            mean = summary.mean_score_by_kind.get(kind, math.nan)
            lines.append(f"    {kind:<{width}} {value:.3f}   mean score {mean:+.3f}")
        lines.append(f"  mean score: clean {summary.mean_score_clean:+.3f}, corrupted {summary.mean_score_corrupted:+.3f}")
    else:
        lines.append(f"  mean score of the probe set: {summary.mean_score_clean:+.3f} (no ground truth: no AUROC)")
    out = summary.out
    lines += [f"  rater:       {out.display(checkpoint.CHECKPOINT_DIR + '/rater.pt')}",
              f"  checkpoint:  {out.display(checkpoint.CHECKPOINT_DIR)}",
              f"  metrics:     {out.display('metrics.jsonl')}",
              f"  tensorboard: tensorboard --logdir {out.display('tb')}"]
    return "\n".join(lines)

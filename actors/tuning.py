"""Ray Tune over meta-training (jobs.tune, entry `tune_search`): each trial is a whole
meta-training (a RayPopulation) whose worker actors live in the trial's own placement group, so
concurrent trials never starve one another and a trial starts only when all of its workers fit."""
from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import numpy as np
import ray
import yaml
from ray import tune
from ray.tune.schedulers import ASHAScheduler

from actors.cluster import how_many_fit, node_resources, ray_session, worker_gpus
from drray.config import validate_config
from drray.errors import ConfigError, DrrayError
from drray.storage import check_local_folder, is_uri, remove_local
from drray.train.search_space import (
    TuneSpec,
    check_trial_models,
    format_table,
    load_tune_spec,
    trial_config,
    trial_rows,
)

SEARCH_FILES = ("tune", "trials.md", "best.yaml")  # what a search writes in --out (best-run/ is the user's)


def tune_search(spec_path: str, out: str, overwrite: bool = False, address: str | None = None) -> str:
    """Run the search of the tune spec at `spec_path` into the local folder `out`; returns the
    report (the trials' table and the best config). The spec, its data and archs, `out` and the
    cluster's room for the largest trial are checked before any trial starts."""
    spec, base_tree = load_tune_spec(spec_path)
    base = trial_config(base_tree, {}, "unused")
    if spec.metric == "auroc" and not base.data.corruption and base.data.source != "parquet":
        raise ConfigError(f"{spec_path}: metric auroc needs ground truth (data.corruption); use metric: heldout_loss")
    try:  # the data and arch settings come from the spec (its set: or base:), so name it
        check_trial_models(spec, base_tree)
    except DrrayError as exc:
        raise type(exc)(f"{spec_path}: {exc}") from None
    if is_uri(out):
        raise ConfigError(f"--out {out}: a search writes to a local folder (Ray Tune's storage_path); "
                          "give a local path")
    check_local_folder(out, "--out")
    folder = Path(out)
    replace = out_holds_a_search(folder)
    if replace and not overwrite:
        raise ConfigError(f"{folder} already holds a search; pass --overwrite or choose another --out")
    with ray_session(address):
        gpus = worker_gpus(base)
        check_trials_fit(spec, base_tree, gpus)
        if replace:  # only now that the search can run; only the search's own files
            for name in SEARCH_FILES:
                remove_local(folder / name)
        folder.mkdir(parents=True, exist_ok=True)
        results = run_search(spec, base_tree, folder / "tune", "search", gpus)
        return summarize(spec, base_tree, results, folder)


def out_holds_a_search(out: Path) -> bool:
    """Whether --out holds an earlier search (which --overwrite replaces). Anything else in it is
    refused, --overwrite or not: a search never deletes files it did not write."""
    if not out.exists():
        return False
    others = sorted(p.name for p in out.iterdir() if p.name not in SEARCH_FILES + ("best-run",))
    if others:
        raise ConfigError(f"--out {out} holds files a search did not write ({', '.join(others[:3])}); "
                          "give a new or empty folder")
    return any((out / name).exists() for name in SEARCH_FILES)


def summarize(spec: TuneSpec, base_tree: dict, results, out: Path) -> str:
    """Write trials.md and best.yaml (the best trial's config) into `out`; the report."""
    rows = trial_rows(spec, results)
    table = format_table(rows)
    (out / "trials.md").write_text(f"# Tune search: metric {spec.metric} ({spec.mode})\n\n{table}\n")
    done = [r for r in rows if r[spec.metric] is not None]
    if not done:
        raise DrrayError(f"no trial reported {spec.metric}; see the trial logs under {out / 'tune' / 'search'}")
    best = {k: done[0][k] for k in spec.space}
    best_cfg = trial_config(base_tree, best, str(out / "best-run"))
    (out / "best.yaml").write_text(yaml.safe_dump(best_cfg.to_dict(), sort_keys=False))
    return (f"{table}\n\nbest: {', '.join(f'{k}={v}' for k, v in best.items())} ({spec.metric} "
            f"{done[0][spec.metric]:.4f})\n  config: {out / 'best.yaml'} (python -m jobs.meta_train --config "
            f"{out / 'best.yaml'})\n  trials: {out / 'trials.md'}, Tune results: {out / 'tune' / 'search'}")


def trial_bundles(spec: TuneSpec, cfg, gpus_per_worker: float) -> list[dict]:
    """The trial's process, then one bundle per inner-model actor (the Scheduler and the
    ParameterServer ask for no CPU)."""
    worker = {"CPU": cfg.resources.cpus_per_worker}
    if gpus_per_worker:
        worker["GPU"] = gpus_per_worker
    return [{"CPU": spec.trial_cpus}] + [dict(worker) for _ in range(cfg.population.size)]


def largest_trial(spec: TuneSpec, base_tree: dict) -> dict:
    """The most CPUs any trial asks for: population.size and cpus_per_worker at their largest."""
    sizes = _extremes(spec, base_tree, "population.size")
    cpus = _extremes(spec, base_tree, "resources.cpus_per_worker")
    return {"population.size": max(sizes), "resources.cpus_per_worker": max(cpus)}


def _extremes(spec: TuneSpec, base_tree: dict, key: str) -> list:
    if key in spec.space:
        return spec.space[key].probes()
    section, name = key.split(".")
    return [base_tree.get(section, {}).get(name, getattr(getattr(validate_config({}), section), name))]


def check_trials_fit(spec: TuneSpec, base_tree: dict, gpus_per_worker: float) -> None:
    """A trial whose placement group can never fit would wait forever: refuse it up front."""
    cfg = trial_config(base_tree, largest_trial(spec, base_tree), "unused")
    need = {}
    for bundle in trial_bundles(spec, cfg, gpus_per_worker):
        for name, amount in bundle.items():
            need[name] = need.get(name, 0.0) + amount
    have = ray.cluster_resources()
    largest = (f"the largest trial (population.size={cfg.population.size}, resources.cpus_per_worker="
               f"{cfg.resources.cpus_per_worker:g}, trial_cpus={spec.trial_cpus:g})")
    for name, amount in need.items():
        if amount > have.get(name, 0.0) + 1e-9:
            raise ConfigError(f"{largest} needs {amount:g} {name}s but the cluster has {have.get(name, 0.0):g}; "
                              "lower them in the tune spec")
    trial, *workers = trial_bundles(spec, cfg, gpus_per_worker)
    if not bundles_fit(node_resources(), trial, workers[0], len(workers)):
        raise ConfigError(f"{largest}: no way to place its bundles on the cluster's nodes (a bundle runs on one "
                          "node); lower them in the tune spec")


def bundles_fit(nodes: list[dict], trial: dict, worker: dict, workers: int) -> bool:
    """Whether some node holds the trial's bundle with the workers' bundles fitting in what is
    left there and on the other nodes (each bundle on one node)."""
    for k, node in enumerate(nodes):
        if how_many_fit([node], trial) < 1:
            continue
        rest = {name: node.get(name, 0.0) - trial.get(name, 0.0) for name in node}
        if how_many_fit(nodes[:k] + [rest] + nodes[k + 1:], worker) >= workers:
            return True
    return False


def make_trainable(spec: TuneSpec, base_tree: dict, gpus_per_worker: float):
    driver_dir = os.getcwd()

    def meta_train_trial(params: dict) -> None:
        if os.path.isdir(driver_dir):  # Ray Tune starts a trial in its own directory: relative paths
            os.chdir(driver_dir)       # (a default data dir, data.pattern) mean what they mean to the driver
        from actors.population import RayPopulation
        from drray.train.loop import meta_train

        cfg = trial_config(base_tree, params, str(Path(tune.get_context().get_trial_dir()) / "run"))
        # A checkpoint at every report: a trial retried after a failure (its node lost) goes on from
        # its last report, which its files came with.
        cfg.run.checkpoint_every = spec.report_every
        run_dir = Path(cfg.run.out)
        resumed = restore_run(tune.get_checkpoint(), run_dir)
        metric = _metric_fn(spec, cfg)

        def report(record, population, prober):
            step = record["step"] + 1
            if step % spec.report_every == 0 or step == cfg.meta.steps:
                tune.report({spec.metric: metric(population, prober, record), "step": step,
                             "outer_loss": record["outer_loss"], "resumed_from_step": resumed},
                            checkpoint=tune.Checkpoint.from_directory(str(run_dir)))

        meta_train(cfg, resume=resumed > 0, overwrite=resumed == 0, population_factory=RayPopulation,
                   on_record=report)

    def resources(params: dict):
        cfg = trial_config(base_tree, params, "unused")
        return tune.PlacementGroupFactory(trial_bundles(spec, cfg, gpus_per_worker))

    return tune.with_resources(meta_train_trial, resources)


def restore_run(checkpoint, run_dir: Path) -> int:
    """The step a retried trial continues from: its last reported run files copied into run_dir
    (whatever the failed attempt left there after them is dropped); 0 for a first attempt."""
    if checkpoint is None:
        return 0
    shutil.rmtree(run_dir, ignore_errors=True)
    with checkpoint.as_directory() as saved:
        shutil.copytree(saved, run_dir)
    from drray.train.checkpoint import load_state

    return int(load_state(run_dir)["step"])


def _metric_fn(spec: TuneSpec, cfg):
    if spec.metric == "auroc":
        return lambda population, prober, record: record.get("auroc", prober.auroc(population.rater_params))
    import torch

    from drray.data.splits import build_splits
    from drray.evaluation.fresh import (
        Budget,
        per_example_losses,
        rater_scores,
        train_fresh,
    )

    splits = build_splits(cfg.data, cfg.run.seed)
    budget = Budget.from_config(cfg)

    def heldout_loss(population, prober, record):
        with torch.no_grad():
            for p, value in zip(prober.rater.parameters(), population.rater_params):
                p.copy_(value)
        scores = rater_scores(prober.rater, splits.train)
        model = train_fresh(budget, splits.train.rows, splits.train.labels, splits.num_classes,
                            cfg.run.seed, scores, spec.discard)
        return float(np.mean(per_example_losses(model, splits.heldout.rows, splits.heldout.labels)))

    return heldout_loss


def param_space(spec: TuneSpec) -> dict:
    make = {"grid": tune.grid_search, "choice": tune.choice, "uniform": lambda v: tune.uniform(*v),
            "loguniform": lambda v: tune.loguniform(*v), "randint": lambda v: tune.randint(*v)}
    return {key: make[domain.kind](list(domain.values)) for key, domain in spec.space.items()}


def run_search(spec: TuneSpec, base_tree: dict, storage: Path, name: str, gpus_per_worker: float):
    """Runs the search; returns Tune's ResultGrid. Results land in storage/name."""
    base = trial_config(base_tree, {}, "unused")
    max_reports = math.ceil(base.meta.steps / spec.report_every)
    if "meta.steps" in spec.space:
        max_reports = max(math.ceil(v / spec.report_every) for v in spec.space["meta.steps"].probes())
    scheduler = ASHAScheduler(time_attr="training_iteration", max_t=max_reports,
                              grace_period=min(spec.asha.grace_period, max_reports),
                              reduction_factor=spec.asha.reduction_factor)
    tuner = tune.Tuner(
        make_trainable(spec, base_tree, gpus_per_worker),
        param_space=param_space(spec),
        tune_config=tune.TuneConfig(metric=spec.metric, mode=spec.mode, scheduler=scheduler,
                                    num_samples=spec.num_samples, max_concurrent_trials=spec.max_concurrent),
        run_config=tune.RunConfig(name=name, storage_path=str(storage.resolve()), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=spec.max_failures),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=2)),
    )
    return tuner.fit()

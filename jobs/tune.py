"""Search meta-training knobs (inner.T, population.size, meta.lr, ...) with Ray Tune.

    python -m jobs.tune --spec configs/tune_digits.yaml --out runs/tune-digits

Each trial is a meta-training whose inner-model actors live in the trial's placement group
(sized from its population.size and resources); ASHA stops weak trials early. The metric is the
probe AUROC (where the data has ground truth) or the held-out loss of a fresh model trained with
the trial's rater (metric: heldout_loss). OUT gets Tune's results (OUT/tune/search, nothing in
the home directory), trials.md (the table, also printed) and best.yaml: the best trial's config,
ready for `python -m jobs.meta_train --config OUT/best.yaml`.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import yaml

from drray.errors import ConfigError, DrrayError
from drray.storage import check_local_folder, is_uri, remove_local
from jobs.common import add_address_arg, job_parser, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("tune", __doc__)
    parser.add_argument("--spec", required=True, help="tune spec YAML (configs/tune_*.yaml)")
    parser.add_argument("--out", required=True, help="output directory (local)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier search in OUT")
    add_address_arg(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run_job(run, parse_args(argv))


def run(args: argparse.Namespace) -> str:
    from drray.train.search_space import check_trial_models, load_tune_spec, trial_config

    spec, base_tree = load_tune_spec(args.spec)
    base = trial_config(base_tree, {}, "unused")
    if spec.metric == "auroc" and not base.data.corruption and base.data.source != "parquet":
        raise ConfigError(f"{args.spec}: metric auroc needs ground truth (data.corruption); use metric: heldout_loss")
    try:  # the data and arch settings come from the spec (its set: or base:), so name it
        check_trial_models(spec, base_tree)
    except DrrayError as exc:
        raise type(exc)(f"{args.spec}: {exc}") from None
    if is_uri(args.out):
        raise ConfigError(f"--out {args.out}: a search writes to a local folder (Ray Tune's storage_path); "
                          "give a local path")
    check_local_folder(args.out, "--out")
    out = Path(args.out)
    replace = out_holds_a_search(out)
    if replace and not args.overwrite:
        raise ConfigError(f"{out} already holds a search; pass --overwrite or choose another --out")
    from actors.cluster import connect, worker_gpus
    from actors.tuning import check_trials_fit, run_search

    started = connect(args.address)
    try:
        gpus = worker_gpus(base)
        check_trials_fit(spec, base_tree, gpus)
        if replace:  # only now that the search can run; only the search's own files
            for name in SEARCH_FILES:
                remove_local(out / name)
        out.mkdir(parents=True, exist_ok=True)
        results = run_search(spec, base_tree, out / "tune", "search", gpus)
        return summarize(spec, base_tree, results, out)
    finally:
        if started:
            import ray

            ray.shutdown()


SEARCH_FILES = ("tune", "trials.md", "best.yaml")  # what a search writes in --out (best-run/ is the user's)


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


def trial_rows(spec, results) -> list[dict]:
    rows = []
    for result in results:
        metrics = result.metrics or {}
        value = metrics.get(spec.metric)
        rows.append({**{k: result.config.get(k) for k in spec.space}, spec.metric: value,
                     "steps": metrics.get("step"), "reports": metrics.get("training_iteration"),
                     "status": "error" if result.error else "ok"})
    rows.sort(key=lambda r: (r[spec.metric] is None, -(r[spec.metric] or 0) if spec.mode == "max"
                             else (r[spec.metric] if r[spec.metric] is not None else math.inf)))
    return rows


def format_table(rows: list[dict]) -> str:
    keys = list(rows[0]) if rows else []
    cell = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(cell(r[k]) for k in keys) + " |" for r in rows]
    return "\n".join(lines)


def summarize(spec, base_tree: dict, results, out: Path) -> str:
    from drray.train.search_space import trial_config

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


if __name__ == "__main__":
    sys.exit(main())

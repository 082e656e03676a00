"""Meta-train a DataRater.

    python -m jobs.meta_train --config configs/digits.yaml [--set inner.T=4 ...] [--out DIR] [--resume]

The population runs on Ray (one actor per inner model): on the cluster at --address or
RAY_ADDRESS (as under `ray job submit`), else on a local Ray started for the run. With
--set run.backend=local it runs in this process instead.
"""
from __future__ import annotations

import argparse
import json
import sys
from contextlib import ExitStack

from drray.config import load_config
from jobs.common import add_address_arg, add_config_args, job_parser, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("meta-train", __doc__)
    add_config_args(parser)
    parser.add_argument("--out", help="output directory (overrides run.out; default runs/default, or the config's)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT")
    add_address_arg(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    from drray.train.loop import format_report

    return run_job(run, parse_args(argv), format_report)


def run(args):
    overrides = args.overrides + ([f"run.out={json.dumps(args.out)}"] if args.out else [])  # a path, never YAML
    cfg = load_config(args.config, overrides)
    from drray.storage import check_local_folder
    from drray.train.loop import meta_train

    check_local_folder(cfg.run.out, "--out" if args.out else "run.out")

    if cfg.run.backend == "local":
        return meta_train(cfg, resume=args.resume, overwrite=args.overwrite)
    from actors.cluster import cluster_address, ray_session
    from actors.population import RayPopulation

    cluster_address(args.address)  # an unreachable address fails before any output is written
    with ExitStack() as ray_held:
        def ray_population(cfg, splits):  # called after the data and the output dir are checked
            ray_held.enter_context(ray_session(args.address))
            return RayPopulation(cfg, splits)

        return meta_train(cfg, resume=args.resume, overwrite=args.overwrite, population_factory=ray_population)


if __name__ == "__main__":
    sys.exit(main())

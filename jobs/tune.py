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
import sys

from jobs.common import add_address_arg, job_parser, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("tune", __doc__)
    parser.add_argument("--spec", required=True, help="tune spec YAML (configs/tune_*.yaml)")
    parser.add_argument("--out", required=True, help="output directory (local)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier search in OUT")
    add_address_arg(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> str:
    from actors.tuning import tune_search

    return tune_search(args.spec, args.out, args.overwrite, args.address)


def main(argv=None) -> int:
    return run_job(run, parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())

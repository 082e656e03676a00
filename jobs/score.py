"""Score a Parquet data set with a trained rater: adds a float32 `score` column, keeps every other.

    python -m jobs.score --rater RUN_DIR --input PATH --output PATH [--actors N] [--threads T]
                         [--batch-size 16384] [--address ADDR] [--on-bad-row fail|drop] [--overwrite]

Ray Data reads the Parquet (a file or a folder of shards; local or any pyarrow filesystem URI),
a pool of rater actors scores it block by block (on GPUs where the cluster has them) and the
result is written as Parquet files under --output, streaming: memory stays bounded whatever the
input's size. The input is checked against the rater, and --output, before any work.
A `score` column already in the input is replaced. Row order is not kept; `id` identifies rows
(an input without one gets it: each row's position, its files sorted by path). The class names
(the rater's, else the input's) go into the output's schema metadata; an input that names its
classes otherwise than the rater is refused.
"""
from __future__ import annotations

import argparse
import sys

from actors.score_pipeline import DEFAULT_BATCH_SIZE, format_summary, score_dataset
from drray.curation.scoring import BAD_ROW_MODES
from jobs.common import add_address_arg, job_parser, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("score", __doc__)
    parser.add_argument("--rater", required=True,
                        help="the --out directory of a meta-train run (its checkpoint/rater.pt)")
    parser.add_argument("--input", required=True, help="Parquet file or folder of shards (path or URI)")
    parser.add_argument("--output", required=True, help="folder for the scored Parquet shards (path or URI)")
    parser.add_argument("--actors", type=int, default=None,
                        help="rater actors (default: one per GPU where the cluster has GPUs, else one per CPU but "
                             "at most one per input file)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per actor (default: 1 on GPUs, else the cluster's CPUs shared among the actors)")
    parser.add_argument("--batch-size", type=int, default=DEFAULT_BATCH_SIZE,
                        help="about this many rows per block: what an actor scores at once, and one output file "
                             f"(default {DEFAULT_BATCH_SIZE})")
    add_address_arg(parser)
    parser.add_argument("--on-bad-row", choices=BAD_ROW_MODES, default="fail",
                        help="rows that cannot be scored (null/undecodable image, NaN pixels, label out of range): "
                             "stop with an error naming the row (fail, the default) or leave them out (drop)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    return parser.parse_args(argv)


def run(args: argparse.Namespace):
    return score_dataset(args.rater, args.input, args.output, actors=args.actors, threads=args.threads,
                         batch_size=args.batch_size, on_bad_row=args.on_bad_row, overwrite=args.overwrite,
                         address=args.address)


def main(argv=None) -> int:
    return run_job(run, parse_args(argv), format_summary)


if __name__ == "__main__":
    sys.exit(main())

"""Filter a scored data set: drop a fraction of the rows, the lowest-scored first.

    python -m jobs.filter --input SCORED --discard 0.25 --mode quantile|sample [--stratify label|none] --output PATH

SCORED is Parquet (a file or a directory of them, local or a pyarrow filesystem URI) with a
float `score` column, as jobs.score writes it. Modes (docs/design.md, "Using a trained rater"):

  quantile  drop exactly the globally lowest fraction: the threshold comes from the score column
            alone; rows tied at it are kept smallest id first, so exactly
            round_half_up((1 - discard) * rows) rows are kept.
  sample    keep each row with P_accept(CDF(score)), the chance that the paper's batch rule
            (draw N = B / (1 - discard), keep the top B; B = --batch-size) keeps it; the CDF comes
            from a seeded sample of --cdf-sample scores, and each row's draw from (--seed, id), so
            the result is the same however the data is split into files or blocks.

--stratify label applies the mode within each class of the `label` column, so each class keeps its
share and a score that runs higher for some classes cannot starve the others: quantile keeps
class_quotas(class counts, round_half_up((1 - discard) * rows)) rows of each class (its highest,
exactly that many in all); sample takes each class's CDF from its own scores (up to --cdf-sample of
them), so each class keeps B / N of itself in expectation. --stratify none drops the lowest scores
whatever their class. Left out: label where the input has labels of more than one class (images),
none otherwise (text).

The driver reads only the narrow columns (score, id, is_corrupted, label: ~21 bytes a row); the rows
stream once through Ray Data, so memory stays bounded by a few blocks. OUTPUT gets the kept rows
(every column; usually in input order, not promised across files) as part-NNNNN-0.parquet and
summary.json: rows in and kept, the threshold (per class when stratified) or CDF sample size,
where the input has labels the fraction of each class kept (kept_fraction_by_class) and, where it
has is_corrupted, the AUROC, the fraction of corrupted rows removed and the precision of removal.
A local OUTPUT is renamed into place at the end (a failed run leaves an earlier one as it was);
for a URI, summary.json is written last and marks a complete output.
"""
from __future__ import annotations

import argparse
import sys

from drray.curation.scored_input import MODES, STRATIFY, format_summary
from jobs.common import add_address_arg, job_parser, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("filter", __doc__)
    parser.add_argument("--input", required=True, help="scored Parquet file or directory (local path or URI)")
    parser.add_argument("--discard", type=float, required=True, help="fraction of rows to drop, in [0, 1)")
    parser.add_argument("--mode", choices=MODES, default="quantile",
                        help="quantile: exact global threshold; sample: the batch rule's P_accept (default quantile)")
    parser.add_argument("--output", required=True, help="output directory (local path or URI)")
    parser.add_argument("--stratify", choices=STRATIFY, default=None,
                        help="label: each class keeps its share; none: the lowest scores go whatever their class "
                             "(default: label where the input has labels of more than one class, else none)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="sample mode: B of the batch rule it matches, N = B / (1 - discard) (default 128)")
    parser.add_argument("--cdf-sample", type=int, default=100_000,
                        help="sample mode: scores sampled to estimate the CDF (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="sample mode: seed of the CDF sample and the draws (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    add_address_arg(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> dict:
    from actors.filter_pipeline import filter_dataset

    return filter_dataset(args.input, args.output, args.discard, args.mode, batch_size=args.batch_size,
                          cdf_sample=args.cdf_sample, seed=args.seed, overwrite=args.overwrite, address=args.address,
                          stratify=args.stratify)


def main(argv=None) -> int:
    return run_job(run, parse_args(argv), format_summary)


if __name__ == "__main__":
    sys.exit(main())

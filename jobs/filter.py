"""Filter a scored data set: drop a fraction of the rows, the lowest-scored first.

    python -m jobs.filter --input SCORED --discard 0.25 --mode quantile|sample --output PATH

SCORED is Parquet (a file or a directory of them, local or a pyarrow filesystem URI) with a
float `score` column, as jobs.score writes it. Modes (DESIGN.md, "Using a trained rater"):

  quantile  drop exactly the globally lowest fraction: the threshold comes from the score column
            alone; rows tied at it are kept smallest id first, so exactly
            round_half_up((1 - discard) * rows) rows are kept.
  sample    keep each row with P_accept(CDF(score)), the chance that the paper's batch rule
            (draw N = B / (1 - discard), keep the top B; B = --batch-size) keeps it; the CDF comes
            from a seeded sample of --cdf-sample scores, and each row's draw from (--seed, id), so
            the result is the same however the data is split into files or blocks.

The driver reads only the narrow columns (score, id, is_corrupted: ~13 bytes a row); the rows
themselves stream once through Ray Data (read_parquet -> filter -> write_parquet), so memory
stays bounded by a few blocks. OUTPUT gets the kept rows (every column; usually in input order,
which Ray Data 2.60's Parquet reader does not promise across files) as
part-NNNNN-0.parquet (NNNNN: the write task) and summary.json: rows in and kept, the threshold
or CDF sample size and, where the input has is_corrupted, the AUROC, the fraction of corrupted
rows removed and the precision of removal. A local OUTPUT is written beside its destination
and renamed into place at the end (a failed run leaves an earlier OUTPUT as it was); for a URI,
summary.json is written last and marks a complete output.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

import numpy as np

from drray import seeds
from drray.errors import ConfigError, DataError
from jobs.common import add_address_arg, job_parser, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("filter", __doc__)
    parser.add_argument("--input", required=True, help="scored Parquet file or directory (local path or URI)")
    parser.add_argument("--discard", type=float, required=True, help="fraction of rows to drop, in [0, 1)")
    parser.add_argument("--mode", choices=["quantile", "sample"], default="quantile",
                        help="quantile: exact global threshold; sample: the batch rule's P_accept (default quantile)")
    parser.add_argument("--output", required=True, help="output directory (local path or URI)")
    parser.add_argument("--batch-size", type=int, default=128,
                        help="sample mode: B of the batch rule it matches, N = B / (1 - discard) (default 128)")
    parser.add_argument("--cdf-sample", type=int, default=100_000,
                        help="sample mode: scores sampled to estimate the CDF (default 100000)")
    parser.add_argument("--seed", type=int, default=0, help="sample mode: seed of the CDF sample and the draws (default 0)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    add_address_arg(parser)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run_job(run, parse_args(argv), format_summary)


def check_args(args: argparse.Namespace) -> None:
    if not (math.isfinite(args.discard) and 0.0 <= args.discard < 1.0):
        raise ConfigError(f"--discard must be in [0, 1), got {args.discard:g}")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.cdf_sample < 1:
        raise ConfigError(f"--cdf-sample must be >= 1, got {args.cdf_sample}")


def open_input(args: argparse.Namespace):
    """(fs, files, schema) of the scored input, its columns checked."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from drray.storage import parquet_files

    fs, _, files = parquet_files(args.input, "a scored Parquet file or folder (the output of jobs.score)")
    try:
        schema = pads.dataset(files, filesystem=fs, format="parquet").schema
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{args.input}: cannot read as Parquet ({exc})".replace("\n", " ")) from None
    if "score" not in schema.names:
        raise DataError(f"{args.input}: no score column (columns: {', '.join(schema.names)}); score it first "
                        "with jobs.score")
    if not pa.types.is_floating(schema.field("score").type):
        raise DataError(f"{args.input}: score must be a float column, got {schema.field('score').type}")
    has_id = "id" in schema.names and pa.types.is_integer(schema.field("id").type)
    if args.mode == "sample" and not has_id:
        raise DataError(f"{args.input}: sample mode draws each row's fate from its id; needs an integer id "
                        "column (DESIGN.md schema)")
    return fs, files, schema


def read_narrow(fs, files, schema, location: str) -> dict:
    """score (and id, is_corrupted where present) of every row, as numpy."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.dataset as pads

    columns = ["score"] + [c for c in ("id", "is_corrupted") if c in schema.names]
    if "id" in columns and not pa.types.is_integer(schema.field("id").type):
        columns.remove("id")
    table = pads.dataset(files, filesystem=fs, format="parquet").to_table(columns=columns)
    if table.num_rows == 0:
        raise DataError(f"{location}: no rows to filter")
    score = table.column("score")
    if score.null_count:
        raise DataError(f"{location}: {score.null_count} rows have no score (null); re-score them or drop them")
    narrow = {"score": score.to_numpy()}
    bad = np.isnan(narrow["score"])
    if bad.any():
        raise DataError(f"{location}: {int(bad.sum())} rows have a NaN score; re-score them or drop them")
    if "id" in columns:
        narrow["id"] = pc.fill_null(table.column("id"), 0).to_numpy()
        if len(np.unique(narrow["id"])) != len(narrow["id"]):
            raise DataError(f"{location}: ids repeat; every row needs a unique id (DESIGN.md schema)")
    if "is_corrupted" in columns:
        narrow["is_corrupted"] = np.asarray(pc.fill_null(table.column("is_corrupted"), False), dtype=bool)
    return narrow


def make_rule(args: argparse.Namespace, narrow: dict):
    """The keep rule (picklable, `.keep(scores, ids)`) and what the summary says about it."""
    from drray.curation.filtering import SampleRule, quantile_cut
    from drray.seeds import seeded_rng

    scores = narrow["score"]
    if args.mode == "quantile":
        cut = quantile_cut(scores, args.discard, narrow.get("id"))
        info = {"threshold": cut.threshold if math.isfinite(cut.threshold) else None, "tie_id": cut.tie_id,
                "ties_at_threshold": int((scores == cut.threshold).sum())}
        return cut, info
    count = min(args.cdf_sample, len(scores))
    rows = np.sort(seeded_rng(args.seed, seeds.FILTER_CDF_SAMPLE).choice(len(scores), count, replace=False))
    rule = SampleRule(scores[rows], args.discard, args.batch_size, args.seed)
    info = {"cdf_sample_size": count, "batch_size": args.batch_size, "draw_size": rule.draw_size,
            "seed": args.seed, "expected_rows_kept": float(rule.probability(scores).sum())}
    return rule, info


def keep_rows(table, rule):
    """The rows of a pyarrow batch that `rule` keeps (a Ray Data map_batches function)."""
    import pyarrow as pa

    scores = table.column("score").to_numpy()
    ids = table.column("id").to_numpy() if "id" in table.column_names else None
    return table.filter(pa.array(rule.keep(scores, ids), type=pa.bool_()))


def _part_names():
    from ray.data.datasource import FilenameProvider

    class PartNames(FilenameProvider):
        def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
            return f"part-{task_index:05d}.parquet"

    return PartNames()


def stream_filter(fs, files, rule, out_fs, out_path: str) -> None:
    """One streaming pass: read every column, keep the rule's rows, write Parquet."""
    import ray

    context = ray.data.DataContext.get_current()
    preserve = context.execution_options.preserve_order
    # Rows in read order, which is input order on most runs; one test run under Ray 2.60's
    # ListFiles -> ReadFiles read still wrote them in another order, so the kept rows (not their
    # order) are what the job guarantees.
    context.execution_options.preserve_order = True
    try:
        dataset = ray.data.read_parquet(files, filesystem=fs)
        kept = dataset.map_batches(keep_rows, batch_format="pyarrow", fn_kwargs={"rule": rule})
        # OVERWRITE: the target is new and empty (a fresh staging directory, or a URI cleared just
        # before), and this mode lets the files have stable names (APPEND wants a random write id).
        kept.write_parquet(out_path, filesystem=out_fs, filename_provider=_part_names(),
                           mode=ray.data.SaveMode.OVERWRITE)
    finally:
        context.execution_options.preserve_order = preserve


def count_rows(fs, path: str) -> int:
    import pyarrow.dataset as pads
    import pyarrow.fs as pafs

    selector = pafs.FileSelector(path, recursive=True, allow_not_found=True)
    files = [e.path for e in fs.get_file_info(selector) if e.type == pafs.FileType.File and e.path.endswith(".parquet")]
    return pads.dataset(files, filesystem=fs, format="parquet").count_rows() if files else 0


def run(args: argparse.Namespace) -> dict:
    from drray.curation.filtering import summarize
    from drray.storage import check_output, check_separate, replacing_output

    check_args(args)
    fs, files, schema = open_input(args)
    check_separate(args.output, args.input)
    out_fs, out_path = check_output(args.output, args.overwrite)
    narrow = read_narrow(fs, files, schema, args.input)
    rule, info = make_rule(args, narrow)
    kept = rule.keep(narrow["score"], narrow.get("id"))
    summary = {"mode": args.mode, "discard": args.discard, "input": args.input, "output": args.output,
               **summarize(narrow["score"], kept, narrow.get("is_corrupted")), **info}
    print(f"{args.input}: {summary['rows_in']} rows in {len(files)} file(s); {args.mode} keeps "
          f"{summary['rows_kept']}", flush=True)

    from actors.cluster import connect

    started = connect(args.address)
    try:
        with replacing_output(out_fs, out_path) as target:  # Ray Data creates it
            stream_filter(fs, files, rule, out_fs, target)
            written = count_rows(out_fs, target)
            if written != summary["rows_kept"]:  # the driver and the workers applied the same rule
                raise RuntimeError(f"wrote {written} rows but the rule keeps {summary['rows_kept']}")
            if written == 0:  # Ray Data writes no file for no rows; readers still want the schema
                import pyarrow.parquet as pq

                out_fs.create_dir(target, recursive=True)
                with out_fs.open_output_stream(f"{target.rstrip('/')}/part-00000-0.parquet") as stream:
                    pq.write_table(schema.empty_table(), stream)
            payload = json.dumps(summary, indent=2) + "\n"
            with out_fs.open_output_stream(f"{target.rstrip('/')}/summary.json") as stream:  # last: marks completion
                stream.write(payload.encode())
    finally:
        if started:
            import ray

            ray.shutdown()
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"kept {summary['rows_kept']} of {summary['rows_in']} rows ({summary['mode']}, discard "
             f"{summary['discard']:g}) -> {summary['output']}"]
    if summary.get("threshold") is not None:
        ties = summary["ties_at_threshold"]
        lines.append(f"threshold {summary['threshold']:.6g}" + (f" ({ties} rows tie at it; kept smallest id first)"
                                                                if ties > 1 else ""))
    if summary.get("corrupted_rows") is not None:
        def show(value, fmt="{:.3f}"):
            return "n/a" if value is None else fmt.format(value)

        lines.append(f"corrupted rows: {summary['corrupted_rows']}, removed {summary['corrupted_removed']} "
                     f"({show(summary['corrupted_removed_fraction'], '{:.1%}')}); precision of removal "
                     f"{show(summary['removal_precision'], '{:.1%}')}; AUROC {show(summary['auroc'])}")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())

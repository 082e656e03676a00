"""Score a Parquet data set with a trained rater: adds a float32 `score` column, keeps every other.

    python -m jobs.score --rater RUN_DIR --input PATH --output PATH [--actors N] [--threads T]
                         [--batch-size 16384] [--address ADDR] [--on-bad-row fail|drop] [--overwrite]

Ray Data reads the Parquet (a file or a folder of shards; local or any pyarrow filesystem URI),
a pool of rater actors scores it block by block (on GPUs where the cluster has them) and the
result is written as Parquet files under --output, streaming: memory stays bounded whatever the
input's size. The input is checked against the rater, and --output, before any work.
A `score` column already in the input is replaced. Row order is not kept; `id` identifies rows.
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from dataclasses import dataclass

from drray.curation.scoring import BAD_ROW_MODES
from drray.errors import ConfigError, DataError, DrrayError
from jobs.common import add_address_arg, job_parser, run_job

DEFAULT_BATCH_SIZE = 16384


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


@dataclass
class ScoreSummary:
    rows_in: int
    rows_out: int
    seconds: float
    output: str
    actors: int
    device: str

    @property
    def dropped(self) -> int:
        return self.rows_in - self.rows_out

    @property
    def rows_per_s(self) -> float:
        return self.rows_out / self.seconds if self.seconds > 0 else float("nan")


def main(argv=None) -> int:
    return run_job(run, parse_args(argv), format_summary)


def format_summary(summary: ScoreSummary) -> str:
    dropped = f"; dropped {summary.dropped} bad rows" if summary.dropped else ""
    actors = f"{summary.actors} actor{'s' if summary.actors != 1 else ''} on {summary.device}"
    return (f"scored {summary.rows_out} rows in {summary.seconds:.1f} s ({summary.rows_per_s:,.0f} rows/s, "
            f"{actors}){dropped} -> {summary.output}")


def read_rater(run_dir: str):
    """(rater.pt bytes, metadata), checked to rebuild into this version's rater."""

    from drray.train.checkpoint import CHECKPOINT_DIR, load_rater, run_dir_of

    _, info = load_rater(run_dir)
    return (run_dir_of(run_dir) / CHECKPOINT_DIR / "rater.pt").read_bytes(), info


def open_input(location: str):
    """(pyarrow filesystem, pyarrow dataset of its .parquet files); DataError when it is not
    Parquet. Other files in a folder (a filter's summary.json) are left out."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from drray.storage import parquet_files

    fs, _, files = parquet_files(location)
    try:
        dataset = pads.dataset(files, filesystem=fs, format="parquet")
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{location}: cannot read as Parquet ({exc}); check the file".replace("\n", " ")) from None
    return fs, dataset


@dataclass
class Plan:
    """How the pipeline runs on this cluster."""
    actors: int
    threads: int  # torch threads per actor
    actor_cpus: float  # logical CPUs requested per actor (and per read, which is fused into it)
    actor_gpus: float
    write_cpus: float


def plan_resources(actors: int | None, threads: int | None, files: int) -> Plan:
    """Actors and the resources they request. Requests must fit the cluster (one that cannot fit
    waits forever); what an actor requests does not limit the torch threads it runs.

    On CPUs the default is one single-threaded actor per CPU (at most one per input file, as
    each file is read inside one actor): on 2 cores two 1-thread actors score faster than one
    2-thread actor (BENCHMARKS.md)."""
    import ray

    total = ray.cluster_resources()
    cpus, gpus = total.get("CPU", 1.0), int(total.get("GPU", 0))
    reserve = min(1.0, cpus / 2)  # for the write tasks
    if gpus:
        actors = actors or gpus
        if actors > gpus:
            raise ConfigError(f"--actors {actors} asks for a GPU each but the cluster has {gpus}; "
                              f"pass --actors {gpus} or fewer")
        return Plan(actors, threads or 1, min(1.0, max(0.1, (cpus - reserve) / actors)), 1.0, reserve)
    actors = actors or max(1, min(int(cpus), files))
    threads = threads or max(1, int(cpus) // actors)
    return Plan(actors, threads, min(float(threads), max(0.1, (cpus - reserve) / actors)), 0.0, reserve)


def bytes_per_row(dataset) -> float:
    """Uncompressed bytes a row of the input takes, from the first file's Parquet footer."""
    try:
        metadata = dataset.get_fragments().__next__().metadata
        sizes = [metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)]
        return max(1.0, sum(sizes) / max(1, metadata.num_rows))
    except (StopIteration, OSError, AttributeError):
        return 1024.0


def run(args) -> ScoreSummary:
    import pyarrow.dataset as pads

    from drray.curation.scoring import check_schema, input_columns
    from drray.storage import check_output, check_separate, replacing_output
    from drray.train.checkpoint import run_dir_of

    for flag, value in (("--actors", args.actors), ("--threads", args.threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: need at least 1")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size}: need at least 1")
    blob, info = read_rater(args.rater)
    in_fs, dataset = open_input(args.input)
    check_schema(dataset.schema, info, args.input)  # columns and types first: head() needs the columns
    check_schema(dataset.schema, info, args.input, dataset.head(1, columns=input_columns(info)))
    rows_in = dataset.count_rows()  # from the Parquet footers
    if rows_in == 0:
        raise DataError(f"{args.input}: no rows to score")
    check_separate(args.output, args.input)
    check_separate(args.output, str(run_dir_of(args.rater)), "--rater")
    out_fs, out_path = check_output(args.output, args.overwrite)

    from actors.cluster import connect

    started = connect(args.address)
    try:
        plan = plan_resources(args.actors, args.threads, len(dataset.files))
        block_bytes = max(2**16, int(args.batch_size * bytes_per_row(dataset)))
        begin = time.perf_counter()
        try:  # a failed job leaves no half-written data set, and a local old output as it was
            with replacing_output(out_fs, out_path) as target:
                pipeline((dataset.files, in_fs), (target, out_fs), blob, args, plan, block_bytes)
        except Exception as exc:
            error = _drray_error(exc)
            if error is not None:  # Ray Data appends lines about retries to the message: keep ours
                raise type(error)(str(error).splitlines()[0]) from None
            raise
        seconds = time.perf_counter() - begin
    finally:
        if started:
            import ray

            ray.shutdown()
    rows_out = pads.dataset(out_path, filesystem=out_fs, format="parquet").count_rows()
    device = "GPU" if plan.actor_gpus else f"CPU, {plan.threads} thread{'s' if plan.threads != 1 else ''} each"
    return ScoreSummary(rows_in, rows_out, seconds, args.output, plan.actors, device)


class _QuietUserErrors(logging.Filter):
    """Ray Data logs an actor's exception (with a stack trace) before raising it; the job reports
    it itself, in one line for a DrrayError, with the traceback for anything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


QUIET_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


def pipeline(source, sink, blob: bytes, args, plan: Plan, block_bytes: int) -> None:
    """read_parquet -> a pool of RaterScorer actors -> write_parquet, streaming.

    Tuned for throughput (BENCHMARKS.md): the read is fused into the actors (Read->MapBatches runs
    in the actor: no read tasks, no copy of the input through the object store), which needs
    map_batches(batch_size=None), the read's resources equal to the actors', and one read task
    per file (no block splitting); the batch size is then set through the read's block size.
    (With GPUs the read stays in tasks: the actors' GPU request differs from the read's.)
    The legacy Parquet datasource decodes list columns ~3x cheaper than the v2 one here and
    needs no file-listing task."""
    import ray

    from actors.score_pipeline import RaterScorer

    (files, in_fs), (out_path, out_fs) = source, sink
    context = ray.data.DataContext.get_current()
    settings = {
        "raise_original_map_exception": True,  # an actor's DataError, not Ray Data's UserCodeException
        "use_datasource_v2": False,
        "target_max_block_size": block_bytes,  # blocks of about --batch-size rows
    }
    saved = {name: getattr(context, name) for name in settings}
    quiet = _QuietUserErrors()
    for name in QUIET_LOGGERS:
        logging.getLogger(name).addFilter(quiet)
    try:
        for name, value in settings.items():
            setattr(context, name, value)
        dataset = ray.data.read_parquet(files, filesystem=in_fs, num_cpus=plan.actor_cpus,
                                        override_num_blocks=len(files))
        scored = dataset.map_batches(
            RaterScorer,
            fn_constructor_args=(blob, args.on_bad_row, plan.threads, args.input),
            compute=ray.data.ActorPoolStrategy(size=plan.actors),
            batch_format="pyarrow",
            batch_size=None,  # whole blocks: lets the read fuse into the actors
            num_cpus=plan.actor_cpus,
            num_gpus=plan.actor_gpus,
        )
        # One file per block: bundling blocks into bigger files (min_rows_per_file) costs a copy and
        # leaves a longer write after the last block is scored.
        scored.write_parquet(out_path, filesystem=out_fs, ray_remote_args={"num_cpus": plan.write_cpus})
    finally:
        for name, value in saved.items():
            setattr(context, name, value)
        for name in QUIET_LOGGERS:
            logging.getLogger(name).removeFilter(quiet)


def _drray_error(exc: BaseException):
    """The DrrayError an actor raised, found inside Ray's wrappers (RayTaskError, UserCodeException)."""
    seen = set()
    stack = [exc]
    while stack:
        current = stack.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        inner = getattr(current, "cause", None)  # RayTaskError(DataError) is a DataError too, its text a traceback
        if isinstance(current, DrrayError) and not isinstance(inner, DrrayError):
            return current
        stack += [current.__context__, current.__cause__, inner]
    return None


if __name__ == "__main__":
    sys.exit(main())

"""Scoring a Parquet data set on Ray (jobs.score): `score_dataset` checks the input against the
rater and the output, then streams read_parquet -> a pool of RaterScorer actors -> write_parquet.
Each actor scores blocks with drray.curation.scoring.score_table.

An input whose rows must say where they come from (no id column; local Hugging Face images, whose
relative paths are read from their file's folder) is read file by file instead
(`positioned_batches`): each row gets its position as id, and its file's folder.
"""
from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pyarrow as pa
import torch

from drray.curation.scoring import (CHUNK_ROWS, check_class_names, check_schema, find_bad_rows, for_scoring,
                                    input_columns, needs_positions, open_input, positioned_batches, read_rater,
                                    score_table)
from drray.data.images import has_image_paths, with_image_dir
from drray.data.parquet import class_names_from_schema, with_class_names
from drray.errors import ConfigError, DataError, DrrayError
from drray.train.checkpoint import rater_from_bytes

DEFAULT_BATCH_SIZE = 16384


def _gpus_given() -> bool:
    """Whether Ray gave this actor a GPU. CUDA being visible is not enough: Ray 2.60 leaves
    CUDA_VISIBLE_DEVICES as it was for an actor given none, which would then use GPU 0 unreserved."""
    import ray

    return ray.is_initialized() and bool(ray.get_gpu_ids()) and torch.cuda.is_available()


class RaterScorer:
    """The callable class of a Ray Data actor pool: builds the rater once per actor, then
    scores pyarrow batches with `score_table`. On the GPU when the actor was given one."""

    def __init__(self, rater_blob: bytes, on_bad_row: str = "fail", threads: Optional[int] = None,
                 where: str = "input", chunk_rows: int = CHUNK_ROWS, class_names=None):
        """rater_blob: the bytes of a rater.pt (the actors may not see the run directory);
        class_names: written into each scored block's schema metadata (None: none written)."""
        if threads:
            torch.set_num_threads(int(threads))  # Ray leaves one thread to an actor of num_cpus <= 1
        rater, info = rater_from_bytes(rater_blob)
        self.device = torch.device("cuda" if _gpus_given() else "cpu")
        self.rater = for_scoring(rater, self.device)
        self.row_shape, self.num_classes = tuple(info["row_shape"]), int(info["num_classes"])
        self.image_size = info.get("image_size")  # encoded images are resized as in training
        self.on_bad_row, self.where, self.chunk_rows = on_bad_row, where, chunk_rows
        self.class_names = class_names
        self.reported = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        scored = score_table(self.rater, batch, self.row_shape, self.num_classes, self.on_bad_row,
                             self.where, self.device, self.chunk_rows, self.image_size)
        dropped = batch.num_rows - scored.num_rows
        if dropped and self.reported < 3:  # the total is reported by the job; a few examples here
            self.reported += 1
            _, reason = find_bad_rows(batch, self.row_shape, self.num_classes, self.image_size)
            print(f"warning: {self.where}: dropped {dropped} bad rows of a batch ({reason})", file=sys.stderr)
        return with_class_names(scored, self.class_names)


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


def format_summary(summary: ScoreSummary) -> str:
    dropped = f"; dropped {summary.dropped} bad rows" if summary.dropped else ""
    actors = f"{summary.actors} actor{'s' if summary.actors != 1 else ''} on {summary.device}"
    return (f"scored {summary.rows_out} rows in {summary.seconds:.1f} s ({summary.rows_per_s:,.0f} rows/s, "
            f"{actors}){dropped} -> {summary.output}")


def score_dataset(rater: str, input: str, output: str, actors: Optional[int] = None, threads: Optional[int] = None,
                  batch_size: int = DEFAULT_BATCH_SIZE, on_bad_row: str = "fail", overwrite: bool = False,
                  address: Optional[str] = None) -> ScoreSummary:
    """Score `input` (Parquet, a file or a folder; path or URI) with the rater of run `rater` into
    `output`. Everything is checked (the input against the rater, the output) before Ray starts;
    a failed run leaves no half-written output and a local old one as it was."""
    import pyarrow.dataset as pads

    from actors.cluster import ray_session
    from drray.storage import check_output, check_separate, replacing_output
    from drray.train.checkpoint import run_dir_of

    for flag, value in (("--actors", actors), ("--threads", threads)):
        if value is not None and value < 1:
            raise ConfigError(f"{flag} {value}: need at least 1")
    if batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: need at least 1")
    blob, info = read_rater(rater)
    in_fs, dataset = open_input(input)
    check_schema(dataset.schema, info, input)  # columns and types first: head() needs the columns
    positions = input_positions(dataset, in_fs, batch_size)
    first = dataset.head(1, columns=input_columns(info, dataset.schema))
    if positions is not None and positions.folders[0] is not None:
        first = with_image_dir(first, positions.folders[0])
    check_schema(dataset.schema, info, input, first)
    check_class_names(dataset.schema, info, input, rater)
    class_names = info.get("class_names") or class_names_from_schema(dataset.schema)
    rows_in = dataset.count_rows()  # from the Parquet footers
    if rows_in == 0:
        raise DataError(f"{input}: no rows to score")
    check_separate(output, input)
    check_separate(output, str(run_dir_of(rater)), "--rater")
    out_fs, out_path = check_output(output, overwrite)

    with ray_session(address):
        plan = plan_resources(actors, threads, len(dataset.files))
        block_bytes = max(2**16, int(batch_size * bytes_per_row(dataset)))
        begin = time.perf_counter()
        try:
            with replacing_output(out_fs, out_path) as target:
                pipeline((dataset.files, in_fs, positions), (target, out_fs), (blob, on_bad_row, input, class_names),
                         plan, block_bytes)
        except Exception as exc:
            error = _drray_error(exc)
            if error is not None:  # Ray Data appends lines about retries to the message: keep ours
                raise type(error)(str(error).splitlines()[0]) from None
            raise
        seconds = time.perf_counter() - begin
    rows_out = pads.dataset(out_path, filesystem=out_fs, format="parquet").count_rows()
    device = "GPU" if plan.actor_gpus else f"CPU, {plan.threads} thread{'s' if plan.threads != 1 else ''} each"
    return ScoreSummary(rows_in, rows_out, seconds, output, plan.actors, device)


@dataclass
class Positions:
    """Where each input file's rows come from, for an input read file by file (needs_positions)."""
    first_ids: list[int]  # per file: the id of its first row (used where the input has no id column)
    folders: list[Optional[str]]  # per file: its folder, for relative image paths (None: not read)
    rows_per_batch: int


def input_positions(dataset, filesystem, rows_per_batch: int) -> Optional[Positions]:
    """Positions of the input's files (ids from the footers' row counts, files in sorted order), or
    None where its rows need none. Relative image paths are read from local folders only."""
    import pyarrow.fs as pafs

    local = isinstance(filesystem, pafs.LocalFileSystem)
    if not needs_positions(dataset.schema, local):
        return None
    counts = [fragment.count_rows() for fragment in dataset.get_fragments()]  # in dataset.files' order
    first_ids = [sum(counts[:i]) for i in range(len(counts))]
    folders = [str(Path(file).parent) if local and has_image_paths(dataset.schema) else None for file in dataset.files]
    return Positions(first_ids, folders, rows_per_batch)


def read_positioned(files: pa.Table, filesystem, rows_per_batch: int):
    """Ray Data map_batches: rows (file, first_id, folder) -> the files' rows with their ids and
    folders (drray.curation.scoring.positioned_batches)."""
    for file, first_id, folder in zip(*(files.column(name).to_pylist() for name in ("file", "first_id", "folder"))):
        yield from positioned_batches(file, filesystem, first_id, rows_per_batch, folder or None)


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


class _QuietUserErrors(logging.Filter):
    """Ray Data logs an actor's exception (with a stack trace) before raising it; the job reports
    it itself, in one line for a DrrayError, with the traceback for anything else."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


QUIET_LOGGERS = ("ray.data.exceptions", "ray.data._internal.execution.streaming_executor_state")


def pipeline(source, sink, scorer_args: tuple, plan: Plan, block_bytes: int) -> None:
    """read_parquet -> a pool of RaterScorer actors -> write_parquet, streaming. source: (files,
    their filesystem, Positions or None: read_input); scorer_args: (rater.pt bytes, on_bad_row, the
    input's name for messages, the class names the output's schema metadata records).

    Tuned for throughput (BENCHMARKS.md): the read is fused into the actors (Read->MapBatches runs
    in the actor: no read tasks, no copy of the input through the object store), which needs
    map_batches(batch_size=None), the read's resources equal to the actors', and one read task
    per file (no block splitting); the batch size is then set through the read's block size.
    (With GPUs the read stays in tasks: the actors' GPU request differs from the read's.)
    The legacy Parquet datasource decodes list columns ~3x cheaper than the v2 one here and
    needs no file-listing task."""
    import ray

    (files, in_fs, positions), (out_path, out_fs) = source, sink
    blob, on_bad_row, where, class_names = scorer_args
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
        dataset = read_input(files, in_fs, positions, plan)
        scored = dataset.map_batches(
            RaterScorer,
            fn_constructor_args=(blob, on_bad_row, plan.threads, where),
            fn_constructor_kwargs={"class_names": class_names},
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


def read_input(files: list[str], in_fs, positions: Optional[Positions], plan: Plan):
    """The input as a Ray Dataset: read_parquet, or file by file with positions (read_positioned)."""
    import ray

    if positions is None:
        return ray.data.read_parquet(files, filesystem=in_fs, num_cpus=plan.actor_cpus, override_num_blocks=len(files))
    items = [{"file": file, "first_id": first_id, "folder": folder or ""}
             for file, first_id, folder in zip(files, positions.first_ids, positions.folders)]
    return ray.data.from_items(items, override_num_blocks=len(files)).map_batches(
        read_positioned, fn_kwargs={"filesystem": in_fs, "rows_per_batch": positions.rows_per_batch},
        batch_format="pyarrow", batch_size=None, num_cpus=plan.actor_cpus)


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

"""jobs.score's Ray Data pipeline: read_parquet -> a pool of RaterScorer actors -> write_parquet,
streaming. Each actor scores blocks with drray.curation.scoring.score_table.
"""
from __future__ import annotations

import sys
from typing import Optional

import pyarrow as pa
import torch

from drray.curation.scoring import CHUNK_ROWS, find_bad_rows, for_scoring, score_table
from drray.train.checkpoint import rater_from_bytes


def _gpus_given() -> bool:
    """Whether Ray gave this actor a GPU. CUDA being visible is not enough: Ray 2.60 leaves
    CUDA_VISIBLE_DEVICES as it was for an actor given none, which would then use GPU 0 unreserved."""
    import ray

    return ray.is_initialized() and bool(ray.get_gpu_ids()) and torch.cuda.is_available()


class RaterScorer:
    """The callable class of a Ray Data actor pool: builds the rater once per actor, then
    scores pyarrow batches with `score_table`. On the GPU when the actor was given one."""

    def __init__(self, rater_blob: bytes, on_bad_row: str = "fail", threads: Optional[int] = None,
                 where: str = "input", chunk_rows: int = CHUNK_ROWS):
        """rater_blob: the bytes of a rater.pt (the actors may not see the run directory)."""
        if threads:
            torch.set_num_threads(int(threads))  # Ray leaves one thread to an actor of num_cpus <= 1
        rater, info = rater_from_bytes(rater_blob)
        self.device = torch.device("cuda" if _gpus_given() else "cpu")
        self.rater = for_scoring(rater, self.device)
        self.row_shape, self.num_classes = tuple(info["row_shape"]), int(info["num_classes"])
        self.on_bad_row, self.where, self.chunk_rows = on_bad_row, where, chunk_rows
        self.reported = 0

    def __call__(self, batch: pa.Table) -> pa.Table:
        scored = score_table(self.rater, batch, self.row_shape, self.num_classes, self.on_bad_row,
                             self.where, self.device, self.chunk_rows)
        dropped = batch.num_rows - scored.num_rows
        if dropped and self.reported < 3:  # the total is reported by the job; a few examples here
            self.reported += 1
            _, reason = find_bad_rows(batch, self.row_shape, self.num_classes)
            print(f"warning: {self.where}: dropped {dropped} bad rows of a batch ({reason})", file=sys.stderr)
        return scored

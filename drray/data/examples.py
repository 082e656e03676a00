"""Examples in memory: `ExampleSet` (rows, labels and ground truth as numpy columns) and
`DataSplits` (train / heldout / test / probe). A row is a uint8 image [H, W] or an int16
byte-token sequence [L] (drray.data.tokenizer); `row_shape` is (H, W) or (L,).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch

from drray.data.modality import modality_of_array
from drray.data.tokenizer import TOKEN_DTYPE, encode_batch
from drray.errors import DataError


@dataclass
class ExampleSet:
    ids: np.ndarray  # int64 [N], unique within the whole data set
    rows: np.ndarray  # uint8 images [N, H, W] or int16 token sequences [N, L]
    labels: np.ndarray  # int64 [N], in [0, num_classes)
    is_corrupted: np.ndarray  # bool [N]: ground truth for experiments, never given to models
    corruption: np.ndarray  # object [N]: "" for clean, else the corruption kind
    corruption_level: np.ndarray  # float32 [N]: how strongly each row was corrupted, 0 when clean
    num_classes: int

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> "ExampleSet":
        """Rows by integer index or boolean mask (a copy)."""
        return ExampleSet(
            self.ids[index], self.rows[index], self.labels[index], self.is_corrupted[index],
            self.corruption[index], self.corruption_level[index], self.num_classes,
        )  # fmt: skip

    @staticmethod
    def clean(ids, rows, labels, num_classes: int, dtype=np.uint8) -> "ExampleSet":
        """dtype: uint8 for images, tokenizer.TOKEN_DTYPE (int16) for token sequences."""
        n = len(ids)  # np.array copies: the columns are owned and writable, whatever the source gave
        return ExampleSet(
            np.array(ids, dtype=np.int64), np.array(rows, dtype=dtype), np.array(labels, dtype=np.int64),
            np.zeros(n, dtype=bool), np.full(n, "", dtype=object), np.zeros(n, dtype=np.float32), int(num_classes),
        )  # fmt: skip


@dataclass
class DataSplits:
    train: Optional[ExampleSet]  # corrupted per config; None when streamed from train_path
    heldout: ExampleSet  # clean, for the outer (meta) loss
    test: ExampleSet  # clean, for evaluation
    probe: ExampleSet  # fixed subset of train, with ground truth, for AUROC
    num_classes: int
    row_shape: tuple[int, ...]  # (H, W) for images, (L,) for token sequences
    train_path: Optional[str] = None  # data.stream: Parquet read in batches, never whole (drray.data.streams)


def to_tensors(examples: ExampleSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs and labels: images as float32 [N, C, H, W] in [0, 1] (token sequences as
    int64 [N, L]), labels as int64 [N]."""
    rows = torch.from_numpy(np.ascontiguousarray(examples.rows))
    x = modality_of_array(examples.rows).inputs(rows)
    return x, torch.from_numpy(np.ascontiguousarray(examples.labels, dtype=np.int64))


def as_uint8(pixels: np.ndarray, where) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    with np.errstate(invalid="ignore"):
        as_uint8 = pixels.astype(np.uint8)
    if not np.array_equal(pixels, as_uint8):  # NaN, fractions and out-of-range values all differ
        raise DataError(f"{where}: image values must be whole numbers 0..255 (no NaN); store images as uint8")
    return as_uint8


def text_examples(texts: list[str], seq_len: int, first_id: int = 0) -> ExampleSet:
    tokens = encode_batch(texts, seq_len)
    n = len(texts)
    return ExampleSet.clean(first_id + np.arange(n), tokens, np.zeros(n, np.int64), 1, dtype=TOKEN_DTYPE)

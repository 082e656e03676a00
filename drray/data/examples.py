"""Examples in memory: `ExampleSet` (rows, labels and ground truth as numpy columns) and
`DataSplits` (train / heldout / test / probe). A row is a uint8 image [H, W] or an int16
byte-token sequence [L] (drray.data.tokenizer); `row_shape` is (H, W) or (L,).
`class_names`, where the data names its classes (image folders, a Hugging Face ClassLabel), is
label id -> name; None where they are unknown.
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
    class_names: Optional[tuple[str, ...]] = None  # label id -> class name, when the data names them

    def __len__(self) -> int:
        return len(self.ids)

    def subset(self, index: np.ndarray) -> "ExampleSet":
        """Rows by integer index or boolean mask (a copy)."""
        return ExampleSet(
            self.ids[index], self.rows[index], self.labels[index], self.is_corrupted[index],
            self.corruption[index], self.corruption_level[index], self.num_classes, self.class_names,
        )  # fmt: skip

    @staticmethod
    def clean(ids, rows, labels, num_classes: int, dtype=np.uint8, class_names=None) -> "ExampleSet":
        """dtype: uint8 for images, tokenizer.TOKEN_DTYPE (int16) for token sequences."""
        n = len(ids)  # np.array copies: the columns are owned and writable, whatever the source gave
        return ExampleSet(
            np.array(ids, dtype=np.int64), np.array(rows, dtype=dtype), np.array(labels, dtype=np.int64),
            np.zeros(n, dtype=bool), np.full(n, "", dtype=object), np.zeros(n, dtype=np.float32), int(num_classes),
            None if class_names is None else tuple(class_names),
        )  # fmt: skip


@dataclass
class DataSplits:
    train: Optional[ExampleSet]  # corrupted per config; None when streamed from train_path
    heldout: ExampleSet  # for the outer (meta) loss: clean, or corrupted as train is (data.heldout=same)
    test: ExampleSet  # clean, for evaluation: the judge
    probe: ExampleSet  # fixed subset of train, with ground truth, for AUROC
    num_classes: int
    row_shape: tuple[int, ...]  # (H, W) for images, (L,) for token sequences
    train_path: Optional[str] = None  # data.stream: Parquet read in batches, never whole (drray.data.streams)
    class_names: Optional[tuple[str, ...]] = None  # label id -> class name, when the data names them


def shared_class_names(parts, where, num_classes: Optional[int] = None) -> Optional[tuple[str, ...]]:
    """The class names the parts (ExampleSets or None) know, or None when none does, or when they
    name fewer than num_classes classes (labels beyond the names: not these labels' names). Parts
    naming their classes differently are a one-line DataError."""
    known = {part.class_names for part in parts if part is not None and part.class_names is not None}
    if len(known) > 1:
        first, second = sorted(known)[:2]
        raise DataError(f"{where}: splits name their classes differently ({describe_class_names(first)} and "
                        f"{describe_class_names(second)}); prepare them from one data set")
    names = known.pop() if known else None
    return None if names is None or (num_classes is not None and len(names) < num_classes) else names


def check_same_class_names(data_names, rater_names, data_where: str, rater_where: str, error=DataError) -> None:
    """Refuse data whose class names differ from the rater's: its label ids would mean other classes
    than those the rater learned. Unknown names (None) on either side are not checked."""
    if data_names is None or rater_names is None or tuple(data_names) == tuple(rater_names):
        return
    data_names, rater_names = list(data_names), list(rater_names)
    differ = next((i for i, (a, b) in enumerate(zip(data_names, rater_names)) if a != b), None)
    detail = (f"label {differ} is {data_names[differ]!r} there but {rater_names[differ]!r} for the rater"
              if differ is not None else f"{len(data_names)} classes against the rater's {len(rater_names)}")
    raise error(f"{data_where} names its classes {describe_class_names(data_names)} but rater {rater_where} was "
                f"trained on {describe_class_names(rater_names)} ({detail}); use data labelled as the rater's "
                "classes, or a rater trained on this data")


def describe_class_names(names, shown: int = 6) -> str:
    """'[cat, dog, fish]', the first `shown` names and a count of the rest for long lists."""
    names = list(names)
    more = f", ... ({len(names)} in all)" if len(names) > shown else ""
    return "[" + ", ".join(names[:shown]) + more + "]"


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

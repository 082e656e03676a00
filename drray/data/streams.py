"""Batches for the inner models: `ArrayStream` draws seeded random batches from rows in memory;
`BatchStream` serves them from any iterator of Arrow batches (a local Parquet reader, or a
Ray Data `streaming_split` shard on a worker), holding only a few batches at a time.
Both have the same interface: sample, reseed, get_state, set_state.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import torch

from drray.data.images import (decode_image_column, has_image_paths, is_encoded_image_type, split_image_dirs,
                               with_image_dir)
from drray.data.modality import is_text, modality_for, modality_of_array
from drray.data.parquet import parquet_dataset
from drray.data.tokenizer import encode_batch
from drray.errors import DataError


class ArrayStream:
    """Seeded random batches from an in-memory set (uint8 images or int16 token sequences); the
    arrays are shared, never copied (from the object store on Ray, zero-copy)."""

    def __init__(self, rows: np.ndarray, labels: np.ndarray, device: str):
        with warnings.catch_warnings():  # object-store arrays are read-only; we never write to them
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            self.rows = torch.from_numpy(rows)  # uint8 [N, H, W] or int16 [N, L]
            self.labels = torch.from_numpy(labels)
        self.modality = modality_of_array(rows)
        self.device = device
        self.generator = torch.Generator()

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        index = torch.randint(len(self.labels), (batch_size,), generator=self.generator)
        x = self.modality.inputs(self.rows[index].to(self.device))
        return x, self.labels[index].to(self.device)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def get_state(self) -> torch.Tensor:
        return self.generator.get_state()

    def set_state(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def stream_columns(row_shape) -> list[str]:
    """The columns a training stream reads: image and label, or text (tokenized to [L]; text
    models read no label)."""
    return ["text"] if is_text(row_shape) else ["image", "label"]


def decode_batch(batch, row_shape, num_classes: int, where: str):
    """Arrow rows -> (uint8 images [B, *row_shape], int64 labels [B]), checked against the split's
    shape, (H, W) or (H, W, C)."""
    row_shape = tuple(int(side) for side in row_shape)
    pixels = batch.column("image")
    if is_encoded_image_type(pixels.type):
        return _decode_encoded_batch(batch, row_shape, num_classes, where)
    if isinstance(pixels, pa.ChunkedArray):
        pixels = pixels.combine_chunks()
    pixels = pixels.flatten().to_numpy(zero_copy_only=False)
    labels = batch.column("label").to_numpy().astype(np.int64)
    if pixels.size != len(labels) * int(np.prod(row_shape)):
        raise DataError(f"{where}: a batch's images are not {'x'.join(map(str, row_shape))}; rewrite the image column")
    _check_labels(labels, num_classes, where)
    return pixels.astype(np.uint8, copy=False).reshape(-1, *row_shape), labels


def _check_labels(labels: np.ndarray, num_classes: int, where: str) -> None:
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: label {labels[(labels < 0) | (labels >= num_classes)][0]} outside "
                        f"0..{num_classes - 1} (the classes of heldout/test); fix the labels")


def _decode_encoded_batch(batch, row_shape: tuple, num_classes: int, where: str):
    """Encoded images (PNG/JPEG bytes) decoded to row_shape; the first that is not one is a
    DataError. A Hugging Face row without bytes reads its path relative to its IMAGE_DIR_COLUMN
    folder (which local_parquet_epochs adds), or as given where the batch has no such column."""
    batch, folders = split_image_dirs(batch)
    decoded = decode_image_column(batch.column("image"), row_shape, base_dir=folders)
    if not decoded.ok.all():
        row = int(np.flatnonzero(~decoded.ok)[0])
        ids = batch.column("id") if "id" in batch.schema.names else None
        name = f"row id {ids[row].as_py()}" if ids is not None else f"row {row} of a batch"
        raise DataError(f"{where}: {name}: {decoded.problems[row]}; fix or drop that row (or set data.image_size "
                        "when preparing, for images of mixed sizes)")
    labels = batch.column("label").to_numpy().astype(np.int64)
    _check_labels(labels, num_classes, where)
    return decoded.images, labels


def decode_text_batch(batch, seq_len: int, where: str):
    """Arrow rows with a `text` column -> (int16 tokens [B, seq_len]: each text's first seq_len
    bytes, cut at a character boundary, then PAD; int64 labels [B], zeros: the language models
    and text raters read no label, so a text set's label column, if any, is not read)."""
    texts = batch.column(batch.schema.names.index("text")).to_pylist()
    if any(text is None for text in texts):
        raise DataError(f"{where}: a row's text is null; fill or drop those rows")
    return encode_batch(texts, seq_len), np.zeros(len(texts), np.int64)


def decode_rows(batch, row_shape, num_classes: int, where: str):
    """(stored rows: uint8 images [B, H, W] or [B, H, W, C], or int16 tokens [B, L]; int64 labels [B])."""
    if is_text(row_shape):
        return decode_text_batch(batch, row_shape[0], where)
    return decode_batch(batch, row_shape, num_classes, where)


class BatchStream:
    """Inner batches from a stream of Arrow batches, epoch after epoch. The order is the
    stream's; memory is a batch or two of rows (max_buffered records the most ever held)."""

    def __init__(self, open_epoch: Callable[[], Iterable], row_shape, num_classes: int, device: str, where: str):
        self.open_epoch, self.row_shape, self.num_classes = open_epoch, tuple(row_shape), num_classes
        self.device, self.where = device, where
        self.modality = modality_for(self.row_shape)
        self._epoch = None
        self._rows, self._labels = None, np.zeros(0, np.int64)
        self.max_buffered = 0

    def _pull(self) -> None:
        for attempt in range(2):
            if self._epoch is None:
                self._epoch = iter(self.open_epoch())
            batch = next(self._epoch, None)
            if batch is not None:
                rows, labels = decode_rows(batch, self.row_shape, self.num_classes, self.where)
                # (a first batch is copied: decoded rows can be read-only views of Arrow buffers)
                self._rows = np.array(rows) if self._rows is None else np.concatenate([self._rows, rows])
                self._labels = np.concatenate([self._labels, labels])
                self.max_buffered = max(self.max_buffered, len(self._labels))
                return
            self._epoch = None  # end of an epoch: start the next
        raise DataError(f"{self.where}: the training stream is empty")

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._labels) < batch_size:
            self._pull()
        rows, self._rows = self._rows[:batch_size], self._rows[batch_size:]
        labels, self._labels = self._labels[:batch_size], self._labels[batch_size:]
        x = self.modality.inputs(torch.from_numpy(np.ascontiguousarray(rows)).to(self.device))
        return x, torch.from_numpy(np.ascontiguousarray(labels)).to(self.device)

    # The position in a stream is not part of a checkpoint: a resumed run reads on from a new epoch.
    def reseed(self, seed: int) -> None:
        pass

    def get_state(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.uint8)

    def set_state(self, state: torch.Tensor) -> None:
        pass


def local_parquet_epochs(path: str, rows_per_read: int, row_shape) -> Callable[[], Iterable]:
    """A local reader (no Ray): one pass over the Parquet split per epoch, in file order. Images
    that may name files (Hugging Face's struct<bytes, path>) come with their file's folder
    (IMAGE_DIR_COLUMN), where relative paths are read."""
    dataset, columns = parquet_dataset(path), stream_columns(row_shape)
    if "image" not in columns or not has_image_paths(dataset.schema):
        return lambda: dataset.to_batches(columns=columns, batch_size=rows_per_read)
    return lambda: _batches_with_folders(dataset, columns, rows_per_read)


def _batches_with_folders(dataset, columns: list[str], rows_per_read: int) -> Iterable:
    for fragment in dataset.get_fragments():  # the files in the dataset's (sorted) order
        folder = str(Path(fragment.path).parent)
        for batch in fragment.to_batches(columns=columns, batch_size=rows_per_read):
            yield with_image_dir(batch, folder)

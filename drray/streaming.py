"""Training sets larger than memory: Parquet read in batches, never whole.

`stream_splits` loads the (small) held-out and test splits and a probe of the training split's
first rows; the training split itself stays on disk (`DataSplits.train_path`). A `BatchStream`
serves inner batches from any iterator of Arrow batches: a local Parquet reader, or a Ray Data
`streaming_split` shard on a worker, holding only a few batches at a time.
"""
from __future__ import annotations

from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import torch

from drray.config import DataConfig
from drray.data import DataSplits, examples_from_table, parquet_split_paths, read_parquet
from drray.errors import DataError

STREAM_COLUMNS = ["image", "label"]


def stream_splits(cfg: DataConfig) -> DataSplits:
    paths = parquet_split_paths(cfg)
    for name in ("heldout", "test"):
        if paths[name] is None:
            raise DataError(f"{cfg.dir}: data.stream needs a {name} split ({name}.parquet or {name}/) beside train")
    heldout, test = read_parquet(paths["heldout"]), read_parquet(paths["test"])
    probe = examples_from_table(ds.dataset(str(paths["train"]), format="parquet").head(cfg.probe_size), paths["train"])
    num_classes = max(part.num_classes for part in (heldout, test, probe))
    shapes = {part.images.shape[1:] for part in (heldout, test, probe)}
    if len(shapes) > 1:
        raise DataError(f"{cfg.dir}: splits differ in image shape {sorted(shapes)}; prepare them from one data set")
    for part in (heldout, test, probe):
        part.num_classes = num_classes
    return DataSplits(None, heldout, test, probe, num_classes, tuple(heldout.images.shape[1:3]),
                      train_path=str(paths["train"]))


def decode_batch(batch, image_shape: tuple[int, int], num_classes: int, where: str):
    """Arrow rows -> (uint8 images [B, H, W], int64 labels [B]), checked against the split's shape."""
    height, width = image_shape
    pixels = batch.column("image")
    if isinstance(pixels, pa.ChunkedArray):
        pixels = pixels.combine_chunks()
    pixels = pixels.flatten().to_numpy(zero_copy_only=False)
    labels = batch.column("label").to_numpy().astype(np.int64)
    if pixels.size != len(labels) * height * width:
        raise DataError(f"{where}: a batch's images are not {height}x{width}; rewrite the image column")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{where}: label {labels[(labels < 0) | (labels >= num_classes)][0]} outside "
                        f"0..{num_classes - 1} (the classes of heldout/test); fix the labels")
    return pixels.astype(np.uint8, copy=False).reshape(-1, height, width), labels


class BatchStream:
    """Inner batches from a stream of Arrow batches, epoch after epoch. The order is the
    stream's; memory is a batch or two of rows (max_buffered records the most ever held)."""

    def __init__(self, open_epoch: Callable[[], Iterable], image_shape, num_classes: int, device: str, where: str):
        self.open_epoch, self.image_shape, self.num_classes = open_epoch, tuple(image_shape), num_classes
        self.device, self.where = device, where
        self._epoch = None
        self._images, self._labels = np.zeros((0, *self.image_shape), np.uint8), np.zeros(0, np.int64)
        self.max_buffered = 0

    def _pull(self) -> None:
        for attempt in range(2):
            if self._epoch is None:
                self._epoch = iter(self.open_epoch())
            batch = next(self._epoch, None)
            if batch is not None:
                images, labels = decode_batch(batch, self.image_shape, self.num_classes, self.where)
                self._images = np.concatenate([self._images, images])
                self._labels = np.concatenate([self._labels, labels])
                self.max_buffered = max(self.max_buffered, len(self._labels))
                return
            self._epoch = None  # end of an epoch: start the next
        raise DataError(f"{self.where}: the training stream is empty")

    def sample(self, batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self._labels) < batch_size:
            self._pull()
        images, self._images = self._images[:batch_size], self._images[batch_size:]
        labels, self._labels = self._labels[:batch_size], self._labels[batch_size:]
        x = torch.from_numpy(np.ascontiguousarray(images)).unsqueeze(1).to(self.device, torch.float32).div_(255.0)
        return x, torch.from_numpy(np.ascontiguousarray(labels)).to(self.device)

    # The position in a stream is not part of a checkpoint: a resumed run reads on from a new epoch.
    def reseed(self, seed: int) -> None:
        pass

    def get_state(self) -> torch.Tensor:
        return torch.zeros(0, dtype=torch.uint8)

    def set_state(self, state: torch.Tensor) -> None:
        pass


def local_parquet_epochs(path: str, rows_per_read: int) -> Callable[[], Iterable]:
    """A local reader (no Ray): one pass over the Parquet split per epoch, in file order."""
    dataset = ds.dataset(path, format="parquet")
    return lambda: dataset.to_batches(columns=STREAM_COLUMNS, batch_size=rows_per_read)

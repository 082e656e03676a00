"""Data sets as numpy columns, the built-in sources, and the train / heldout / test / probe split.

A source is `fn(cfg: DataConfig) -> (pool, test)` or `(pool, test, heldout)`, registered with
`@DATA_SOURCES.register("name")`; `test` / `heldout` are None when the source has no such split,
and `build_splits` then carves them (clean rows only) out of the pool.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np
import torch

from drray.config import DataConfig
from drray.corruption import apply_corruptions, seeded_rng
from drray.errors import DataError
from drray.modality import modality_of_array
from drray.registry import DATA_SOURCES
from drray.tokenizer import PAD, TOKEN_DTYPE

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = [
    "DATA_SOURCES", "DataSplits", "ExampleSet", "build_splits", "read_parquet", "to_tensors", "write_parquet",
]  # fmt: skip


@dataclass
class ExampleSet:
    ids: np.ndarray  # int64 [N], unique within the whole data set
    images: np.ndarray  # uint8 [N, H, W]
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
            self.ids[index], self.images[index], self.labels[index], self.is_corrupted[index],
            self.corruption[index], self.corruption_level[index], self.num_classes,
        )  # fmt: skip

    @staticmethod
    def clean(ids, images, labels, num_classes: int, dtype=np.uint8) -> "ExampleSet":
        """dtype: uint8 for images, tokenizer.TOKEN_DTYPE (int16) for token sequences."""
        n = len(ids)  # np.array copies: the columns are owned and writable, whatever the source gave
        return ExampleSet(
            np.array(ids, dtype=np.int64), np.array(images, dtype=dtype), np.array(labels, dtype=np.int64),
            np.zeros(n, dtype=bool), np.full(n, "", dtype=object), np.zeros(n, dtype=np.float32), int(num_classes),
        )  # fmt: skip


@dataclass
class DataSplits:
    train: Optional[ExampleSet]  # corrupted per config; None when streamed from train_path
    heldout: ExampleSet  # clean, for the outer (meta) loss
    test: ExampleSet  # clean, for evaluation
    probe: ExampleSet  # fixed subset of train, with ground truth, for AUROC
    num_classes: int
    image_shape: tuple[int, ...]  # (H, W) for images, (L,) for token sequences
    train_path: Optional[str] = None  # data.stream: Parquet read in batches, never whole (drray.streaming)


def to_tensors(examples: ExampleSet) -> tuple[torch.Tensor, torch.Tensor]:
    """Model inputs and labels: images as float32 [N, 1, H, W] in [0, 1] (token sequences as
    int64 [N, L]), labels as int64 [N]."""
    rows = torch.from_numpy(np.ascontiguousarray(examples.images))
    x = modality_of_array(examples.images).inputs(rows)
    return x, torch.from_numpy(np.ascontiguousarray(examples.labels, dtype=np.int64))


# Random streams per stage (see corruption.seeded_rng), so stages do not shift one another.
STAGE_TEST, STAGE_HELDOUT, STAGE_CAP, STAGE_PROBE = 1, 2, 3, 4


def build_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Load `cfg.source`, split off test and heldout where the source has none, cap and corrupt train."""
    if cfg.stream:
        from drray.streaming import stream_splits

        return stream_splits(cfg)
    where = f"data source {cfg.source!r}"
    loaded = tuple(DATA_SOURCES.get(cfg.source)(cfg))
    pool, test, heldout = [
        None if part is None else _validated(part, f"{where} ({name})")
        for name, part in zip(("train", "test", "heldout"), loaded + (None,) * (3 - len(loaded)))
    ]  # a source may leave heldout out of its tuple
    for name, part in (("test", test), ("heldout", heldout)):
        check_clean(part, name, where)
    if test is None:
        test, pool = _split_off(pool, cfg.test_fraction, seeded_rng(seed, STAGE_TEST), "test", where)
    if heldout is None:
        heldout, pool = _split_off(pool, cfg.heldout_fraction, seeded_rng(seed, STAGE_HELDOUT), "heldout", where)
    train = pool
    if cfg.max_train is not None and len(train) > cfg.max_train:
        train = train.subset(np.sort(seeded_rng(seed, STAGE_CAP).choice(len(train), cfg.max_train, replace=False)))
    parts = (train, heldout, test)
    if len({p.images.shape[1:] for p in parts}) > 1 or len({p.num_classes for p in parts}) > 1:
        raise DataError(f"{where}: splits differ in image shape or class count; prepare them from one data set")
    ids = np.concatenate([p.ids for p in parts])
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{where}: ids repeat within or across train/heldout/test; give every example a unique id")
    train = apply_corruptions(train, cfg.corruption, seed)
    probe_rows = seeded_rng(seed, STAGE_PROBE).choice(len(train), min(cfg.probe_size, len(train)), replace=False)
    probe = train.subset(np.sort(probe_rows))
    return DataSplits(train, heldout, test, probe, train.num_classes, tuple(train.images.shape[1:3]))


def _split_off(pool: ExampleSet, fraction: float, rng: np.random.Generator, name: str, where: str):
    """(part, rest): a seeded `fraction` of the pool, drawn from clean rows so the part is clean."""
    count = int(round(fraction * len(pool)))
    clean_rows = np.flatnonzero(~pool.is_corrupted)
    if count == 0 or count >= len(pool) or count > len(clean_rows):
        raise DataError(
            f"{where}: cannot split a {name} set of {count} from {len(pool)} examples ({len(clean_rows)} clean); "
            f"adjust data.{name}_fraction or use more data"
        )
    taken = np.zeros(len(pool), dtype=bool)
    taken[rng.choice(clean_rows, count, replace=False)] = True
    return pool.subset(taken), pool.subset(~taken)


def _validated(part: ExampleSet, where: str) -> ExampleSet:
    """The part with uint8 images (whole-number float images are converted) or int16 token
    sequences, or a DataError."""
    if part.images.ndim == 2 and len(part) and len(part.labels) == len(part.images) == len(part.ids):
        return _validated_tokens(part, where)
    if len(part) == 0 or part.images.ndim != 3 or not len(part.labels) == len(part.images) == len(part.ids):
        raise DataError(f"{where}: need N >= 1 images [N, H, W] with N ids and labels, got {part.images.shape}")
    bad = (part.labels < 0) | (part.labels >= part.num_classes)
    if bad.any():
        raise DataError(
            f"{where}: label {part.labels[bad][0]} (id {part.ids[bad][0]}) is outside 0..{part.num_classes - 1}; "
            "fix the labels or the class count"
        )
    return dataclasses.replace(part, images=_as_uint8(part.images, where))


def _validated_tokens(part: ExampleSet, where: str) -> ExampleSet:
    """Token sequences [N, L]: ids 0..PAD, stored as int16."""
    tokens = part.images
    if tokens.dtype.kind not in "iu" or tokens.min() < 0 or tokens.max() > PAD:
        raise DataError(f"{where}: token ids must be integers 0..{PAD} (bytes and PAD); encode text with "
                        "drray.tokenizer.encode")
    return dataclasses.replace(part, images=tokens.astype(TOKEN_DTYPE, copy=False))


def _as_uint8(pixels: np.ndarray, where) -> np.ndarray:
    if pixels.dtype == np.uint8:
        return pixels
    with np.errstate(invalid="ignore"):
        as_uint8 = pixels.astype(np.uint8)
    if not np.array_equal(pixels, as_uint8):  # NaN, fractions and out-of-range values all differ
        raise DataError(f"{where}: image values must be whole numbers 0..255 (no NaN); store images as uint8")
    return as_uint8


@DATA_SOURCES.register("digits")
def load_digits_source(cfg: DataConfig):
    """scikit-learn's 1,797 8x8 digits (bundled, offline); values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return ExampleSet.clean(np.arange(len(images)), images, digits.target, 10), None


def _first_existing(*candidates: Path) -> Optional[Path]:
    return next((path for path in candidates if path.exists()), None)


PARQUET_COLUMNS, SPLITS = ("id", "image", "shape", "label"), ("train", "test", "heldout")


def not_a_folder(path: Path) -> str:
    """Why `path` is no folder to read: it is a file, or it is not there."""
    return "is a file, not a folder" if path.exists() else "does not exist"


def existing_data_dir(cfg: DataConfig, holding: str) -> Path:
    """data.dir as a Path; a one-line DataError (saying what it should hold) when unset or missing."""
    if cfg.dir is None or not Path(cfg.dir).is_dir():
        where = "no data.dir given" if cfg.dir is None else f"data.dir {cfg.dir} {not_a_folder(Path(cfg.dir))}"
        raise DataError(f"{where}; set data.dir to {holding}")
    return Path(cfg.dir)


def parquet_split_paths(cfg: DataConfig) -> dict[str, Optional[Path]]:
    directory = existing_data_dir(cfg, "a folder with train.parquet or train/")
    paths = {name: _first_existing(directory / f"{name}.parquet", directory / name) for name in SPLITS}
    if paths["train"] is None:
        raise DataError(f"{directory / 'train.parquet'}: missing (nor a train/ folder); write train there")
    return paths


@DATA_SOURCES.register("parquet")
def load_parquet_source(cfg: DataConfig):
    """data.dir with train (train.parquet or train/ shards) and optional heldout and test."""
    paths = parquet_split_paths(cfg)
    parts = {name: read_parquet(path, cfg.seq_len) for name, path in paths.items() if path is not None}
    num_classes = max(int(part.labels.max(initial=-1)) + 1 for part in parts.values())
    for part in parts.values():
        part.num_classes = num_classes
    return parts["train"], parts.get("test"), parts.get("heldout")


def read_parquet(path: Path, seq_len: int = 128) -> ExampleSet:
    """One split from a .parquet file or a folder of shards; num_classes is max label + 1.
    A table with a `text` column holds text: tokenized into sequences of `seq_len` bytes."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        table = ds.dataset(str(path), format="parquet").to_table()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as Parquet ({exc}); check the file".replace("\n", " ")) from None
    return examples_from_any_table(table, path, seq_len)


def check_clean(part: "ExampleSet | None", name: str, where) -> None:
    """A held-out or test split the data supplies must be clean: the outer loss and the evaluation
    take it as ground truth (DESIGN.md)."""
    if part is not None and part.is_corrupted.any():
        raise DataError(f"{where} ({name}): {int(part.is_corrupted.sum())} rows are marked is_corrupted, but the {name} "
                        f"split must be clean; drop them, or leave the {name} split out and drray splits one off train")


def examples_from_any_table(table: pa.Table, path, seq_len: int = 128) -> ExampleSet:
    """Images (the DESIGN.md image schema) or, for a table with a `text` column, token sequences."""
    if "text" in table.column_names and "image" not in table.column_names:
        from drray.text_data import examples_from_text_table

        return examples_from_text_table(table, path, seq_len)
    return examples_from_table(table, path)


def examples_from_table(table: pa.Table, path) -> ExampleSet:
    """Rows of the DESIGN.md schema as an ExampleSet (checked: columns, nulls, shapes, labels)."""
    import pyarrow as pa

    missing = [c for c in PARQUET_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}; needs {', '.join(PARQUET_COLUMNS)}")
    if any(table.column(column).null_count for column in PARQUET_COLUMNS):
        raise DataError(f"{path}: nulls in {', '.join(PARQUET_COLUMNS)}; fill or drop those rows")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows; write the examples there (prepare makes such files)")
    n, shapes = table.num_rows, _list_column(table, "shape", path)
    if shapes.size != 2 * n or (shapes.reshape(n, 2) != shapes[:2]).any():
        raise DataError(f"{path}: column shape must be the same [H, W] on every row")
    height, width = shapes[:2]
    pixels = _list_column(table, "image", path)
    if pixels.size != n * height * width:
        raise DataError(f"{path}: image sizes do not match shape {[int(height), int(width)]}; rewrite the image column")
    pixels = _as_uint8(pixels, path)
    if not pa.types.is_integer(table.schema.field("label").type):
        raise DataError(f"{path}: column label is {table.schema.field('label').type}, not an integer class; "
                        "store labels as int64")
    labels = table.column("label").to_numpy().astype(np.int64)
    if (labels < 0).any():
        raise DataError(f"{path}: negative label {labels[labels < 0][0]}; labels must be 0..num_classes-1")
    examples = ExampleSet.clean(
        table.column("id").to_numpy(), pixels.reshape(n, height, width), labels, int(labels.max(initial=-1)) + 1
    )
    _read_ground_truth(table, examples)
    return examples


def _list_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)):
        raise DataError(f"{path}: column {name} must be a list, got {column.type}; see DESIGN.md (Data)")
    return column.flatten().to_numpy(zero_copy_only=False)  # flatten honours slicing and offsets


def _read_ground_truth(table: pa.Table, examples: ExampleSet) -> None:
    """Keep prepared data's experiment columns (is_corrupted, corruption, corruption_level)."""
    import pyarrow.compute as pc

    names = table.column_names
    if "corruption" in names:
        examples.corruption = pc.fill_null(table.column("corruption"), "").to_numpy(zero_copy_only=False).astype(object)
    if "is_corrupted" in names:
        examples.is_corrupted = np.array(pc.fill_null(table.column("is_corrupted"), False), dtype=bool)
    else:
        examples.is_corrupted = examples.corruption != ""
    examples.corruption[examples.is_corrupted & (examples.corruption == "")] = "unknown"
    if "corruption_level" in names:
        examples.corruption_level = pc.fill_null(table.column("corruption_level"), 0.0).to_numpy().astype(np.float32)
    else:
        examples.corruption_level = examples.is_corrupted.astype(np.float32)


def write_parquet(examples: ExampleSet, path: Path) -> None:
    """One split as Parquet in the DESIGN.md schema, ground-truth columns included."""
    if examples.images.ndim == 2:
        from drray.text_data import write_text_parquet

        return write_text_parquet(examples, path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, height, width = examples.images.shape
    table = pa.table({
        "id": pa.array(examples.ids, pa.int64()),
        "image": pa.FixedSizeListArray.from_arrays(pa.array(examples.images.reshape(-1), pa.uint8()), height * width),
        "shape": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([height, width], n), pa.int32()), 2),
        **label_and_truth_columns(examples),
    })  # fmt: skip
    pq.write_table(table, str(path))


def label_and_truth_columns(examples: ExampleSet) -> dict:
    """The columns every modality writes after its payload: label and the ground truth."""
    import pyarrow as pa

    return {
        "label": pa.array(examples.labels, pa.int64()),
        "is_corrupted": pa.array(examples.is_corrupted, pa.bool_()),
        "corruption": pa.array(examples.corruption.astype(str), pa.string()),
        "corruption_level": pa.array(examples.corruption_level, pa.float32()),
    }


from drray import idx, text_data  # noqa: E402,F401  (register the idx, mnist and text sources)

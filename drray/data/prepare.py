"""A data set prepared as Parquet (drray's schema, docs/design.md), the output of jobs.prepare: the splits and
the corruption of `build_splits`, so the very ones a meta-training run with the same data
settings and seed uses; readable back as `data: {source: parquet, dir: OUTPUT}`, streamed or not.

    OUTPUT/train/part-00000.parquet ...  the training split, in order, in `shards` files
    OUTPUT/heldout.parquet, test.parquet  test clean; heldout clean, or corrupted at the pool's rate with data.heldout=same
    OUTPUT/prepare.json                   what was prepared, and how (PREPARE_FORMAT)

Class names, where the source gives them (an image folder's class folders), are in prepare.json
(`class_names`, label id -> name) and in every Parquet file's schema metadata, where
`read_parquet` finds them again (drray.data.parquet.CLASS_NAMES_KEY).

OUTPUT is a local path or a pyarrow filesystem URI. It is written beside the destination (or in a
local temporary folder for a URI) and moved into place at the end, so a failure leaves nothing
half-written and an earlier OUTPUT as it was.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.fs as pafs

from drray.config import DataConfig
from drray.data.parquet import write_parquet
from drray.data.splits import build_splits
from drray.errors import ConfigError
from drray.storage import check_output, check_separate, clear_output, staging_dir_beside

PREPARE_FORMAT = "drray-prepared/1"


def write_prepared(cfg: DataConfig, seed: int, output: str, shards: int = 1, overwrite: bool = False) -> dict:
    """Prepare the data of `cfg` and `seed` into `output`, the training split in `shards` files;
    returns the record written as prepare.json. Every problem (a bad source or corruption, an
    output that exists or overlaps data.dir) is refused before anything is written."""
    if shards < 1:
        raise ConfigError(f"--shards must be >= 1, got {shards}")
    if cfg.dir is not None:
        check_separate(output, cfg.dir, "data.dir")
    fs, path = check_output(output, overwrite)
    splits = build_splits(cfg, seed)
    train = splits.train
    if train is None:
        raise ConfigError("prepare reads the source whole; set data.stream=false")
    if shards > len(train):
        raise ConfigError(f"--shards {shards} is more than the {len(train)} training rows; use fewer shards")
    staging = _staging_dir(fs, path)
    try:
        bounds = np.linspace(0, len(train), shards + 1).round().astype(np.int64)  # contiguous, in order
        (staging / "train").mkdir()
        files = []
        train, heldout, test = (dataclasses.replace(part, class_names=splits.class_names)
                                for part in (train, splits.heldout, splits.test))
        for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            name = f"part-{shard:05d}.parquet"
            write_parquet(train.subset(np.arange(start, stop)), staging / "train" / name)
            files.append(f"train/{name}")
        kinds, counts = np.unique(train.corruption[train.is_corrupted].astype(str), return_counts=True)
        print(f"train: {len(train)} rows ({int(train.is_corrupted.sum())} corrupted) in {shards} shard(s)", flush=True)
        for name, part in (("heldout", heldout), ("test", test)):
            write_parquet(part, staging / f"{name}.parquet")
            print(f"{name}: {len(part)} rows ({int(part.is_corrupted.sum())} corrupted)", flush=True)
        record = {
            "format": PREPARE_FORMAT,
            "source": cfg.source,
            "dir": cfg.dir,
            "seed": seed,
            "corruption": [spec.model_dump() for spec in cfg.corruption],
            "heldout_fraction": cfg.heldout_fraction,
            "test_fraction": cfg.test_fraction,
            "max_train": cfg.max_train,
            "row_shape": list(splits.row_shape),
            "num_classes": splits.num_classes,
            "class_names": None if splits.class_names is None else list(splits.class_names),
            "rows": {"train": len(train), "heldout": len(splits.heldout), "test": len(splits.test)},
            "corrupted": {kind: int(count) for kind, count in zip(kinds, counts)},
            "train_files": files,
        }
        (staging / "prepare.json").write_text(json.dumps(record, indent=2) + "\n")
        _publish(staging, fs, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"wrote {output} (use it as data: {{source: parquet, dir: {output}}})", flush=True)
    return record


def _staging_dir(fs, path: str) -> Path:
    """Beside a local output, or a local temporary directory for a URI."""
    if isinstance(fs, pafs.LocalFileSystem):
        return staging_dir_beside(path)
    return Path(tempfile.mkdtemp(prefix="drray-prepare-"))


def _publish(staging: Path, fs, path: str) -> None:
    """Move the finished output into place, replacing an old one (--overwrite) only now: one
    rename locally; for a URI, each file uploaded under a temporary name and moved, prepare.json
    last (its presence marks a complete upload)."""
    clear_output(fs, path)
    if isinstance(fs, pafs.LocalFileSystem):
        os.rename(staging, path)
        return
    files = sorted(p for p in staging.rglob("*") if p.is_file())
    files.sort(key=lambda p: p.name == "prepare.json")
    for local in files:
        final = f"{path.rstrip('/')}/{local.relative_to(staging).as_posix()}"
        fs.create_dir(final.rpartition("/")[0], recursive=True)
        with fs.open_output_stream(final + ".uploading") as out:
            out.write(local.read_bytes())
        fs.move(final + ".uploading", final)

"""Where a source's files are: data.dir checked, Parquet splits found."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from drray.config import DataConfig
from drray.data.parquet import SPLITS, count_rows
from drray.errors import DataError
from drray.io import first_existing, not_a_folder


def existing_data_dir(cfg: DataConfig, holding: str) -> Path:
    """data.dir as a Path; a one-line DataError (saying what it should hold) when unset or missing."""
    if cfg.dir is None or not Path(cfg.dir).is_dir():
        where = "no data.dir given" if cfg.dir is None else f"data.dir {cfg.dir} {not_a_folder(Path(cfg.dir))}"
        raise DataError(f"{where}; set data.dir to {holding}")
    return Path(cfg.dir)


def parquet_split_paths(cfg: DataConfig) -> dict[str, Optional[Path]]:
    directory = existing_data_dir(cfg, "a folder with train.parquet or train/")
    paths = {name: first_existing(directory / f"{name}.parquet", directory / name) for name in SPLITS}
    if paths["train"] is None:
        raise DataError(f"{directory / 'train.parquet'}: missing (nor a train/ folder); write train there")
    return paths


def split_first_ids(paths: dict[str, Optional[Path]]) -> dict[str, int]:
    """The first id of each split that has no id column: its rows are numbered after the rows of
    the splits before it, in the order train, heldout, test (the order of an image folder's ids)."""
    first_ids, rows = {}, 0
    for name in ("train", "heldout", "test"):
        first_ids[name] = rows
        if paths.get(name) is not None:
            rows += count_rows(paths[name])
    return first_ids

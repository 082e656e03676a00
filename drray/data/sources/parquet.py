"""The `parquet` source: a folder with train (train.parquet or train/ shards) and optional heldout and test."""
from __future__ import annotations

from drray.config import DataConfig
from drray.data.examples import shared_class_names
from drray.data.parquet import read_parquet
from drray.data.sources.paths import parquet_split_paths, split_first_ids
from drray.registry import DATA_SOURCES


@DATA_SOURCES.register("parquet")
def load_parquet_source(cfg: DataConfig):
    """data.dir with train (train.parquet or train/ shards) and optional heldout and test. A split
    without an id column numbers its rows after the splits before it (train, heldout, test)."""
    paths = parquet_split_paths(cfg)
    first_ids = split_first_ids(paths)
    parts = {name: read_parquet(path, cfg.seq_len, cfg.image_size, first_ids[name])
             for name, path in paths.items() if path is not None}
    num_classes = max(part.num_classes for part in parts.values())
    names = shared_class_names(parts.values(), cfg.dir, num_classes)
    for part in parts.values():
        part.num_classes, part.class_names = num_classes, names
    return parts["train"], parts.get("test"), parts.get("heldout")

"""The `parquet` source: a folder with train (train.parquet or train/ shards) and optional heldout and test."""
from __future__ import annotations

from drray.config import DataConfig
from drray.data.parquet import read_parquet
from drray.data.sources.paths import parquet_split_paths
from drray.registry import DATA_SOURCES


@DATA_SOURCES.register("parquet")
def load_parquet_source(cfg: DataConfig):
    """data.dir with train (train.parquet or train/ shards) and optional heldout and test."""
    paths = parquet_split_paths(cfg)
    parts = {name: read_parquet(path, cfg.seq_len, cfg.image_size) for name, path in paths.items() if path is not None}
    num_classes = max(int(part.labels.max(initial=-1)) + 1 for part in parts.values())
    for part in parts.values():
        part.num_classes = num_classes
    return parts["train"], parts.get("test"), parts.get("heldout")

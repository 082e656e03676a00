"""The train / heldout / test / probe split of a data source, the same for a seed wherever it runs.

A source returns `(pool, test)` or `(pool, test, heldout)`; `build_splits` carves the missing
splits out of the pool, caps and corrupts train, and draws the probe set. The test split is clean
(clean rows only). The held-out split (data.heldout) is `clean` (clean rows, train corrupted after)
or `same` (the pool corrupted first, the held-out rows drawn from all of it, at its rate).
A streamed Parquet set (`data.stream`) keeps train on disk (`stream_splits`).
"""
from __future__ import annotations

import dataclasses

import numpy as np

from drray import seeds
from drray.config import DataConfig
from drray.data import sources  # noqa: F401  (registers the built-in sources)
from drray.data.corruption import apply_corruptions
from drray.data.examples import DataSplits, ExampleSet, as_uint8, shared_class_names
from drray.data.images import resize
from drray.data.modality import ImageModality, modality_of_array
from drray.data.parquet import check_clean, read_parquet
from drray.data.sources.paths import parquet_split_paths, split_first_ids
from drray.data.tokenizer import PAD, TOKEN_DTYPE
from drray.errors import DataError
from drray.registry import DATA_SOURCES
from drray.seeds import seeded_rng


def build_splits(cfg: DataConfig, seed: int) -> DataSplits:
    """Load `cfg.source`, split off test and heldout where the source has none, cap and corrupt train
    (data.heldout=same: corrupt the pool, then split off heldout and cap train)."""
    if cfg.stream:
        return stream_splits(cfg, seed)
    where = f"data source {cfg.source!r}"
    loaded = tuple(DATA_SOURCES.get(cfg.source)(cfg))
    pool, test, heldout = [
        None if part is None else _validated(part, f"{where} ({name})")
        for name, part in zip(("train", "test", "heldout"), loaded + (None,) * (3 - len(loaded)))
    ]  # a source may leave heldout out of its tuple
    if cfg.image_size is not None:
        pool, test, heldout = (None if part is None else resized(part, cfg.image_size) for part in (pool, test, heldout))
    same = cfg.heldout == "same"
    check_clean(test, "test", where)
    if not same:  # under `same` a held-out split the data supplies may hold corrupted rows
        check_clean(heldout, "heldout", where)
    if test is None:
        test, pool = _split_off(pool, round(cfg.test_fraction * len(pool)), seeded_rng(seed, seeds.TEST_SPLIT),
                                "test", "data.test_fraction", where)
    if heldout is not None:
        heldout = _subset_of_given(heldout, cfg.heldout_size, seeded_rng(seed, seeds.HELDOUT_SUBSET), where)
    else:
        count, key = _heldout_count(cfg, len(pool))
        _check_split_size(count, len(pool), len(pool), "heldout", key, where)  # before corrupting a large pool
    if same:
        pool = apply_corruptions(pool, cfg.corruption, seed)
    if heldout is None:
        stream = seeds.HELDOUT_SAME_SPLIT if same else seeds.HELDOUT_SPLIT
        heldout, pool = _split_off(pool, count, seeded_rng(seed, stream), "heldout", key, where, clean_only=not same)
    train = pool
    if cfg.max_train is not None and len(train) > cfg.max_train:
        train = train.subset(np.sort(seeded_rng(seed, seeds.TRAIN_CAP).choice(len(train), cfg.max_train, replace=False)))
    parts = (train, heldout, test)
    if len({p.rows.shape[1:] for p in parts}) > 1 or len({p.num_classes for p in parts}) > 1:
        raise DataError(f"{where}: splits differ in image shape or class count; prepare them from one data set "
                        "(or set data.image_size)")
    ids = np.concatenate([p.ids for p in parts])
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"{where}: ids repeat within or across train/heldout/test; give every example a unique id")
    if not same:
        train = apply_corruptions(train, cfg.corruption, seed)
    probe_rows = seeded_rng(seed, seeds.PROBE_ROWS).choice(len(train), min(cfg.probe_size, len(train)), replace=False)
    probe = train.subset(np.sort(probe_rows))
    return DataSplits(train, heldout, test, probe, train.num_classes, tuple(train.rows.shape[1:]),
                      class_names=shared_class_names(parts, where, train.num_classes))


def _split_off(pool: ExampleSet, count: int, rng: np.random.Generator, name: str, key: str, where: str,
               clean_only: bool = True):
    """(part, rest): `count` seeded rows of the pool, drawn from its clean rows (so the part is
    clean) or, clean_only=False, from all of them; `key` is the setting that gave the count."""
    rows = np.flatnonzero(~pool.is_corrupted) if clean_only else np.arange(len(pool))
    _check_split_size(count, len(pool), len(rows), name, key, where)
    taken = np.zeros(len(pool), dtype=bool)
    taken[rng.choice(rows, count, replace=False)] = True
    return pool.subset(taken), pool.subset(~taken)


def _check_split_size(count: int, pool_size: int, drawable: int, name: str, key: str, where: str) -> None:
    """A split of `count` rows must leave some of the pool, and `drawable` rows must hold it."""
    if count == 0 or count >= pool_size or count > drawable:
        clean = f" ({drawable} clean)" if drawable < pool_size else ""
        raise DataError(f"{where}: cannot split a {name} set of {count} from {pool_size} examples{clean}; "
                        f"adjust {key} or use more data")


def _heldout_count(cfg: DataConfig, pool_size: int) -> tuple[int, str]:
    """The held-out split's row count, and the setting that gives it."""
    if cfg.heldout_size is not None:
        return cfg.heldout_size, "data.heldout_size"
    return round(cfg.heldout_fraction * pool_size), "data.heldout_fraction"


def _subset_of_given(heldout: ExampleSet, size, rng: np.random.Generator, where) -> ExampleSet:
    """A held-out split the data supplies, cut to a seeded `size` rows where data.heldout_size is set."""
    if size is None:
        return heldout
    if size > len(heldout):
        raise DataError(f"{where} (heldout): data.heldout_size={size} is more than the {len(heldout)} rows of the "
                        "held-out split the data supplies; lower data.heldout_size or leave it out")
    return heldout.subset(np.sort(rng.choice(len(heldout), size, replace=False)))


def _validated(part: ExampleSet, where: str) -> ExampleSet:
    """The part with uint8 images [N, H, W] or [N, H, W, 3] (whole-number float images are
    converted; one channel is stored [N, H, W]) or int16 token sequences, or a DataError."""
    if part.rows.ndim == 2 and len(part) and len(part.labels) == len(part.rows) == len(part.ids):
        return _validated_tokens(part, where)
    rows = part.rows[..., 0] if part.rows.ndim == 4 and part.rows.shape[-1] == 1 else part.rows
    image = rows.ndim == 3 or (rows.ndim == 4 and rows.shape[-1] == 3)
    if len(part) == 0 or not image or not len(part.labels) == len(rows) == len(part.ids):
        raise DataError(f"{where}: need N >= 1 images [N, H, W] or [N, H, W, 3] (RGB) with N ids and labels, "
                        f"got {part.rows.shape}")
    bad = (part.labels < 0) | (part.labels >= part.num_classes)
    if bad.any():
        raise DataError(
            f"{where}: label {part.labels[bad][0]} (id {part.ids[bad][0]}) is outside 0..{part.num_classes - 1}; "
            "fix the labels or the class count"
        )
    return dataclasses.replace(part, rows=as_uint8(rows, where))


def resized(part: ExampleSet, size) -> ExampleSet:
    """Images resized to size = (H, W) (drray.data.images.resize); token sequences as they are."""
    if modality_of_array(part.rows) is not ImageModality or part.rows.shape[1:3] == tuple(size):
        return part
    return dataclasses.replace(part, rows=np.stack([resize(row, size) for row in part.rows]))


def _validated_tokens(part: ExampleSet, where: str) -> ExampleSet:
    """Token sequences [N, L]: ids 0..PAD, stored as int16."""
    tokens = part.rows
    if tokens.dtype.kind not in "iu" or tokens.min() < 0 or tokens.max() > PAD:
        raise DataError(f"{where}: token ids must be integers 0..{PAD} (bytes and PAD); encode text with "
                        "drray.data.tokenizer.encode")
    return dataclasses.replace(part, rows=tokens.astype(TOKEN_DTYPE, copy=False))


def stream_splits(cfg: DataConfig, seed: int) -> DataSplits:
    if cfg.image_size is not None:
        raise DataError("data.image_size: a streamed set is read as it was prepared; resize it when preparing "
                        "(jobs.prepare --set data.image_size=[H, W]) and drop data.image_size here")
    paths = parquet_split_paths(cfg)
    for name in ("heldout", "test"):
        if paths[name] is None:
            raise DataError(f"{cfg.dir}: data.stream needs a {name} split ({name}.parquet or {name}/) beside train")
    first_ids = split_first_ids(paths)  # for splits without an id column
    heldout, test = (read_parquet(paths[name], cfg.seq_len, first_id=first_ids[name]) for name in ("heldout", "test"))
    if cfg.heldout == "clean":
        check_clean(heldout, "heldout", paths["heldout"])
    check_clean(test, "test", paths["test"])
    heldout = _subset_of_given(heldout, cfg.heldout_size, seeded_rng(seed, seeds.HELDOUT_SUBSET), paths["heldout"])
    probe = read_parquet(paths["train"], cfg.seq_len, limit=cfg.probe_size)
    num_classes = max(part.num_classes for part in (heldout, test, probe))
    shapes = {part.rows.shape[1:] for part in (heldout, test, probe)}
    if len(shapes) > 1:
        raise DataError(f"{cfg.dir}: splits differ in row shape {sorted(shapes)}; prepare them from one data set")
    for part in (heldout, test, probe):
        part.num_classes = num_classes
    return DataSplits(None, heldout, test, probe, num_classes, tuple(heldout.rows.shape[1:]),
                      train_path=str(paths["train"]),
                      class_names=shared_class_names((heldout, test, probe), cfg.dir, num_classes))

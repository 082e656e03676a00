"""Prepare a data set as Parquet (DESIGN.md schema), its training split optionally corrupted.

    python -m jobs.prepare --source mnist --dir ../shared/data/mnist \
        --corrupt pixel_noise:0.1,label_flip:0.2 --shards 16 --output data/mnist-noisy [--seed 0]

Writes OUTPUT/train/part-00000.parquet ... (row order kept), OUTPUT/heldout.parquet and
OUTPUT/test.parquet (clean), and OUTPUT/prepare.json. The splits and the corruption come from
drray.data.build_splits, so they are the very ones a meta-training run with the same data
settings and seed would use; the result is usable as `data: {source: parquet, dir: OUTPUT}`,
streamed or not. OUTPUT is a local path or a pyarrow filesystem URI. It is written beside the
destination and moved into place at the end, so a failure leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from drray.errors import ConfigError, DrrayError
from jobs.common import job_parser, run_job

PREPARE_FORMAT = "drray-prepared/1"


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("prepare", __doc__)
    parser.add_argument("--source", default="digits", help="data source: digits, mnist, idx, parquet, text (default digits)")
    parser.add_argument("--dir", help="the source's directory (mnist: ../shared/data/mnist by default)")
    parser.add_argument("--corrupt", default="", metavar="KIND:FRACTION[,...]",
                        help="corrupt seeded, disjoint fractions of the training split, e.g. "
                             "pixel_noise:0.1,label_flip:0.2 (default: none)")
    parser.add_argument("--split", default="train", choices=["train"],
                        help="the split that is corrupted and sharded; heldout and test are always written clean")
    parser.add_argument("--shards", type=int, default=1, help="Parquet files for the training split (default 1)")
    parser.add_argument("--output", required=True, help="output directory (local path or URI)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the split and the corruption (default 0)")
    parser.add_argument("--heldout-fraction", type=float, default=0.1,
                        help="of the pool left after the test split, for the outer loss (default 0.1)")
    parser.add_argument("--test-fraction", type=float, default=0.2,
                        help="of the whole pool, for sources without a test split; split off first (default 0.2)")
    parser.add_argument("--max-train", type=int, help="cap the training split at N rows (a seeded subset)")
    parser.add_argument("--download", action="store_true", help="fetch a missing data set (mnist; online only)")
    parser.add_argument("--seq-len", type=int, default=128, help="text: bytes per sequence (default 128)")
    parser.add_argument("--pattern", help="text: glob of the files in --dir to read (default: every file)")
    parser.add_argument("--text-field", default="text",
                        help="text: the JSON-lines field with the text; 'wikitext' strips the markup (default text)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    return run_job(prepare, parse_args(argv), report=None)


# The data.* keys the library's messages name, as the flags that set them here.
FLAG_FOR_KEY = {"data.download=true": "--download", "data.text_field": "--text-field", "data.seq_len": "--seq-len",
                "data.heldout_fraction": "--heldout-fraction", "data.test_fraction": "--test-fraction",
                "data.max_train": "--max-train", "data.pattern": "--pattern", "data.source": "--source",
                "data.dir": "--dir", "data.download": "--download"}


def in_flags(exc: DrrayError) -> DrrayError:
    message = str(exc)
    for key, flag in FLAG_FOR_KEY.items():  # longest first where one key starts another
        message = message.replace(key, flag)
    return type(exc)(message)


def parse_corruption(text: str) -> list[dict]:
    """'pixel_noise:0.1,label_flip:0.2' -> [{kind, fraction}, ...]; '' or 'none' -> []."""
    import drray.data.corruption  # noqa: F401  (registers the built-in kinds)
    from drray.registry import CORRUPTIONS

    text = (text or "").strip()
    if text.lower() in ("", "none"):
        return []
    specs = []
    for item in text.split(","):
        kind, sep, fraction = item.strip().partition(":")
        if not sep or not kind:
            raise ConfigError(f"--corrupt {text!r}: expected KIND:FRACTION[,KIND:FRACTION...], "
                              "e.g. pixel_noise:0.1,label_flip:0.2")
        if kind not in CORRUPTIONS:
            raise ConfigError(f"--corrupt: unknown corruption {kind!r}; allowed: {', '.join(CORRUPTIONS.names())}")
        try:
            value = float(fraction)
        except ValueError:
            raise ConfigError(f"--corrupt {item.strip()!r}: fraction {fraction!r} is not a number") from None
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"--corrupt {item.strip()!r}: fraction must be in [0, 1], got {value:g}")
        specs.append({"kind": kind, "fraction": value})
    if sum(spec["fraction"] for spec in specs) > 1.0 + 1e-9:
        raise ConfigError(f"--corrupt {text!r}: fractions add up to more than 1")
    return specs


def data_config(args: argparse.Namespace):
    """The DataConfig of these arguments, every problem a one-line ConfigError naming the flag."""
    from pydantic import ValidationError

    from drray.config import DataConfig
    from drray.data.splits import DATA_SOURCES

    if args.source not in DATA_SOURCES:
        raise ConfigError(f"--source: unknown source {args.source!r}; allowed: {', '.join(DATA_SOURCES.names())}")
    for flag, value in (("--heldout-fraction", args.heldout_fraction), ("--test-fraction", args.test_fraction)):
        if not 0.0 < value < 1.0:
            raise ConfigError(f"{flag} must be in (0, 1), got {value:g}")
    if args.shards < 1:
        raise ConfigError(f"--shards must be >= 1, got {args.shards}")
    if args.max_train is not None and args.max_train < 1:
        raise ConfigError(f"--max-train must be >= 1, got {args.max_train}")
    corruption = parse_corruption(args.corrupt)
    try:
        return DataConfig(source=args.source, dir=args.dir, heldout_fraction=args.heldout_fraction,
                          test_fraction=args.test_fraction, corruption=corruption, max_train=args.max_train,
                          download=args.download, seq_len=args.seq_len, pattern=args.pattern,
                          text_field=args.text_field)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(part) for part in first["loc"])
        raise ConfigError(f"data.{key}: {first['msg'].removeprefix('Value error, ')}") from None


def prepare(args: argparse.Namespace) -> dict:
    try:
        return write_prepared(args)
    except DrrayError as exc:  # the library names config keys; here the user typed flags
        raise in_flags(exc) from None


def write_prepared(args: argparse.Namespace) -> dict:
    from drray.data.parquet import write_parquet
    from drray.data.splits import build_splits
    from drray.storage import check_output, check_separate

    cfg = data_config(args)  # every argument checked before anything is touched
    if cfg.dir is not None:
        check_separate(args.output, cfg.dir, "--dir")
    fs, path = check_output(args.output, args.overwrite)
    splits = build_splits(cfg, args.seed)
    train = splits.train
    if args.shards > len(train):
        raise ConfigError(f"--shards {args.shards} is more than the {len(train)} training rows; use fewer shards")
    staging = _staging_dir(fs, path)
    try:
        bounds = np.linspace(0, len(train), args.shards + 1).round().astype(np.int64)  # contiguous, in order
        (staging / "train").mkdir()
        files = []
        for shard, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            name = f"part-{shard:05d}.parquet"
            write_parquet(train.subset(np.arange(start, stop)), staging / "train" / name)
            files.append(f"train/{name}")
        kinds, counts = np.unique(train.corruption[train.is_corrupted].astype(str), return_counts=True)
        print(f"train: {len(train)} rows ({int(train.is_corrupted.sum())} corrupted) in {args.shards} shard(s)",
              flush=True)
        for name in ("heldout", "test"):
            write_parquet(getattr(splits, name), staging / f"{name}.parquet")
            print(f"{name}: {len(getattr(splits, name))} rows (clean)", flush=True)
        record = {
            "format": PREPARE_FORMAT,
            "source": cfg.source,
            "dir": cfg.dir,
            "seed": args.seed,
            "corruption": [spec.model_dump() for spec in cfg.corruption],
            "heldout_fraction": cfg.heldout_fraction,
            "test_fraction": cfg.test_fraction,
            "max_train": cfg.max_train,
            "row_shape": list(splits.row_shape),
            "num_classes": splits.num_classes,
            "rows": {"train": len(train), "heldout": len(splits.heldout), "test": len(splits.test)},
            "corrupted": {kind: int(count) for kind, count in zip(kinds, counts)},
            "train_files": files,
        }
        (staging / "prepare.json").write_text(json.dumps(record, indent=2) + "\n")
        _publish(staging, fs, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    where = args.output
    print(f"wrote {where} (use it as data: {{source: parquet, dir: {where}}})", flush=True)
    return record


def _staging_dir(fs, path: str) -> Path:
    """Beside a local output, or a local temporary directory for a URI."""
    import pyarrow.fs as pafs

    from drray.storage import staging_dir_beside

    if isinstance(fs, pafs.LocalFileSystem):
        return staging_dir_beside(path)
    return Path(tempfile.mkdtemp(prefix="drray-prepare-"))


def _publish(staging: Path, fs, path: str) -> None:
    """Move the finished output into place, replacing an old one (--overwrite) only now: one
    rename locally; for a URI, each file uploaded under a temporary name and moved, prepare.json
    last (its presence marks a complete upload)."""
    import pyarrow.fs as pafs

    from drray.storage import clear_output

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


if __name__ == "__main__":
    sys.exit(main())

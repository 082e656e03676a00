"""Prepare a data set as Parquet (drray's schema, docs/design.md), its training split optionally corrupted.

    python -m jobs.prepare [--config FILE] [--set data.KEY=VALUE ...] --output DIR [--shards N]
    python -m jobs.prepare --source mnist --dir ../shared/data/mnist \
        --corrupt pixel_noise:0.1,label_flip:0.2 --shards 16 --output data/mnist-noisy [--seed 0]

The config's data section and run.seed say what is prepared (its defaults: DataConfig); the short
flags each set one key, after --set. OUTPUT/train/part-NNNNN.parquet (row order kept),
OUTPUT/heldout.parquet and OUTPUT/test.parquet (clean) and OUTPUT/prepare.json are the splits and
corruption a meta-training run with the same data settings and seed builds, usable as
`data: {source: parquet, dir: OUTPUT}`, streamed or not. Class names (an image folder's class
folders) are in prepare.json and each file's schema metadata. OUTPUT is a local path or a URI; a
failure leaves nothing half-written.
"""
from __future__ import annotations

import argparse
import json
import sys

from drray.errors import ConfigError
from jobs.common import add_config_args, job_parser, run_job

# flag: (the config key it sets, how its text is read); applied after --set
ALIASES = {"--source": ("data.source", str), "--dir": ("data.dir", str), "--corrupt": ("data.corruption", str),
           "--seed": ("run.seed", int), "--max-train": ("data.max_train", int), "--seq-len": ("data.seq_len", int),
           "--pattern": ("data.pattern", str), "--text-field": ("data.text_field", str),
           "--heldout-fraction": ("data.heldout_fraction", float), "--test-fraction": ("data.test_fraction", float),
           "--download": ("data.download", None)}


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("prepare", __doc__)
    add_config_args(parser, "YAML config; its data section and run.seed are prepared (every field has a default)")
    parser.add_argument("--output", required=True, help="output directory (local path or URI)")
    parser.add_argument("--shards", type=int, default=1, help="Parquet files for the training split (default 1)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUTPUT")
    for flag, (key, read) in ALIASES.items():
        if read is None:
            parser.add_argument(flag, dest=key, action="store_const", const=True, help=f"sets {key}=true (over --set)")
        else:
            metavar = "KIND:FRACTION[,...]" if flag == "--corrupt" else "VALUE"
            parser.add_argument(flag, dest=key, type=read, metavar=metavar, help=f"sets {key} (over --set)")
    return parser.parse_args(argv)


def parse_corruption(text: str) -> list[dict]:
    """'pixel_noise:0.1,label_flip:0.2' -> [{kind, fraction}, ...]; '' or 'none' -> []."""
    if text.strip().lower() in ("", "none"):
        return []
    specs = []
    for item in text.split(","):
        kind, sep, fraction = item.strip().partition(":")
        if not sep or not kind:
            raise ConfigError(f"--corrupt {text!r}: expected KIND:FRACTION[,KIND:FRACTION...], "
                              "e.g. pixel_noise:0.1,label_flip:0.2")
        try:
            specs.append({"kind": kind, "fraction": float(fraction)})
        except ValueError:
            raise ConfigError(f"--corrupt {item.strip()!r}: fraction {fraction!r} is not a number") from None
    return specs


def run(args: argparse.Namespace) -> dict:
    from drray.config import load_config
    from drray.data.prepare import write_prepared

    typed, given = {}, {}
    for flag, (key, _) in ALIASES.items():
        value = getattr(args, key)
        if value is not None:
            given[key] = parse_corruption(value) if flag == "--corrupt" else value
            typed[f"{key}={json.dumps(given[key])}"] = flag if value is True else f"{flag} {value}"
    cfg = load_config(args.config, args.overrides + list(typed), typed_as=typed)
    return write_prepared(cfg.data, cfg.run.seed, args.output, args.shards, args.overwrite)


def main(argv=None) -> int:
    return run_job(run, parse_args(argv), report=None)


if __name__ == "__main__":
    sys.exit(main())

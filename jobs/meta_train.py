"""Meta-train a DataRater.

    python -m jobs.meta_train --config configs/digits.yaml [--set inner.T=4 ...] [--out DIR] [--resume]
"""
from __future__ import annotations

import argparse
import sys

from drray.config import load_config
from drray.errors import DrrayError


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="drray meta-train", description=__doc__.splitlines()[0])
    parser.add_argument("--config", help="YAML config (every field has a default)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config field; repeatable")
    parser.add_argument("--out", help="output directory (overrides run.out)")
    parser.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier run in OUT")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        overrides = args.overrides + ([f"run.out={args.out}"] if args.out else [])
        cfg = load_config(args.config, overrides)
        from drray.train import format_report, meta_train  # heavy imports after the config is known good

        summary = meta_train(cfg, resume=args.resume, overwrite=args.overwrite)
    except DrrayError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())

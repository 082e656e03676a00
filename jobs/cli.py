"""The `drray` command: `drray SUBCOMMAND [args]` runs `python -m jobs.SUBCOMMAND [args]`."""
from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {"meta-train": "jobs.meta_train", "prepare": "jobs.prepare", "score": "jobs.score", "filter": "jobs.filter",
               "evaluate": "jobs.evaluate", "tune": "jobs.tune"}
SUMMARIES = {"meta-train": "meta-learn a rater (on Ray, or in this process with --set run.backend=local)",
             "prepare": "turn a source (mnist, idx, digits, text, ...) into Parquet, optionally corrupted",
             "score": "add a rater's score column to a Parquet data set (Ray Data)",
             "filter": "keep the best-scored rows of a scored data set (quantile or sample)",
             "evaluate": "train fresh models on curated, random-dropped and loss-filtered data; compare",
             "tune": "Ray Tune search over meta-training settings"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in SUBCOMMANDS:
        known = ", ".join(SUBCOMMANDS)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"error: unknown subcommand {argv[0]!r}; known: {known}", file=sys.stderr)
            return 2
        print(f"usage: drray {{{known}}} [args]   (drray SUBCOMMAND --help for its options)\n")
        print("\n".join(f"  {name:<11} {SUMMARIES[name]}" for name in SUBCOMMANDS))
        return 0
    return importlib.import_module(SUBCOMMANDS[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())

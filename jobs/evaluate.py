"""Evaluate a trained rater: does training on the data it keeps beat training on everything?

    python -m jobs.evaluate --config configs/mnist.yaml --rater RUN_DIR --discard 0.1,0.25,0.5 --seeds 5 --out DIR

Fresh inner models (--arch, by default the config's inner arch; the inner optimizer, lr and batch
size; --steps steps each) are trained from scratch on the config's training split: on all of it
(baseline), and with the paper's batch rule driven by the rater's score (datarater), by a random
score (random drop), by the loss under a reference model trained on the held-out split (loss keeps
the lowest losses, loss_mid the middle, loss_high the highest) and by cleanlab's label quality from
cross-validation on the training split (cleanlab, labelled data), at every --discard fraction;
opt-in, the ground truth as the score (oracle, the bound of any selection). Each selection keeps
every class's share of its draw (evaluate.stratify=label; none to turn it off). The runs and
cleanlab's folds are Ray tasks (a local Ray is started when there is no cluster address). OUT gets
results.json (per method and fraction: test accuracy and loss as mean, std, standard error; n; the
kept fraction per class and its minimum; with ground truth, AUROC and precision of removal; the
checks of the rater's selection against random drop and all the data at every fraction, on test
and held-out metrics, and a warning for each it loses on test), results.md, accuracy.png (test_loss.png on text: language models, judged by test loss) and
scores.png.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

from drray.config import EVALUATE_METHODS, load_config
from drray.errors import ConfigError
from jobs.common import add_address_arg, add_config_args, job_parser, run_job


def parse_args(argv=None) -> argparse.Namespace:
    parser = job_parser("evaluate", __doc__)
    add_config_args(parser, "YAML config of the data and the inner model (every field has a default)")
    parser.add_argument("--rater", help="the --out directory of a meta-train run (needed for the datarater method)")
    parser.add_argument("--discard", help="comma-separated fractions in [0, 1) (default: evaluate.discard, 0.1,0.25,0.5)")
    parser.add_argument("--seeds", type=int, help="seeds per method and fraction (default: evaluate.seeds, 5)")
    parser.add_argument("--steps", type=int, help="training steps of every fresh model (default: evaluate.steps, 1000)")
    parser.add_argument("--methods", help="comma-separated subset of " + ",".join(EVALUATE_METHODS) +
                                          " (default: baseline,datarater,random,loss; oracle is the "
                                          "ground-truth upper bound)")
    parser.add_argument("--arch", help="arch of the fresh models, e.g. cnn_large or transformer_large to measure "
                                       "transfer to a larger model (default: evaluate.arch, else inner.arch)")
    parser.add_argument("--out", required=True, help="output directory (local path or URI)")
    parser.add_argument("--overwrite", action="store_true", help="replace an earlier evaluation in OUT")
    add_address_arg(parser)
    return parser.parse_args(argv)


EVALUATE_FLAGS = ("discard", "seeds", "steps", "methods", "arch")  # each sets evaluate.<same name>


def config_from_args(args: argparse.Namespace):
    given = {flag: getattr(args, flag) for flag in EVALUATE_FLAGS if getattr(args, flag) is not None}
    for flag in ("discard", "methods"):  # comma lists, split here: the text never goes through YAML
        if flag in given:
            given[flag] = [item.strip() for item in given[flag].split(",") if item.strip()]
    if "discard" in given:
        given["discard"] = [_number("--discard", item) for item in given["discard"]]
    overrides = list(args.overrides) + [f"evaluate.{flag}={json.dumps(value)}" for flag, value in given.items()]
    try:
        cfg = load_config(args.config, overrides)
    except ConfigError as exc:  # name the flag the user typed, not the config key it sets
        match = re.match(r"^.*?: evaluate\.(\w+)(?:\.\d+)?: (.*)$", str(exc))
        if match is None or match.group(1) not in given:
            raise
        raise ConfigError(f"--{match.group(1)}: {match.group(2)}") from None
    return cfg


def _number(flag: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{flag}: {text!r} is not a number; give comma-separated fractions, e.g. 0.1,0.25") from None


def main(argv=None) -> int:
    return run_job(run, parse_args(argv))


def run(args: argparse.Namespace) -> str:
    from actors.evaluation import evaluate_rater

    return evaluate_rater(config_from_args(args), args.out, args.rater, args.overwrite, args.address)


if __name__ == "__main__":
    sys.exit(main())

"""Does curation pay on text? Fresh language models trained on the corrupted training set: on all
of it, with the rater's selection (the paper's batch rule: draw B / (1 - discard), keep the top B
by score), with a random selection at the same rate (the control), and on its clean rows only
(an oracle that knows the ground truth).

    python -m benchmarks.text_lm_eval --rater runs/text [--steps 500 --seeds 2 --discard 0.3]

The run's own config (RUN/checkpoint/config.yaml) gives the data (same split and corruption), the
language model (inner.arch), its optimizer's lr and batch size. The metric is the mean next-byte
loss (nats per byte, per-sequence mean) on the clean test split; seed s gives every method the
same initial weights. Results: benchmarks/results/text_lm_eval.json; see docs/text.md.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from drray import checkpoint
from drray.config import validate_config
from drray.data import build_splits, to_tensors
from drray.evaluation import draw_batch
from drray.modality import TextModality
from drray.models import build_inner
from drray.population import derive_seed

ROOT = Path(__file__).resolve().parents[1]
CHUNK = 512


@torch.no_grad()
def rater_scores(rater, examples) -> np.ndarray:
    x, y = to_tensors(examples)
    return torch.cat([rater(xs, ys) for xs, ys in zip(x.split(CHUNK), y.split(CHUNK))]).numpy()


@torch.no_grad()
def test_loss(model, tokens: torch.Tensor) -> float:
    return float(torch.cat([TextModality.losses(model(x), x, None) for x in tokens.split(CHUNK)]).mean())


def train_language_model(cfg, tokens: torch.Tensor, seed: int, steps: int, scores=None, discard=0.0,
                         corrupted=None) -> tuple[torch.nn.Module, float]:
    """A fresh LM after `steps` Adam steps; also the share of corrupted rows among those it trained on."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_inner(cfg.inner.arch, tuple(tokens.shape[1:]), 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=cfg.inner.lr)
    rng = np.random.default_rng(derive_seed(seed, 1))
    seen_corrupted = []
    for _ in range(steps):
        index = draw_batch(rng, len(tokens), cfg.inner.batch_size, scores, discard)
        x = tokens[index]
        loss = TextModality.losses(model(x), x, None).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if corrupted is not None:
            seen_corrupted.append(corrupted[index].mean())
    return model.eval(), float(np.mean(seen_corrupted)) if seen_corrupted else 0.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rater", required=True, help="a meta-train run directory on text")
    parser.add_argument("--steps", type=int, default=500)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--discard", type=float, default=0.3)
    parser.add_argument("--test-rows", type=int, default=2000)
    parser.add_argument("--output", default=str(ROOT / "benchmarks" / "results" / "text_lm_eval.json"))
    args = parser.parse_args(argv)

    cfg = validate_config(checkpoint.load_run_config(args.rater), f"{args.rater}/checkpoint/config.yaml")
    splits = build_splits(cfg.data, cfg.run.seed)
    train, test = splits.train, splits.test
    tokens = to_tensors(train)[0]
    test_tokens = to_tensors(test.subset(np.arange(min(args.test_rows, len(test)))))[0]
    rater, info = checkpoint.load_rater(args.rater)
    scores = rater_scores(rater, train)
    random_scores = np.random.default_rng(derive_seed(cfg.run.seed, 7)).random(len(train))
    clean = np.flatnonzero(~train.is_corrupted)
    methods = {  # name -> (rows, scores, discard)
        "all": (np.arange(len(train)), None, 0.0),
        "datarater": (np.arange(len(train)), scores, args.discard),
        "random": (np.arange(len(train)), random_scores, args.discard),
        "clean only (oracle)": (clean, None, 0.0),
    }
    rows = []
    for name, (subset, method_scores, discard) in methods.items():
        losses, shares, started = [], [], time.perf_counter()
        for seed in range(args.seeds):
            model, share = train_language_model(cfg, tokens[subset], seed, args.steps, method_scores, discard,
                                                train.is_corrupted[subset])
            losses.append(test_loss(model, test_tokens))
            shares.append(share)
        rows.append({"method": name, "test_loss_mean": float(np.mean(losses)), "test_loss_std": float(np.std(losses)),
                     "losses": losses, "corrupted_share_trained_on": float(np.mean(shares)),
                     "seconds": time.perf_counter() - started})
        print(f"{name:<20} test loss {rows[-1]['test_loss_mean']:.4f} +- {rows[-1]['test_loss_std']:.4f}  "
              f"corrupted in its batches {rows[-1]['corrupted_share_trained_on']:.3f}", flush=True)
    result = {"rater": str(args.rater), "rater_step": info["step"], "steps": args.steps, "seeds": args.seeds,
              "discard": args.discard, "batch_size": cfg.inner.batch_size, "arch": cfg.inner.arch,
              "lr": cfg.inner.lr, "test_rows": len(test_tokens), "rows": rows}
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()

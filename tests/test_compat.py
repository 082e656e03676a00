"""A run checkpointed by an earlier drray (tests/data/run-752a5bc: digits, 3 learners, mixflow,
3 of 6 outer steps, written at commit 752a5bc) loads, scores and resumes to the very result that
version reached: the meta-parameters and every metrics line bit for bit. Both were made with one
torch thread, as the suite runs (float sums depend on the thread count): the step-3 run, then its
resume to step 6 in the same process (expected-step6.pt: meta-parameters, outer losses, AUROCs)."""
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from drray.config import load_config
from drray.data.splits import build_splits
from drray.evaluation.fresh import rater_scores
from drray.train import checkpoint
from drray.train.loop import meta_train

SAVED = Path(__file__).parent / "data" / "run-752a5bc"


def test_an_earlier_checkpoint_resumes_to_the_same_result(tmp_path):
    run = tmp_path / "run"
    shutil.copytree(SAVED, run, ignore=shutil.ignore_patterns("expected-*"))
    expected = torch.load(SAVED / "expected-step6.pt", weights_only=True)
    saved_tree = checkpoint.load_run_config(run)
    assert "optimizer" not in saved_tree["meta"]  # the earlier runs' dead key is dropped on load
    cfg = load_config(None, [f"{section}.{key}={json.dumps(value)}" for section, keys in saved_tree.items()
                             for key, value in keys.items() if key != "out"] + [f"run.out={run}", "meta.steps=6"])
    meta_train(cfg, resume=True)
    params = checkpoint.load_state(run)["population"]["meta"]["params"]
    assert len(params) == len(expected["params"])
    assert all(torch.equal(a, b) for a, b in zip(params, expected["params"]))
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["outer_loss"] for r in lines] == expected["outer_loss"]
    assert [r.get("probe_auroc") for r in lines] == expected["auroc"]


def test_an_earlier_rater_checkpoint_loads_and_scores(tmp_path):
    rater, info = checkpoint.load_rater(SAVED)
    assert info["row_shape"] == [8, 8] and info["num_classes"] == 10 and info["arch"] == "mlp"  # was image_shape
    splits = build_splits(load_config(None, ["data.max_train=400"]).data, 0)
    scores = rater_scores(rater, splits.probe)
    assert scores.shape == (len(splits.probe),) and np.isfinite(scores).all() and scores.std() > 0

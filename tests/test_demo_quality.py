"""The demo's promise, seeded: meta-training on digits with 30% corruption (half pixel noise,
half label flips) gives a rater whose probe AUROC is at least 0.9."""
from pathlib import Path

import pytest

from drray.config import load_config
from drray.train.loop import meta_train


@pytest.mark.slow
def test_demo_config_reaches_auroc_0_9(tmp_path):
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "digits.yaml", [f"run.out={tmp_path / 'demo'}", "run.log_every=500"])
    assert {c.kind: c.fraction for c in cfg.data.corruption} == {"pixel_noise": 0.15, "label_flip": 0.15}
    summary = meta_train(cfg)
    assert summary.auroc >= 0.9
    assert summary.mean_score_clean > summary.mean_score_corrupted

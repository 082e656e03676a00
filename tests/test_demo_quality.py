"""The demo's promise, seeded: meta-training on digits with 30% corruption (half pixel noise,
half label flips) gives a rater whose probe AUROC is at least 0.9."""
from pathlib import Path

import pytest
import torch

from drray.config import load_config
from drray.train import meta_train


@pytest.fixture
def one_torch_thread():
    """As each of the demo's Ray workers has. With OMP_WAIT_POLICY=PASSIVE (set for the suite),
    two threads run this small MLP at half the speed (150 steps: 15.1 s against 8.2 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_demo_config_reaches_auroc_0_9(tmp_path, one_torch_thread):
    cfg = load_config(Path(__file__).resolve().parents[1] / "configs" / "digits.yaml", [f"run.out={tmp_path / 'demo'}", "run.log_every=500"])
    assert {c.kind: c.fraction for c in cfg.data.corruption} == {"pixel_noise": 0.15, "label_flip": 0.15}
    summary = meta_train(cfg)
    assert summary.auroc >= 0.9
    assert summary.mean_score_clean > summary.mean_score_corrupted

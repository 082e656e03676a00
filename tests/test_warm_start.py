"""Warm start: the rater begins as a held-out classifier (the same on Ray: test_ray_population),
and a rater that cannot classify is refused before any output."""
from pathlib import Path

import pytest
import torch

from drray.config import load_config
from drray.data.splits import build_splits
from drray.errors import ConfigError
from drray.train.loop import Prober, make_population, meta_train

ROOT = Path(__file__).resolve().parents[1]
TINY = ["data.source=digits", "data.max_train=400", "data.probe_size=300", "population.size=2",
        "inner.batch_size=32", "meta.outer_batch_size=32", "meta.steps=2", "rater.arch=cnn_classifier",
        "data.corruption=[{kind: label_flip, fraction: 0.3}]"]


def tiny(tmp_path, *extra):
    return load_config(None, TINY + [f"run.out={tmp_path / 'run'}", *extra])


def initial_auroc(cfg) -> float:
    splits = build_splits(cfg.data, cfg.run.seed)
    return Prober(cfg, splits).auroc(make_population(cfg, splits).rater_params)


def test_warm_started_rater_ranks_flips_low_before_any_meta_step(tmp_path):
    cold = initial_auroc(tiny(tmp_path))
    warm = initial_auroc(tiny(tmp_path, "rater.warm_start_steps=300", "rater.warm_start_lr=3e-3"))
    assert cold < 0.75  # a random rater: about chance
    assert warm >= 0.93  # the held-out classifier gives a wrong label a low log-probability


def test_warm_start_is_seeded(tmp_path):
    cfg = tiny(tmp_path, "rater.warm_start_steps=20")
    splits = build_splits(cfg.data, cfg.run.seed)
    a, b = make_population(cfg, splits).rater_params, make_population(cfg, splits).rater_params
    cold = make_population(tiny(tmp_path), splits).rater_params
    assert all(torch.equal(x, y) for x, y in zip(a, b))
    assert any(not torch.equal(x, y) for x, y in zip(a, cold))


def test_a_rater_that_does_not_classify_is_refused_before_output(tmp_path):
    out = tmp_path / "text-run"
    cfg = load_config(ROOT / "configs" / "text-tiny.yaml",
                      [f"run.out={out}", f"data.dir={ROOT.parent / 'shared' / 'data' / 'text'}",
                       "run.backend=local", "rater.warm_start_steps=10"])
    with pytest.raises(ConfigError, match=r"rater.warm_start_steps=10: rater 'transformer_tiny' does not classify"):
        meta_train(cfg)
    assert not out.exists()

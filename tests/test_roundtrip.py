"""The curation pipeline as a user runs it on real MNIST: meta-train a small rater on 40% label
flips, then prepare -> score -> filter; the filter's summary must show the corrupted rows going
first."""
import json
from pathlib import Path

import pytest

from drray.config import load_config
from drray.train.loop import meta_train
from jobs.filter import main as filter_main
from jobs.prepare import main as prepare_main
from jobs.score import main as score_main

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
SMALL_RATER = [  # ~10 s on 2 cores; probe AUROC ~0.93 (measured)
    "run.backend=local", "data.max_train=3000", "data.probe_size=1000", "rater.arch=mlp", "inner.arch=mlp",
    "population.size=2", "population.lifetime=50", "inner.T=1", "inner.batch_size=64", "meta.outer_batch_size=64",
    "meta.steps=400", "meta.lr=3e-4", "run.auroc_every=400", "run.log_every=400"]


def run(main, capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_prepare_score_filter_removes_corrupted_rows_first(ray_cluster, tmp_path, capsys):
    cfg = load_config(ROOT / "configs" / "mnist.yaml", SMALL_RATER + [f"data.dir={MNIST}", f"run.out={tmp_path / 'rater'}"])
    assert meta_train(cfg).auroc > 0.85
    run(prepare_main, capsys, "--source", "mnist", "--dir", MNIST, "--corrupt", "label_flip:0.4", "--max-train", 3000,
        "--shards", 2, "--output", tmp_path / "data")
    run(score_main, capsys, "--rater", tmp_path / "rater", "--input", tmp_path / "data" / "train", "--output",
        tmp_path / "scored", "--address", ray_cluster)
    summaries = {}
    for discard in (0.1, 0.4):
        out = tmp_path / f"curated-{discard}"
        run(filter_main, capsys, "--input", tmp_path / "scored", "--discard", discard, "--output", out,
            "--address", ray_cluster)
        summaries[discard] = json.loads((out / "summary.json").read_text())
    first, more = summaries[0.1], summaries[0.4]
    assert first["rows_in"] == 3000 and first["corrupted_fraction_in"] == pytest.approx(0.4)
    assert first["removal_precision"] > 0.9  # the lowest-scored 10%: almost all corrupted
    assert more["removal_precision"] > 0.7 and more["corrupted_fraction_kept"] < 0.25
    assert first["removal_precision"] > more["removal_precision"]  # the worst go first
    assert first["auroc"] == pytest.approx(more["auroc"]) and first["auroc"] > 0.85

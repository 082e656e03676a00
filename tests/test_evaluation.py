"""The evaluation study: the selection rule, the statistics (hand-worked), curation with an oracle
score beating all the data, and the job end to end with its bad-input errors."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drray.config import load_config
from drray.data.splits import build_splits
from drray.evaluation import experiment as ev

ROOT = Path(__file__).resolve().parents[1]


def test_draw_batch_keeps_the_top_b_of_n():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    scores = np.random.default_rng(0).random(1000)
    kept = ev.draw_batch(rng_a, 1000, 32, scores, discard=0.5)
    drawn = rng_b.integers(1000, size=64)  # N = 32 / (1 - 0.5)
    assert len(kept) == 32
    assert sorted(scores[kept]) == sorted(np.sort(scores[drawn])[-32:])
    assert len(ev.draw_batch(np.random.default_rng(0), 1000, 32)) == 32


ACCURACY, TEST_LOSS = ev.METRICS["image"], ev.METRICS["text"]


def hand_runs(baseline: list, datarater: list, key: str) -> list[dict]:
    other = "test_loss" if key == "acc" else "acc"
    return [{"method": m, "discard": d, "seed": s, key: v, other: 0.0, "heldout_loss": 1.0}
            for m, d, values in (("baseline", 0.0, baseline), ("datarater", 0.5, datarater))
            for s, v in enumerate(values)]


def test_aggregate_and_paired_difference_by_hand():
    runs = hand_runs([0.90, 0.92, 0.94], [0.93, 0.96, 0.96], "acc")
    rows = ev.aggregate(runs)
    base = rows[0]
    assert (base["method"], base["n"]) == ("baseline", 3)
    assert base["acc_mean"] == pytest.approx(0.92) and base["acc_std"] == pytest.approx(0.02)
    assert base["acc_se"] == pytest.approx(0.02 / math.sqrt(3))
    # paired differences 0.03, 0.04, 0.02: mean 0.03, std 0.01, se 0.01 / sqrt(3)
    d = ev.paired_difference(runs, ("datarater", 0.5), ("baseline", 0.0), ACCURACY)
    assert d["diff"] == pytest.approx(0.03) and d["se"] == pytest.approx(0.01 / math.sqrt(3)) and d["n"] == 3
    (verdict,) = ev.verdicts(runs, rows, ACCURACY)
    assert verdict["rival"] == "baseline" and verdict["beats"]  # 0.03 > 2 * 0.0058
    runs[3]["acc"] = 0.85  # differences -0.05, 0.04, 0.02: no longer 2 standard errors apart
    assert not ev.verdicts(runs, ev.aggregate(runs), ACCURACY)[0]["beats"]


def test_a_loss_metric_counts_lower_as_better_by_hand():
    """Text models are judged by test loss: the rater's lower losses are a positive difference,
    and its best fraction is the one of lowest mean loss."""
    runs = hand_runs([2.40, 2.38, 2.39], [2.37, 2.34, 2.37], "test_loss")
    runs += [{**r, "discard": 0.1, "test_loss": r["test_loss"] + 0.05} for r in runs if r["method"] == "datarater"]
    rows = ev.aggregate(runs)
    assert ev.best_row(rows, "datarater", TEST_LOSS)["discard"] == 0.5
    # paired gains 0.03, 0.04, 0.02 (baseline minus rater): mean 0.03, se 0.01 / sqrt(3)
    (verdict,) = ev.verdicts(runs, rows, TEST_LOSS)
    assert verdict["diff"] == pytest.approx(0.03) and verdict["se"] == pytest.approx(0.01 / math.sqrt(3))
    assert verdict["beats"] and verdict["metric"] == "test_loss" and verdict["datarater_discard"] == 0.5
    worse = [{**r, "test_loss": r["test_loss"] + 0.1 * (r["method"] == "datarater")} for r in runs]
    (verdict,) = ev.verdicts(worse, ev.aggregate(worse), TEST_LOSS)  # the rater's losses now higher
    assert verdict["diff"] == pytest.approx(-0.07) and not verdict["beats"]


def test_eval_subset_is_a_fixed_seeded_subset_in_stored_order():
    splits = build_splits(load_config(None, ["data.source=digits"]).data, 0)
    test = splits.test
    assert ev.eval_subset(test, None, 0) is test and ev.eval_subset(test, len(test), 0) is test
    a, b, c = (ev.eval_subset(test, 50, seed) for seed in (0, 0, 1))
    assert len(a) == 50 and np.array_equal(a.ids, b.ids) and not np.array_equal(a.ids, c.ids)
    position = {row_id: i for i, row_id in enumerate(test.ids)}
    where = [position[row_id] for row_id in a.ids]
    assert where == sorted(where) and np.array_equal(a.rows, test.rows[where])
    data = ev.shared_arrays(splits, {}, max_eval_rows=50)
    assert len(data["test_labels"]) == 50 and len(data["heldout_labels"]) == 50
    assert len(data["train_labels"]) == len(splits.train)  # training data is never cut


def test_selection_quality_by_hand():
    scores = np.array([0.1, 0.9, 0.2, 0.8, 0.7, 0.3, 0.6, 0.5, 0.4, 1.0])
    corrupted = np.array([1, 0, 1, 0, 0, 0, 0, 0, 1, 0], dtype=bool)
    q = ev.selection_quality(scores, corrupted, discard=0.2)  # removes 0.1 and 0.2: both corrupted
    assert q["removal_precision"] == 1.0 and q["corrupted_removed_fraction"] == pytest.approx(2 / 3)
    q = ev.selection_quality(scores, corrupted, discard=0.4)  # also 0.3 (clean) and 0.4 (corrupted)
    assert q["removal_precision"] == 0.75 and q["corrupted_removed_fraction"] == 1.0


def test_oracle_scores_beat_all_the_data_under_label_flips():
    """The whole selection path: with a score that knows the corrupted rows, curated training
    must beat training on everything (and a random score must not)."""
    cfg = load_config(None, ["data.source=digits", "data.corruption=[{kind: label_flip, fraction: 0.6}]"])
    splits = build_splits(cfg.data, 0)
    budget = dataclasses.replace(ev.Budget.from_config(cfg), arch="mlp", steps=300, batch_size=64)
    oracle = -splits.train.is_corrupted.astype(np.float64)
    data = ev.shared_arrays(splits, {"datarater": oracle})
    accs = {m: np.mean([ev.run_one(ev.RunSpec(m, 0.0 if m == "baseline" else 0.6, s), data, budget)["acc"]
                        for s in range(2)]) for m in ("baseline", "datarater", "random")}
    assert accs["datarater"] > accs["baseline"] + 0.03, accs
    assert accs["datarater"] > accs["random"] + 0.03, accs


def run_job(*args):
    return subprocess.run([sys.executable, "-m", "jobs.evaluate", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def digits_rater(tmp_path_factory):
    out = tmp_path_factory.mktemp("rater")
    result = subprocess.run([sys.executable, "-m", "jobs.meta_train", "--config", "configs/digits.yaml", "--out",
                             str(out), "--set", "run.backend=local", "--set", "meta.steps=3",
                             "--set", "population.size=2"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    return out


def test_evaluate_job_end_to_end(tmp_path, digits_rater, ray_cluster):
    out = tmp_path / "eval"
    result = run_job("--config", "configs/digits.yaml", "--rater", str(digits_rater), "--discard", "0.1,0.3",
                     "--seeds", "2", "--steps", "20", "--out", str(out), "--address", ray_cluster)
    assert result.returncode == 0, result.stderr
    assert "14/14 done" in result.stdout and "| datarater | 0.3 |" in result.stdout
    payload = json.loads((out / "results.json").read_text())
    keys = [(r["method"], r["discard"], r["n"]) for r in payload["rows"]]
    assert keys == [("baseline", 0.0, 2)] + [(m, d, 2) for m in ("datarater", "random", "loss") for d in (0.1, 0.3)]
    for row in payload["rows"]:
        assert 0.0 <= row["acc_mean"] <= 1.0 and row["acc_std"] >= 0.0 and row["test_loss_mean"] > 0.0
        assert (row.get("auroc") is None) == (row["method"] == "baseline")
    assert len(payload["runs"]) == 14 and payload["verdicts"] and payload["meta"]["metric"] == "acc"
    for name in ("results.md", "accuracy.png", "scores.png"):
        assert (out / name).stat().st_size > 0
    again = run_job("--config", "configs/digits.yaml", "--rater", str(digits_rater), "--out", str(out))
    assert again.returncode == 2 and "already holds an evaluation" in again.stderr


@pytest.mark.parametrize("args,expected", [
    (["--discard", "0.1,1.0"], "error: --discard: each discard fraction must be in [0, 1); 1.0 is not (got [0.1, 1.0])"),
    (["--discard", "-0.2"], "must be in [0, 1); -0.2 is not (got [-0.2])"),
    (["--discard", "0.1]"], "error: --discard: '0.1]' is not a number"),  # the flag's text is not YAML
    (["--seeds", "0"], "error: --seeds: Input should be greater than or equal to 1 (got 0)"),
    (["--methods", ""], "error: --methods: give at least one method"),
    (["--methods", "baseline,magic"], "error: --methods: Input should be 'baseline'"),
    (["--methods", "baseline,oracle", "--set", "data.corruption=[]"], "the oracle method needs ground truth"),
    (["--set", "data.source=idx", "--set", "data.dir=../shared/data/mnist"], "was trained on 8x8 images"),
    (["--set", "inner.arch=nope"], "inner.arch: unknown arch 'nope'; allowed: auto,"),  # before any Ray task
])
def test_bad_input_is_one_line_before_any_work(tmp_path, digits_rater, args, expected):
    out = tmp_path / "eval"
    result = run_job("--config", "configs/digits.yaml", "--rater", str(digits_rater), "--out", str(out), *args)
    assert result.returncode == 2, result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], lines
    assert not out.exists()


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, digits_rater):
    (tmp_path / "a_file").write_text("x")
    result = run_job("--config", "configs/digits.yaml", "--rater", str(digits_rater), "--out", str(tmp_path / "a_file"))
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: --out {tmp_path / 'a_file'} is a file; give a folder (new or empty) for the outputs"]
    assert (tmp_path / "a_file").read_text() == "x"


def test_missing_rater_is_one_line(tmp_path):
    result = run_job("--config", "configs/digits.yaml", "--rater", str(tmp_path / "nope"), "--out", str(tmp_path / "e"))
    assert result.returncode == 2 and "no rater checkpoint" in result.stderr

"""The evaluation study: the selection rule (stratified by class or not) and the kept fractions per
class, the statistics (hand-worked), the rivals' scores (loss, loss_mid, loss_high by hand;
cleanlab from out-of-fold models only), the fresh models' arch, curation with an oracle score
beating all the data, and the job end to end with its bad-input errors."""
import dataclasses
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from drray import seeds
from drray.config import load_config
from drray.data.splits import build_splits
from drray.errors import ConfigError
from drray.evaluation import experiment as ev
from drray.evaluation import fresh, rivals
from drray.seeds import derive_seed

ROOT = Path(__file__).resolve().parents[1]


def test_draw_batch_keeps_the_top_b_of_n():
    rng_a, rng_b = np.random.default_rng(3), np.random.default_rng(3)
    scores = np.random.default_rng(0).random(1000)
    kept = fresh.draw_batch(rng_a, 1000, 32, scores, discard=0.5)
    drawn = rng_b.integers(1000, size=64)  # N = 32 / (1 - 0.5)
    assert len(kept) == 32
    assert sorted(scores[kept]) == sorted(np.sort(scores[drawn])[-32:])
    assert len(fresh.draw_batch(np.random.default_rng(0), 1000, 32)) == 32


class FixedDraws:
    """A generator stand-in whose draws are given: draw_batch's rows, by hand."""

    def __init__(self, drawn, ties=None):
        self.drawn, self.ties = np.asarray(drawn), ties

    def integers(self, n, size):
        assert size == len(self.drawn) and self.drawn.max() < n
        return self.drawn

    def random(self, size):
        """The tie-break keys of the class quotas: all equal (the lower class first) unless given."""
        return np.zeros(size) if self.ties is None else np.asarray(self.ties)


def test_stratified_draw_batch_keeps_each_class_share_by_hand():
    """B = 4 of N = 8 drawn rows (discard 0.5): six of class 0, two of class 1, whose scores are
    the lowest. Stratified, class 1 keeps its quarter (its better row, 7); unstratified, none."""
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 2])
    scores = np.array([0.9, 0.5, 0.8, 0.6, 0.7, 0.95, 0.1, 0.2, 1.0])
    drawn = [0, 1, 2, 3, 4, 5, 6, 7]
    kept = fresh.draw_batch(FixedDraws(drawn), 9, 4, scores, 0.5, labels)
    assert sorted(kept.tolist()) == [0, 2, 5, 7]  # class 0: its 3 best (0.95, 0.9, 0.8); class 1: 0.2
    assert sorted(fresh.draw_batch(FixedDraws(drawn), 9, 4, scores, 0.5).tolist()) == [0, 2, 4, 5]
    # 3 of class 0, 3 of class 1, 2 of class 2 drawn, keep 4: shares 1.5, 1.5, 1 -> 2, 1, 1
    # (largest remainder, the tie to the class with the lower tie key: equal keys, the lower class)
    drawn = [0, 1, 2, 6, 7, 6, 8, 8]
    kept = fresh.draw_batch(FixedDraws(drawn), 9, 4, scores, 0.5, labels)
    assert np.bincount(labels[kept], minlength=3).tolist() == [2, 1, 1]
    assert sorted(kept.tolist()) == [0, 2, 7, 8]
    kept = fresh.draw_batch(FixedDraws(drawn, ties=[0.9, 0.1, 0.5]), 9, 4, scores, 0.5, labels)
    assert np.bincount(labels[kept], minlength=3).tolist() == [1, 2, 1]
    assert sorted(kept.tolist()) == [0, 6, 7, 8]


def test_text_and_stratify_none_are_not_stratified():
    cfg = load_config(None, ["data.source=digits"])
    assert fresh.Budget.from_config(cfg).stratifies(10)
    assert not fresh.Budget.from_config(cfg).stratifies(1)  # text: one class
    assert not fresh.Budget.from_config(load_config(None, ["evaluate.stratify=none"])).stratifies(10)


def independent_kept_counts(spec, labels, scores, budget, num_classes):
    """The batches of a run replayed by hand: the same draws, the top B by a plain sort (scores
    without ties), per class the drawn and kept counts."""
    rng = np.random.default_rng(derive_seed(spec.seed, seeds.FRESH_MODEL_BATCHES))
    drawn_count, kept_count = np.zeros(num_classes), np.zeros(num_classes)
    for _ in range(budget.steps):
        drawn = rng.integers(len(labels), size=int(round(budget.batch_size / (1 - spec.discard))))
        kept = drawn[np.argsort(-scores[drawn])[:budget.batch_size]]
        drawn_count += np.bincount(labels[drawn], minlength=num_classes)
        kept_count += np.bincount(labels[kept], minlength=num_classes)
    return drawn_count, kept_count


def test_kept_fractions_per_class_match_an_independent_count():
    """A score that grows with the label: unstratified, the low classes are starved, and the
    fractions in the results are those of a hand replay of the draws; stratified, every class
    keeps about half of its draws (discard 0.5; rounding: within one row a batch)."""
    cfg = load_config(None, ["data.source=digits", "evaluate.stratify=none"])
    splits = build_splits(cfg.data, 0)
    labels = splits.train.labels
    scores = labels + np.random.default_rng(0).random(len(labels))  # no ties
    data = ev.shared_arrays(splits, {"datarater": scores}, max_eval_rows=50)
    budget = dataclasses.replace(fresh.Budget.from_config(cfg), arch="mlp", steps=6, batch_size=32)
    specs = [ev.RunSpec("datarater", 0.5, s) for s in (0, 1)]
    runs = [ev.run_one(spec, data, budget) for spec in specs]
    expected = []
    for spec, run in zip(specs, runs):
        drawn, kept = independent_kept_counts(spec, labels, scores, budget, 10)
        expected.append(kept / drawn)
        assert run["kept_fraction_by_class"] == pytest.approx((kept / drawn).tolist())
    (row,) = ev.aggregate(runs)
    assert row["kept_fraction_by_class"] == pytest.approx(np.mean(expected, axis=0).tolist())
    assert row["min_class_kept_fraction"] == pytest.approx(np.mean(expected, axis=0).min())
    assert row["min_class_kept_fraction"] < 0.05  # the low classes starved
    stratified = [ev.run_one(spec, data, dataclasses.replace(budget, stratify=True)) for spec in specs]
    for spec, run in zip(specs, stratified):
        drawn, _ = independent_kept_counts(spec, labels, scores, budget, 10)
        assert np.all(np.abs(np.array(run["kept_fraction_by_class"]) * drawn - drawn / 2) <= budget.steps)
    assert ev.aggregate(stratified)[0]["min_class_kept_fraction"] > 0.4


def test_kept_fractions_skip_a_class_never_drawn():
    per_seed = ([0.2, 0.6, math.nan], [0.4, 0.8, math.nan])  # class 2 never drawn
    runs = [{"method": "datarater", "discard": 0.5, "seed": s, "acc": 0.5, "test_loss": 1.0, "heldout_loss": 1.0,
             "kept_fraction_by_class": fractions} for s, fractions in enumerate(per_seed)]
    (row,) = ev.aggregate(runs)
    assert row["kept_fraction_by_class"][:2] == pytest.approx([0.3, 0.7])
    assert math.isnan(row["kept_fraction_by_class"][2])
    assert row["min_class_kept_fraction"] == pytest.approx(0.3)


def test_loss_scores_rank_by_hand():
    """losses 0.3, 2.0, 0.1, 0.9, 5.0: rank quantiles 0.25, 0.75, 0, 0.5, 1. loss keeps the
    easy rows, loss_high the hard ones, loss_mid the rows nearest the median (0.9), then the
    quartiles, then the extremes."""
    losses = np.array([0.3, 2.0, 0.1, 0.9, 5.0])
    assert rivals.loss_rank_quantiles(losses).tolist() == [0.25, 0.75, 0.0, 0.5, 1.0]
    scores = rivals.loss_scores(losses, ["loss", "loss_mid", "loss_high"])
    assert scores["loss_mid"].tolist() == [-0.25, -0.25, -0.5, 0.0, -0.5]
    order = {m: np.argsort(-s, kind="stable").tolist() for m, s in scores.items()}
    assert order["loss"] == [2, 0, 3, 1, 4] and order["loss_high"] == [4, 1, 3, 0, 2]
    assert order["loss_mid"][0] == 3 and set(order["loss_mid"][1:3]) == {0, 1} and set(order["loss_mid"][3:]) == {2, 4}
    assert list(rivals.loss_scores(losses, ["baseline", "loss_high"])) == ["loss_high"]


def test_one_reference_model_scores_loss_loss_mid_and_loss_high(monkeypatch):
    cfg = load_config(None, ["data.source=digits", "evaluate.steps=3",
                             'evaluate.methods=["baseline", "loss", "loss_mid", "loss_high"]'])
    splits = build_splits(cfg.data, 0)
    trained = []
    real = fresh.train_fresh
    monkeypatch.setattr(rivals, "train_fresh", lambda *a, **k: trained.append(real(*a, **k)) or trained[-1])
    scores = ev.method_scores(cfg, splits)
    assert len(trained) == 1 and set(scores) == {"loss", "loss_mid", "loss_high"}
    losses = fresh.per_example_losses(trained[0], splits.train.rows, splits.train.labels)
    assert np.allclose(scores["loss"], -losses) and np.allclose(scores["loss_high"], losses)
    q = (np.argsort(np.argsort(losses, kind="stable"), kind="stable")) / (len(losses) - 1)
    assert np.allclose(scores["loss_mid"], -np.abs(q - 0.5))


def test_cleanlab_scores_come_only_from_models_that_never_saw_the_row(monkeypatch):
    """Every fold model's training rows and predicted rows are disjoint, each training row is
    predicted once, the folds are stratified, and the scores are cleanlab's on the recorded
    out-of-fold probabilities."""
    from cleanlab.rank import get_label_quality_scores

    cfg = load_config(None, ["data.source=digits", "evaluate.steps=3", "evaluate.folds=3"])
    splits = build_splits(cfg.data, 0)
    rows = splits.train.rows
    where = {row.tobytes(): i for i, row in enumerate(rows)}
    assert len(where) == len(rows)  # unique rows: a row's bytes name its index
    trained_on, predicted = [], []
    real_train, real_predict = fresh.train_fresh, fresh.class_probabilities

    def recording_train(budget, train_rows, *args, **kwargs):
        trained_on.append({where[row.tobytes()] for row in train_rows})
        return real_train(budget, train_rows, *args, **kwargs)

    def recording_predict(model, predict_rows):
        probabilities = real_predict(model, predict_rows)
        predicted.append(([where[row.tobytes()] for row in predict_rows], probabilities))
        return probabilities

    monkeypatch.setattr(rivals, "train_fresh", recording_train)
    monkeypatch.setattr(rivals, "class_probabilities", recording_predict)
    scores = rivals.cleanlab_scores(fresh.Budget.from_config(cfg), splits, 3, 0)
    assert len(trained_on) == len(predicted) == 3
    out_of_fold = np.full((len(rows), 10), np.nan)
    for seen, (index, probabilities) in zip(trained_on, predicted):
        assert not seen & set(index) and len(seen) + len(index) == len(rows)
        assert np.isnan(out_of_fold[index]).all()  # predicted once
        out_of_fold[index] = probabilities
        shares = np.bincount(splits.train.labels[index], minlength=10) / np.bincount(splits.train.labels)
        assert np.all(np.abs(shares - 1 / 3) < 0.02)  # stratified: a third of every class
    assert not np.isnan(out_of_fold).any()
    assert np.allclose(scores, get_label_quality_scores(splits.train.labels, out_of_fold))
    assert np.allclose(scores, out_of_fold[np.arange(len(rows)), splits.train.labels])  # self-confidence


def test_stratified_folds_by_hand():
    labels = np.array([0] * 7 + [1] * 5)
    folds = rivals.stratified_folds(labels, 3, seed=4)
    assert [np.bincount(labels[folds == f], minlength=2).tolist() for f in range(3)] == [[3, 1], [2, 2], [2, 2]]
    assert not np.array_equal(folds, rivals.stratified_folds(labels, 3, seed=5))


def test_cleanlab_bad_input_is_one_line():
    text = load_config("configs/text-tiny.yaml", ['evaluate.methods=["baseline", "cleanlab"]'])
    with pytest.raises(ConfigError, match=r"^the cleanlab method scores labels, but the training set of data text "
                                          r"has 1 class \(text has no labels\); leave cleanlab out of --methods$"):
        ev.check_setup(text, build_splits(text.data, 0))
    with pytest.raises(ConfigError, match=r"^the cleanlab method: class 1 has 1 training rows, fewer than "
                                          r"evaluate.folds=2; leave cleanlab out of --methods$"):
        ev.check_cleanlab_fits(np.array([0, 0, 0, 1]), 2, "x")


def test_evaluate_arch_builds_the_fresh_models(monkeypatch):
    """evaluate.arch replaces inner.arch (auto: mlp on digits) for the fresh models and the
    reference model, and is recorded in the meta; an unknown one is refused under its own key."""
    cfg = load_config(None, ["data.source=digits", "evaluate.arch=cnn_large", "evaluate.steps=1"])
    splits = build_splits(cfg.data, 0)
    budget = fresh.Budget.from_config(cfg)
    built = []
    real = fresh.build_inner
    monkeypatch.setattr(fresh, "build_inner", lambda *a: built.append(real(*a)) or built[-1])
    ev.run_one(ev.RunSpec("baseline", 0.0, 0), ev.shared_arrays(splits, {}, max_eval_rows=20), budget)
    ev.method_scores(cfg, splits)  # the loss method's reference model
    large = sum(p.numel() for p in real("cnn_large", (8, 8), 10).parameters())
    assert [sum(p.numel() for p in model.parameters()) for model in built] == [large, large] and large > 900_000
    assert ev.describe_setup(cfg, budget, splits, 0.0)["arch"] == "cnn_large"
    default = load_config(None, ["data.source=digits"])
    assert ev.describe_setup(default, fresh.Budget.from_config(default), splits, 0.0)["arch"] == "mlp"
    bad = load_config(None, ["data.source=digits", "evaluate.arch=nope", 'evaluate.methods=["baseline"]'])
    with pytest.raises(ConfigError, match=r"^evaluate.arch: unknown arch 'nope'; allowed: auto, "):
        ev.check_setup(bad, splits)


ACCURACY, TEST_LOSS = ev.METRICS["image"], ev.METRICS["text"]


def hand_runs(baseline: list, datarater: list, key: str) -> list[dict]:
    other = "test_loss" if key == "acc" else "acc"
    return [{"method": m, "discard": d, "seed": s, key: v, other: 0.0, "heldout_loss": 1.0,
             "kept_fraction_by_class": [1.0]}
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


def test_selection_checks_flag_a_rater_worse_than_random_drop_by_hand():
    """At each fraction: the rater against random drop there and against all the data, on the
    test metric and on the held-out split's; worse = the control better by more than 2 SE."""
    def runs_of(method, discard, accs, heldout_accs):
        return [{"method": method, "discard": discard, "seed": s, "acc": a, "heldout_acc": h}
                for s, (a, h) in enumerate(zip(accs, heldout_accs))]
    runs = (runs_of("baseline", 0.0, [0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
            + runs_of("random", 0.2, [0.90, 0.91, 0.92], [0.80, 0.81, 0.82])
            + runs_of("datarater", 0.2, [0.88, 0.88, 0.90], [0.81, 0.80, 0.84]))
    checks = ev.selection_checks(runs, ACCURACY, ev.HELDOUT_METRICS["image"])
    assert [(c["discard"], c["control"]) for c in checks] == [(0.2, "random"), (0.2, "baseline")]
    # test: differences -0.02, -0.03, -0.02: mean -0.0233, se 0.00333 -> worse
    assert checks[0]["test_diff"] == pytest.approx(-0.07 / 3) and checks[0]["test_se"] == pytest.approx(0.01 / 3)
    assert checks[0]["test_worse"]
    # held-out: differences +0.01, -0.01, +0.02 -> not worse
    assert checks[0]["heldout_diff"] == pytest.approx(0.02 / 3) and not checks[0]["heldout_worse"]
    against_random, against_all = ev.selection_warnings(checks, ACCURACY)
    assert against_random.startswith("the rater's selection at discard 0.2 is worse than random drop by "
                                     "2.33 ± 0.33 points of test accuracy (3 seeds): its ranking does harm")
    assert against_all.startswith("curating with the rater at discard 0.2 is worse than all the data by 2.33")
    runs[-1]["acc"] = 0.93  # differences -0.02, -0.03, +0.01: within 2 SE
    assert not ev.selection_warnings(ev.selection_checks(runs, ACCURACY, ev.HELDOUT_METRICS["image"]), ACCURACY)
    one_seed = [r for r in runs if r["seed"] == 0]  # no standard error: never called worse
    (check, _) = ev.selection_checks(one_seed, ACCURACY, ev.HELDOUT_METRICS["image"])
    assert check["test_n"] == 1 and math.isnan(check["test_se"]) and not check["test_worse"]


def test_a_loss_metric_check_counts_higher_loss_as_worse():
    runs = [{"method": m, "discard": d, "seed": s, "test_loss": v + 0.1 * s, "heldout_loss": 1.0}
            for m, d, v in (("random", 0.3, 2.0), ("datarater", 0.3, 2.05)) for s in range(3)]
    runs[-1]["test_loss"] += 0.001  # differences -0.05, -0.05, -0.051: a spread for the standard error
    (check,) = ev.selection_checks(runs, TEST_LOSS, ev.HELDOUT_METRICS["text"])
    assert check["test_diff"] == pytest.approx(-0.0503333) and check["test_worse"] and not check["heldout_worse"]
    assert "by 0.0503 ± 0.0003 nats/byte of test loss" in ev.selection_warnings([check], TEST_LOSS)[0]


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
    budget = dataclasses.replace(fresh.Budget.from_config(cfg), arch="mlp", steps=300, batch_size=64)
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
    assert [(c["discard"], c["control"]) for c in payload["checks"]] == [
        (d, control) for d in (0.1, 0.3) for control in ("random", "baseline")]
    assert all(0.0 <= r["heldout_acc"] <= 1.0 for r in payload["runs"])
    assert "| discard | control | test difference |" in result.stdout
    assert len(payload["warnings"]) == sum(c["test_worse"] for c in payload["checks"])
    for name in ("results.md", "accuracy.png", "scores.png"):
        assert (out / name).stat().st_size > 0
    again = run_job("--config", "configs/digits.yaml", "--rater", str(digits_rater), "--out", str(out))
    assert again.returncode == 2 and "already holds an evaluation" in again.stderr


def test_evaluate_job_with_the_rivals_and_a_larger_arch(tmp_path, digits_rater, ray_cluster):
    """loss_mid, loss_high and cleanlab (its folds Ray tasks) against the rater, fresh models of
    --arch cnn_large, selections stratified by class (every class keeps ~70% at discard 0.3)."""
    out = tmp_path / "eval"
    result = run_job("--config", "configs/digits.yaml", "--rater", str(digits_rater), "--methods",
                     "baseline,datarater,loss_mid,loss_high,cleanlab", "--arch", "cnn_large", "--discard", "0.3",
                     "--seeds", "2", "--steps", "4", "--set", "evaluate.folds=3", "--out", str(out),
                     "--address", ray_cluster)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("cleanlab fold") == 3 and "10/10 done" in result.stdout
    payload = json.loads((out / "results.json").read_text())
    assert [(r["method"], r["n"]) for r in payload["rows"]] == [
        (m, 2) for m in ("baseline", "datarater", "loss_mid", "loss_high", "cleanlab")]
    assert payload["meta"]["arch"] == "cnn_large" and payload["meta"]["stratify"] is True
    assert payload["meta"]["config"]["evaluate"]["arch"] == "cnn_large"
    for row in payload["rows"]:
        assert len(row["kept_fraction_by_class"]) == 10
        low, high = (1.0, 1.0) if row["method"] == "baseline" else (0.65, 0.75)
        assert row["min_class_kept_fraction"] == pytest.approx(min(row["kept_fraction_by_class"]))
        assert low <= row["min_class_kept_fraction"] <= high
        assert (row.get("auroc") is None) == (row["method"] == "baseline")
    assert {v["rival"] for v in payload["verdicts"]} == {"baseline", "loss_mid", "loss_high", "cleanlab"}
    assert "| min class kept |" in (out / "results.md").read_text()


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
    (["--methods", "baseline,cleanlab", "--set", "evaluate.folds=200"],
     "training rows, fewer than evaluate.folds=200; set evaluate.folds to at most"),
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

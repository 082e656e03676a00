"""Filtering: the maths of drray.curation.filtering (hand-worked thresholds, P_accept against a simulation of
the batch rule, the CDF, the rules within each class; the batch rule itself in test_batch_rule.py), and
jobs.filter on a small scored Parquet on a local Ray."""
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from drray.curation.filtering import (
    SampleRule,
    batch_draw_size,
    empirical_cdf,
    kept_count,
    p_accept,
    quantile_cut,
    quantile_cut_by_class,
    quantile_threshold,
    round_half_up,
    row_uniforms,
    sample_rule_by_class,
    summarize,
)
from drray.curation.scored_input import format_summary, keep_mask, make_rule, resolve_stratify

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------- quantile


@pytest.mark.parametrize("n,discard,kept", [
    (10, 0.25, 8),  # 7.5 rounds half up
    (10, 0.35, 7),  # 6.5 too (not to even)
    (10, 0.3, 7),  # 0.7 * 10 = 6.999999999999999
    (4, 0.0, 4),
    (3, 0.9, 0),  # 0.3 -> nothing kept
    (1000, 0.1, 900),
])  # fmt: skip
def test_kept_count_rounds_half_up(n, discard, kept):
    assert kept_count(n, discard) == kept
    assert round_half_up(2.5) == 3 and round_half_up(3.5) == 4


def test_quantile_threshold_hand_worked():
    scores = np.array([5.0, 1.0, 3.0, 2.0, 4.0])
    assert quantile_threshold(scores, 0.4) == 3.0  # keep 3: {5, 4, 3}
    assert quantile_threshold(scores, 0.0) == 1.0  # keep all
    assert quantile_threshold(scores, 0.5) == 3.0  # 2.5 kept rounds up to 3
    assert quantile_threshold(scores, 0.7) == 4.0  # 1.5 -> 2 kept: {5, 4}
    assert quantile_threshold(scores, 0.95) == np.inf  # 0.25 -> nothing kept
    assert quantile_threshold(np.array([3, 1, 2]), 1 / 3) == 2.0  # integer scores work too
    with pytest.raises(ValueError):
        quantile_threshold(np.array([1.0, np.nan]), 0.5)
    with pytest.raises(ValueError):
        quantile_threshold(scores, 1.0)


def test_quantile_cut_breaks_ties_by_smallest_id():
    scores = np.array([1.0, 2.0, 2.0, 2.0, 3.0])
    ids = np.array([14, 13, 12, 11, 10])
    cut = quantile_cut(scores, 0.4, ids)  # keep 3: the 3, then two of the three 2s
    assert (cut.threshold, cut.tie_id, cut.kept) == (2.0, 12, 3)
    assert cut.keep(scores, ids).tolist() == [False, False, True, True, True]  # ids 12 and 11 of the tied
    loose = quantile_cut(scores, 0.4)  # no ids: every tie is kept
    assert loose.tie_id is None and loose.keep(scores).tolist() == [False, True, True, True, True]
    nothing = quantile_cut(np.array([np.inf, 1.0]), 0.9, np.array([0, 1]))
    assert not nothing.keep(np.array([np.inf, 1.0]), np.array([0, 1])).any()


def test_quantile_cut_keeps_exact_count_and_the_highest_scores():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=997).astype(np.float32)  # heavy ties
    ids = rng.permutation(5000)[:997]
    for discard in (0.0, 0.1, 0.25, 0.5, 0.9, 0.999):
        keep = quantile_cut(scores, discard, ids).keep(scores, ids)
        assert keep.sum() == kept_count(len(scores), discard)
        if keep.any() and (~keep).any():
            assert scores[keep].min() >= scores[~keep].max()
        order = np.lexsort((ids, -scores))  # by score descending, then id ascending
        assert set(ids[order[: keep.sum()]]) == set(ids[keep])


# --------------------------------------------------------------------------------------------- batch rule


def test_batch_draw_size():
    assert batch_draw_size(0.25, 128) == 171  # 170.67
    assert batch_draw_size(0.5, 4) == 8 and batch_draw_size(0.0, 5) == 5
    assert batch_draw_size(1 / 3, 2) == 3  # 2.9999999 must not round to 2 extra draws
    with pytest.raises(ValueError):
        batch_draw_size(0.2, 0)


def test_p_accept_closed_forms():
    u = np.linspace(0, 1, 101)
    np.testing.assert_allclose(p_accept(u, 0.5, 1), u, atol=1e-12)  # N=2, B=1: beat the other one
    np.testing.assert_allclose(p_accept(u, 2 / 3, 1), u**2, atol=1e-12)  # N=3, B=1: beat both
    np.testing.assert_allclose(p_accept(u, 1 / 3, 2), 1 - (1 - u) ** 2, atol=1e-12)  # N=3, B=2: beat one
    np.testing.assert_array_equal(p_accept(u, 0.0, 16), np.ones_like(u))
    assert p_accept(np.array([[0.0, 1.0]]), 0.25, 128).tolist() == [[0.0, 1.0]]  # shape kept, ends exact


@pytest.mark.parametrize("discard,batch_size", [(0.25, 128), (0.5, 10), (0.9, 4), (0.3, 7), (0.95, 64)])
def test_p_accept_mean_is_the_kept_fraction(discard, batch_size):
    draw = batch_draw_size(discard, batch_size)
    u = (np.arange(200_000) + 0.5) / 200_000  # midpoint rule on U(0, 1)
    p = p_accept(u, discard, batch_size)
    assert p.mean() == pytest.approx(batch_size / draw, abs=1e-6)
    assert np.all(np.diff(p) >= -1e-12)  # higher CDF, never less likely to be kept
    if (batch_size / (1 - discard)).is_integer():
        assert p.mean() == pytest.approx(1 - discard, abs=1e-6)


@pytest.mark.parametrize("discard,batch_size", [(0.5, 4), (0.25, 6), (0.8, 3)])
def test_p_accept_matches_a_simulation_of_the_batch_rule(discard, batch_size):
    draw = batch_draw_size(discard, batch_size)
    rng = np.random.default_rng(1)
    pools = rng.random((40_000, draw))  # scores ~ U(0, 1), so a score is its own CDF value
    kept = np.zeros(pools.shape, dtype=bool)
    np.put_along_axis(kept, np.argsort(-pools, axis=1)[:, :batch_size], True, axis=1)
    bins = np.minimum((pools * 20).astype(int), 19)
    predicted = p_accept(pools.ravel(), discard, batch_size).reshape(pools.shape)
    for b in range(20):
        in_bin = bins == b
        assert kept[in_bin].mean() == pytest.approx(predicted[in_bin].mean(), abs=0.015)
    assert kept.mean() == pytest.approx(batch_size / draw)


# --------------------------------------------------------------------------------------------- sample rule


def test_empirical_cdf_midpoint_ties():
    cdf = empirical_cdf(np.array([2.0, 1.0, 3.0, 2.0]))
    assert cdf(np.array([0.0, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0])).tolist() == [0, 1 / 8, 1 / 4, 1 / 2, 3 / 4, 7 / 8, 1]
    with pytest.raises(ValueError):
        empirical_cdf(np.array([]))


def test_row_uniforms_are_deterministic_and_uniform():
    ids = np.arange(-1000, 99_000)
    u = row_uniforms(ids, seed=7)
    assert np.array_equal(u, row_uniforms(ids.copy(), seed=7)) and not np.array_equal(u, row_uniforms(ids, 8))
    assert u.min() >= 0 and u.max() < 1 and u.mean() == pytest.approx(0.5, abs=0.005)
    assert np.histogram(u, bins=10, range=(0, 1))[0].min() > 9500
    assert np.array_equal(row_uniforms(ids[::-1], 7), u[::-1])  # a row's draw depends on its id alone


def test_sample_rule_tabulation_matches_the_formula():
    rng = np.random.default_rng(4)
    sample, scores = rng.normal(size=500), np.concatenate([rng.normal(size=3000), [-9.0, 9.0]])
    rule = SampleRule(sample, 0.25, 16, seed=0)
    np.testing.assert_allclose(rule.probability(scores), p_accept(empirical_cdf(sample)(scores), 0.25, 16),
                               atol=1e-12)
    keep = rule.keep(scores, np.arange(len(scores)))
    assert abs(keep.mean() - 16 / batch_draw_size(0.25, 16)) < 0.03
    assert scores[keep].mean() > scores[~keep].mean()


def test_summarize_kept_fraction_by_class_hand_worked():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7])
    kept = np.array([True, False, True, True, False])
    summary = summarize(scores, kept, labels=np.array([4, 4, 1, 1, 1]))
    assert summary["kept_fraction_by_class"] == {"1": 2 / 3, "4": 0.5}
    assert list(summary["kept_fraction_by_class"]) == ["1", "4"]  # by label


def test_summarize_hand_worked():
    scores = np.array([0.9, 0.8, 0.1, 0.2, 0.7, 0.3])
    kept = np.array([True, True, False, False, True, True])
    bad = np.array([False, False, True, False, False, True])
    summary = summarize(scores, kept, bad)
    assert summary["rows_in"] == 6 and summary["rows_kept"] == 4 and summary["rows_removed"] == 2
    assert summary["corrupted_removed"] == 1 and summary["corrupted_removed_fraction"] == 0.5
    assert summary["removal_precision"] == 0.5  # removed {0.1 (bad), 0.2 (clean)}
    assert summary["auroc"] == pytest.approx(7 / 8)  # clean > bad in 7 of the 4 x 2 pairs (0.2 < 0.3)
    assert summary["corrupted_fraction_kept"] == 0.25
    assert summarize(scores, np.ones(6, bool), bad)["removal_precision"] is None
    assert summarize(scores, kept, np.zeros(6, bool))["auroc"] is None
    assert set(summarize(scores, kept)) == {"rows_in", "rows_kept", "rows_removed"}


# --------------------------------------------------------------------------------------------- by class


def test_stratify_label_keeps_class_shares_where_none_starves_a_class():
    # class 0 (6 rows) scores above class 1 (4 rows); discard 0.5 keeps 5
    scores = np.array([9.0, 8.0, 7.0, 6.0, 5.0, 4.0, 3.0, 2.0, 1.0, 0.0])
    labels = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 1])
    ids = np.arange(10)
    narrow = {"score": scores, "id": ids, "label": labels}
    none, _ = make_rule("quantile", 0.5, narrow, stratify="none")
    kept = keep_mask(none, scores, ids, labels)
    assert kept.tolist() == [True] * 5 + [False] * 5  # class 1 keeps nothing
    assert summarize(scores, kept, labels=labels)["kept_fraction_by_class"] == {"0": 5 / 6, "1": 0.0}
    by_class, info = make_rule("quantile", 0.5, narrow, stratify="label")
    kept = keep_mask(by_class, scores, ids, labels)
    # shares 5 * 6/10 = 3 and 5 * 4/10 = 2: the best 3 of class 0, the best 2 of class 1
    assert kept.tolist() == [True, True, True, False, False, False, True, True, False, False]
    assert summarize(scores, kept, labels=labels)["kept_fraction_by_class"] == {"0": 0.5, "1": 0.5}
    assert info == {"threshold_by_class": {"0": 7.0, "1": 2.0}}
    with pytest.raises(ValueError, match="pass the labels"):
        keep_mask(by_class, scores, ids)


def test_quantile_by_class_breaks_ties_by_id_hand_worked():
    scores = np.array([2.0, 2.0, 2.0, 1.0, 5.0, 5.0])
    labels = np.array([0, 0, 0, 0, 1, 1])
    ids = np.array([13, 12, 11, 14, 1, 0])
    rule = quantile_cut_by_class(scores, labels, 0.5, ids)  # keep 3: class 0 two (share 2), class 1 one (share 1)
    assert rule.keep(scores, ids, labels).tolist() == [False, True, True, False, False, True]  # ids 12, 11; id 0
    assert (rule.rules[0].tie_id, rule.rules[1].tie_id) == (12, 0)
    loose = quantile_cut_by_class(scores, labels, 0.5)  # no ids: every tie is kept
    assert loose.keep(scores, None, labels).tolist() == [True, True, True, False, True, True]


def test_quantile_by_class_keeps_exact_total_and_each_class_its_best():
    rng = np.random.default_rng(8)
    n = 1003
    labels = rng.choice([3, 5, 9], size=n, p=[0.6, 0.3, 0.1])
    scores = (rng.integers(0, 6, size=n) + 3 * (labels == 3)).astype(np.float32)  # heavy ties; class 3 higher
    ids = rng.permutation(10 * n)[:n]
    for discard in (0.0, 0.1, 0.25, 0.5, 0.9, 0.999):
        keep = quantile_cut_by_class(scores, labels, discard, ids).keep(scores, ids, labels)
        total = kept_count(n, discard)
        assert keep.sum() == total
        for label in (3, 5, 9):
            mine = labels == label
            share = total * mine.sum() / n
            assert abs(keep[mine].sum() - share) < 1  # its share, rounded one way or the other
            order = np.lexsort((ids[mine], -scores[mine]))  # by score descending, then id ascending
            assert set(ids[mine][order[: keep[mine].sum()]]) == set(ids[mine][keep[mine]])


def test_sample_by_class_keeps_each_class_its_expected_fraction():
    rng = np.random.default_rng(9)
    n, discard, batch_size, seed = 30_000, 0.4, 12, 3  # N = 20: B / N = 0.6
    labels = rng.integers(0, 3, n)
    scores = rng.normal(size=n) - 3.0 * (labels == 2)  # class 2 scores far lower
    ids = rng.permutation(10 * n)[:n]
    rule = sample_rule_by_class(scores, labels, discard, batch_size, seed)
    keep = rule.keep(scores, ids, labels)
    expected = np.zeros(n, dtype=bool)  # the same draws, each class's CDF from its own scores
    for label in range(3):
        mine = labels == label
        p = p_accept(empirical_cdf(scores[mine])(scores[mine]), discard, batch_size)
        expected[mine] = row_uniforms(ids[mine], seed) < p
        se = np.sqrt(0.6 * 0.4 / mine.sum())  # binomial standard error of the kept fraction
        assert abs(keep[mine].mean() - 0.6) < 4 * se
    np.testing.assert_array_equal(keep, expected)
    plain = SampleRule(scores, discard, batch_size, seed).keep(scores, ids)
    assert plain[labels == 2].mean() < 0.1  # one CDF for all: class 2 is starved


def test_resolve_stratify_and_the_summary_line():
    assert resolve_stratify(None, {"label": np.array([0, 1, 0])}) == "label"
    assert resolve_stratify(None, {"label": np.zeros(5, dtype=np.int64)}) == "none"  # text: labels all 0
    assert resolve_stratify(None, {"score": np.zeros(2)}) == "none"
    assert resolve_stratify("none", {"label": np.array([0, 1])}) == "none"
    summary = {"rows_kept": 5, "rows_in": 10, "mode": "quantile", "discard": 0.5, "output": "out",
               "stratify": "none", "kept_fraction_by_class": {"0": 5 / 6, "1": 0.0, "2": 0.0}}
    lines = format_summary(summary).splitlines()
    assert lines[1] == "lowest kept fraction of a class: 0.0% (label 1, of 3 classes; stratify none)"


# --------------------------------------------------------------------------------------------- jobs.filter


def write_scored(directory: Path, n: int, seed: int = 0, files: int = 3, with_id: bool = True,
                 with_label: bool = True, label_shift: float = 0.0) -> dict:
    """A small scored data set in drray's Parquet schema plus score; corrupted rows score lower, and a
    row's score rises by label_shift per label."""
    rng = np.random.default_rng(seed)
    directory.mkdir(parents=True)
    bad = rng.random(n) < 0.3
    labels = rng.integers(0, 10, n)
    score = (rng.normal(size=n) - 1.5 * bad + label_shift * labels).astype(np.float32)
    score[rng.choice(n, 40, replace=False)] = np.float32(-0.25)  # a block of ties near the middle
    ids = rng.permutation(10 * n)[:n].astype(np.int64)
    images = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    bounds = np.linspace(0, n, files + 1).astype(int)
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
        columns = {
            "id": ids[a:b],
            "image": pa.FixedSizeListArray.from_arrays(pa.array(images[a:b].ravel(), pa.uint8()), 16),
            "shape": pa.FixedSizeListArray.from_arrays(pa.array(np.tile([4, 4], b - a), pa.int32()), 2),
            "label": labels[a:b],
            "is_corrupted": bad[a:b],
            "corruption": np.where(bad[a:b], "label_flip", ""),
            "score": score[a:b],
        }
        if not with_id:
            del columns["id"]
        if not with_label:
            del columns["label"]
        pq.write_table(pa.table(columns), directory / f"part-{i:05d}.parquet")
    (directory / "summary.json").write_text("{}")  # a non-Parquet file beside the data is skipped
    return {"id": ids, "score": score, "is_corrupted": bad, "label": labels}


def read_output(path: Path) -> pa.Table:
    files = sorted(str(p) for p in path.glob("*.parquet"))
    return pads.dataset(files, format="parquet").to_table()


def assert_kept_rows(table: pa.Table, truth: dict, want: np.ndarray) -> None:
    """The output holds exactly the wanted rows, each with its own columns (in any row order: Ray's)."""
    got = table.sort_by("id")
    order = np.argsort(truth["id"][want], kind="stable")
    for name in ("id", "score", "label", "is_corrupted"):
        assert got.column(name).to_numpy().tolist() == truth[name][want][order].tolist(), name


def kept_by_class(truth: dict, want: np.ndarray) -> dict:
    """{str(label): fraction of its rows in `want`}, counted row by row."""
    counts = {}
    for label, kept in zip(truth["label"].tolist(), want.tolist()):
        total, hits = counts.get(label, (0, 0))
        counts[label] = (total + 1, hits + kept)
    return {str(label): hits / total for label, (total, hits) in sorted(counts.items())}


def auroc_by_pairs(scores, bad):
    clean, corrupt = scores[~bad][:, None], scores[bad][None, :]
    return float(((clean > corrupt) + 0.5 * (clean == corrupt)).mean())




def run_filter(capsys, *args):
    from jobs.filter import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_filter_quantile_end_to_end(ray_cluster, tmp_path, capsys):
    truth = write_scored(tmp_path / "scored", 600)
    out = tmp_path / "curated"
    code, stdout, err = run_filter(capsys, "--input", tmp_path / "scored", "--discard", 0.25, "--mode", "quantile",
                                   "--stratify", "none", "--output", out)
    assert code == 0, err
    table = read_output(out)
    k = kept_count(600, 0.25)
    assert table.num_rows == k == 450
    order = np.lexsort((truth["id"], -truth["score"]))  # score descending, ties by smallest id
    want = np.zeros(600, dtype=bool)
    want[order[:k]] = True
    assert_kept_rows(table, truth, want)
    assert table.column_names == ["id", "image", "shape", "label", "is_corrupted", "corruption", "score"]
    summary = json.loads((out / "summary.json").read_text())
    bad = truth["is_corrupted"]
    assert summary["rows_in"] == 600 and summary["rows_kept"] == 450 and summary["mode"] == "quantile"
    assert summary["stratify"] == "none" and summary["kept_fraction_by_class"] == kept_by_class(truth, want)
    assert summary["threshold"] == float(truth["score"][want].min())
    assert summary["auroc"] == pytest.approx(auroc_by_pairs(truth["score"].astype(np.float64), bad), abs=1e-12)
    assert summary["corrupted_removed_fraction"] == pytest.approx((bad & ~want).sum() / bad.sum())
    assert summary["removal_precision"] == pytest.approx((bad & ~want).sum() / (~want).sum())
    assert "kept 450 of 600 rows" in stdout
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind
    names = sorted(p.name for p in out.iterdir())
    assert names[-1] == "summary.json" and all(re.fullmatch(r"part-\d{5}-0\.parquet", n) for n in names[:-1])


def test_filter_sample_end_to_end(ray_cluster, tmp_path, capsys):
    n, discard, batch_size = 2000, 0.4, 12  # N = 20: keeps B/N = 0.6 in expectation
    truth = write_scored(tmp_path / "scored", n, seed=1)
    out = tmp_path / "curated"
    out.mkdir()
    (out / "old.txt").write_text("replaced")
    code, _, err = run_filter(capsys, "--input", tmp_path / "scored", "--discard", discard, "--mode", "sample",
                              "--stratify", "none", "--batch-size", batch_size, "--seed", 5, "--output", out,
                              "--overwrite")
    assert code == 0, err
    assert not (out / "old.txt").exists()
    table = read_output(out)
    # the same draws, computed here from the formula (the CDF sample is every score: n < --cdf-sample)
    p = p_accept(empirical_cdf(truth["score"])(truth["score"]), discard, batch_size)
    want = row_uniforms(truth["id"], 5) < p
    assert_kept_rows(table, truth, want)
    mean, sd = p.sum(), np.sqrt((p * (1 - p)).sum())
    assert abs(table.num_rows - n * 0.6) < 4 * sd and mean == pytest.approx(n * 0.6, rel=1e-3)
    kept_scores = table.column("score").to_numpy()
    assert kept_scores.mean() > truth["score"][~want].mean() + 0.5  # prefers high scores
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_kept"] == table.num_rows and summary["cdf_sample_size"] == n
    assert summary["draw_size"] == 20 and summary["expected_rows_kept"] == pytest.approx(mean)
    bad = truth["is_corrupted"]
    assert summary["corrupted_removed"] == int((bad & ~want).sum())


def test_filter_stratified_quantile_end_to_end(ray_cluster, tmp_path, capsys):
    n, discard = 800, 0.5
    truth = write_scored(tmp_path / "scored", n, seed=2, label_shift=0.5)  # higher labels score higher
    out = tmp_path / "curated"
    code, stdout, err = run_filter(capsys, "--input", tmp_path / "scored", "--discard", discard, "--output", out)
    assert code == 0, err  # no --stratify: label, as the input has ten classes
    table = read_output(out)
    labels, counts = np.unique(truth["label"], return_counts=True)
    exact = counts * kept_count(n, discard) / n
    quotas = np.floor(exact).astype(int)  # largest remainders, worked out here
    quotas[np.argsort(-(exact - quotas), kind="stable")[: kept_count(n, discard) - quotas.sum()]] += 1
    want = np.zeros(n, dtype=bool)
    for label, quota in zip(labels, quotas):
        mine = np.flatnonzero(truth["label"] == label)
        want[mine[np.lexsort((truth["id"][mine], -truth["score"][mine]))[:quota]]] = True
    assert table.num_rows == kept_count(n, discard) == 400
    assert_kept_rows(table, truth, want)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["stratify"] == "label" and summary["kept_fraction_by_class"] == kept_by_class(truth, want)
    assert min(summary["kept_fraction_by_class"].values()) > 0.45  # every class keeps about half
    global_order = np.lexsort((truth["id"], -truth["score"]))[:400]
    assert np.mean(truth["label"][global_order] == 0) < 0.02  # where the global cut starves label 0
    assert "threshold" not in summary and set(summary["threshold_by_class"]) == {str(x) for x in labels}
    assert "lowest kept fraction of a class" in stdout and "stratify label" in stdout


def test_filter_stratified_sample_end_to_end(ray_cluster, tmp_path, capsys):
    n, discard, batch_size = 1500, 0.4, 12  # N = 20
    truth = write_scored(tmp_path / "scored", n, seed=3, label_shift=0.5)
    out = tmp_path / "curated"
    code, _, err = run_filter(capsys, "--input", tmp_path / "scored", "--discard", discard, "--mode", "sample",
                              "--stratify", "label", "--batch-size", batch_size, "--seed", 4, "--output", out)
    assert code == 0, err
    want = np.zeros(n, dtype=bool)  # each class's CDF from all its own scores (fewer than --cdf-sample)
    for label in np.unique(truth["label"]):
        mine = truth["label"] == label
        p = p_accept(empirical_cdf(truth["score"][mine])(truth["score"][mine]), discard, batch_size)
        want[mine] = row_uniforms(truth["id"][mine], 4) < p
    assert_kept_rows(read_output(out), truth, want)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["rows_kept"] == want.sum() and summary["cdf_sample_size"] == n
    assert summary["kept_fraction_by_class"] == pytest.approx(kept_by_class(truth, want))


@pytest.mark.parametrize("case,expected", [
    ("no_score", "no score column"),
    ("missing_input", "no such file or folder"),
    ("discard_one", "--discard must be in [0, 1)"),
    ("discard_negative", "--discard must be in [0, 1)"),
    ("existing_output", "already exists"),
    ("output_in_input", "overlaps --input"),
    ("output_under_a_file", "is a file, not a folder; choose another --output"),
    ("sample_without_id", "needs an integer id"),
    ("nan_score", "NaN score"),
    ("stratify_without_label", "--stratify label: "),
    ("null_label", "rows have no label (null)"),
])  # fmt: skip
def test_filter_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, case, expected):
    scored, out = tmp_path / "scored", tmp_path / "curated"
    if case == "no_score":
        truth_dir = tmp_path / "plain"
        write_scored(truth_dir, 50)
        table = pq.read_table(truth_dir / "part-00000.parquet").drop(["score"])
        scored.mkdir()
        pq.write_table(table, scored / "a.parquet")
    elif case == "sample_without_id":
        write_scored(scored, 50, with_id=False)
    elif case == "nan_score":
        write_scored(scored, 50, files=1)
        table = pq.read_table(scored / "part-00000.parquet")
        values = table.column("score").to_numpy().copy()
        values[3] = np.nan
        pq.write_table(table.set_column(6, "score", pa.array(values)), scored / "part-00000.parquet")
    elif case == "stratify_without_label":
        write_scored(scored, 50, with_label=False)
    elif case == "null_label":
        write_scored(scored, 50, files=1)
        table = pq.read_table(scored / "part-00000.parquet")
        labels = pa.array([None] + table.column("label").to_pylist()[1:], pa.int64())
        pq.write_table(table.set_column(3, "label", labels), scored / "part-00000.parquet")
    elif case != "missing_input":
        write_scored(scored, 50)
    args = ["--input", scored, "--discard", 0.25, "--output", out]
    if case in ("stratify_without_label", "null_label"):
        args += ["--stratify", "label"]
    if case == "discard_one":
        args[3] = 1.0
    elif case == "discard_negative":
        args[3] = -0.1
    elif case == "existing_output":
        out.mkdir()
        (out / "keep.txt").write_text("mine")
    elif case == "output_in_input":
        args[-1] = out = scored / "curated"
        args.append("--overwrite")
    elif case == "sample_without_id":
        args += ["--mode", "sample"]
    elif case == "output_under_a_file":
        (tmp_path / "a_file").write_text("mine")
        args[-1] = tmp_path / "a_file" / "curated"
    if case not in ("existing_output", "output_in_input", "output_under_a_file"):  # even with --overwrite, an old output stays
        out.mkdir()
        (out / "keep.txt").write_text("mine")
        args.append("--overwrite")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, _, err = run_filter(capsys, *args)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing written or removed


def test_filter_job_as_a_subprocess_reports_bad_input(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jobs.filter", "--input", str(tmp_path / "nope"),
                             "--discard", "0.5", "--output", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "no such file or folder" in result.stderr
    assert not (tmp_path / "out").exists()

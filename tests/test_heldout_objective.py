"""benchmarks/heldout_objective.py: which rows each variant trains on, the held-out loss by kind
and the paired change against "all", on hand-worked cases; and a small run whose table is
recomputed from its records."""
import math

import numpy as np
import pytest

from benchmarks import heldout_objective as ho
from drray.config import load_config


def test_variants_drop_exactly_one_kind_or_all_corruption():
    corruption = np.array(["", "a", "b", "", "a", "b", "b"], dtype=object)
    variants = ho.training_variants(corruption != "", corruption)
    assert list(variants) == ["all", "clean only", "all but a", "all but b"]
    assert variants["all"].all()
    assert np.flatnonzero(variants["clean only"]).tolist() == [0, 3]
    assert np.flatnonzero(variants["all but a"]).tolist() == [0, 2, 3, 5, 6]
    assert np.flatnonzero(variants["all but b"]).tolist() == [0, 1, 3, 4]
    one_kind = np.array(["", "a", ""], dtype=object)
    assert list(ho.training_variants(one_kind != "", one_kind)) == ["all", "clean only"]  # "all but a" = clean only


def test_mean_by_kind_hand_worked():
    losses = np.array([1.0, 3.0, 2.0, 6.0])
    corruption = np.array(["", "x", "", "x"], dtype=object)
    assert ho.mean_by_kind(losses, corruption) == {"overall": 3.0, "clean": 1.5, "x": 4.5}


def test_paired_change_pairs_by_seed():
    records = [{"seed": 0, "variant": "all", "v": 1.0}, {"seed": 0, "variant": "clean only", "v": 1.5},
               {"seed": 1, "variant": "all", "v": 3.0}, {"seed": 1, "variant": "clean only", "v": 3.1},
               {"seed": 2, "variant": "all", "v": 9.0}]  # no partner: left out
    mean, se = ho.paired_change(records, "clean only", lambda r: r["v"])
    assert mean == pytest.approx(0.3)  # (0.5 + 0.1) / 2
    assert se == pytest.approx(np.std([0.5, 0.1], ddof=1) / math.sqrt(2))


def test_small_run_table_matches_its_records():
    cfg = load_config(None, ["data.source=digits", "data.corruption=[{kind: label_flip, fraction: 0.3}]",
                             "data.heldout=same", "evaluate.steps=20"])
    records, image = ho.measure(cfg, seeds=2)
    assert image and {r["variant"] for r in records} == {"all", "clean only"}
    assert all(r["heldout"].keys() == {"overall", "clean", "label_flip"} for r in records)
    clean_rows = next(r["rows"] for r in records if r["variant"] == "clean only")
    all_rows = next(r["rows"] for r in records if r["variant"] == "all")
    assert 0.6 * all_rows < clean_rows < 0.8 * all_rows  # 30% of the rows flipped
    table = ho.markdown(records, image)
    by = {(r["seed"], r["variant"]): r for r in records}
    diffs = [by[s, "clean only"]["heldout"]["overall"] - by[s, "all"]["heldout"]["overall"] for s in (0, 1)]
    flips = [by[s, "clean only"]["heldout"]["label_flip"] - by[s, "all"]["heldout"]["label_flip"] for s in (0, 1)]
    assert (f"| clean only | {np.mean(diffs):+.4f} ± {np.std(diffs, ddof=1) / math.sqrt(2):.4f} | "
            f"{np.mean(flips):+.4f} ± {np.std(flips, ddof=1) / math.sqrt(2):.4f} |") in table  # its sole kind


def test_variants_option_keeps_all_and_refuses_unknown_names():
    cfg = load_config(None, ["data.source=digits", "data.corruption=[{kind: label_flip, fraction: 0.3}]",
                             "evaluate.steps=5"])
    records, _ = ho.measure(cfg, seeds=1, only=("clean only",))
    assert [r["variant"] for r in records] == ["all", "clean only"]
    with pytest.raises(SystemExit, match="unknown variant 'all but label_flip'; variants: all, clean only"):
        ho.measure(cfg, seeds=1, only=("all but label_flip",))

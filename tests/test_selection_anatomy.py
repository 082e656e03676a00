"""benchmarks/selection_anatomy.py: the figures of a selection on a hand-worked case, the
per-class quantile selection it judges, and a small run on digits."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import selection_anatomy as sa
from drray.config import load_config

ROOT = Path(__file__).resolve().parents[1]


def test_anatomy_hand_worked():
    labels = np.array([0, 0, 1, 1, 1, 0, 1])
    corruption = np.array(["", "", "", "label_flip", "label_flip", "label_flip", "pixel_noise"], dtype=object)
    kept = np.array([True, False, True, True, False, False, True])  # drops clean row 1, keeps flip 3
    probabilities = np.array([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7], [0.6, 0.4], [0.9, 0.1], [0.1, 0.9], [0.5, 0.5]])
    a = sa.anatomy(kept, corruption, probabilities, labels)  # the noisy row 6 is neither clean nor a flip
    nothing_dropped = sa.anatomy(np.ones(7, bool), corruption, probabilities, labels)
    assert nothing_dropped["clean_dropped"] == 0.0 and nothing_dropped["judge_acc_dropped_clean"] is None
    assert a["clean_dropped"] == pytest.approx(1 / 3) and a["flips_kept"] == pytest.approx(1 / 3)
    assert a["judge_acc_dropped_clean"] == 0.0  # the judge says row 1 is a 1: a hard row
    assert a["judge_acc_all_clean"] == pytest.approx(2 / 3)
    assert a["judge_p_given_kept_flips"] == pytest.approx(0.4)  # row 3's given label 1
    assert a["judge_p_given_all_flips"] == pytest.approx((0.4 + 0.1 + 0.1) / 3)


def test_kept_by_class_keeps_each_class_share():
    labels = np.array([0] * 6 + [1] * 4)
    scores = np.array([5, 4, 3, 2, 1, 0, 9, 8, 7, 6], dtype=float)  # class 1 scores all higher
    kept = sa.kept_by_class(scores, labels, np.arange(10), 0.5)
    assert np.flatnonzero(kept).tolist() == [0, 1, 2, 6, 7]  # 3 of class 0, 2 of class 1


def test_small_run_on_digits(tmp_path):
    out = tmp_path / "rater"
    run = subprocess.run([sys.executable, "-m", "jobs.meta_train", "--config", "configs/digits.yaml", "--out", str(out),
                          "--set", "run.backend=local", "--set", "meta.steps=2", "--set", "population.size=2"],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    cfg = load_config(str(ROOT / "configs/digits.yaml"), ["evaluate.steps=30"])
    by_discard = sa.measure(cfg, str(out), [0.2, 0.5])
    assert list(by_discard) == ["0.2", "0.5"]
    assert by_discard["0.5"]["flips_kept"] <= by_discard["0.2"]["flips_kept"]  # a larger cut keeps no more
    for a in by_discard.values():
        assert 0.0 <= a["clean_dropped"] <= 1.0 and 0.0 <= a["judge_p_given_all_flips"] <= 1.0
    assert sa.markdown(by_discard).count("\n") == 4

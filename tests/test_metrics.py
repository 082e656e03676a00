import io

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from drray.train.metrics import Progress, average_ranks, corruption_auroc


def test_auroc_hand_worked_with_ties():
    # clean scores {3, 2}, corrupted {2, 1}: pairs (3>2), (3>1), (2=2 -> 1/2), (2>1) -> 3.5 / 4
    assert corruption_auroc(np.array([3.0, 2.0, 2.0, 1.0]), np.array([0, 0, 1, 1], bool)) == 0.875
    assert np.isnan(corruption_auroc(np.array([1.0, 2.0]), np.array([False, False])))


def test_auroc_matches_sklearn_on_random_scores_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 20, 500).astype(float)  # many ties
    bad = rng.random(500) < 0.3
    assert corruption_auroc(scores, bad) == pytest.approx(roc_auc_score(~bad, scores), abs=1e-12)


def test_auroc_of_nan_scores_is_nan():
    """NaN would rank as the highest score and give a finite, meaningless AUROC."""
    assert np.isnan(corruption_auroc(np.array([np.nan, 0.0, 1.0, 2.0]), np.array([True, True, False, False])))


def test_average_ranks():
    np.testing.assert_array_equal(average_ranks(np.array([10.0, 30.0, 20.0, 20.0])), [1.0, 4.0, 2.5, 2.5])


def test_progress_rate_leaves_out_the_first_step(monkeypatch):
    """A slow first step (actors starting, lazy imports) does not drag the rate and ETA down."""
    clock = iter([100.0, 110.0, 111.0, 112.0, 113.0, 114.0])  # start; the first step took 10 s, the rest 1 s
    monkeypatch.setattr("drray.train.metrics.time.perf_counter", lambda: next(clock))
    stream = io.StringIO()
    progress = Progress(total=10, start=0, every=5, stream=stream)
    for step in range(5):
        progress.update(step, {"outer_loss": 0.5})
    assert "1.0 steps/s  ETA 5s" in stream.getvalue()


def test_progress_line_every_n_steps():
    stream = io.StringIO()
    progress = Progress(total=10, start=0, every=5, stream=stream)
    for step in range(10):
        progress.update(step, {"outer_loss": 0.5, "auroc": 0.75})
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2 and lines[0].startswith("step      5/10") and "auroc 0.750" in lines[0]
    assert "steps/s" in lines[1] and "ETA 0s" in lines[1]

"""The curation study's bookkeeping (benchmarks/curation_study.py): its verdict marks and the
fraction of the oracle's gain, on hand-worked figures; and every cell names a known method,
regime and cell."""
import math

import pytest

from benchmarks import curation_study as study
from drray.config import EVALUATE_METHODS
from drray.evaluation.experiment import METRICS


def test_oracle_gain_hand_worked_both_directions():
    rows = [{"method": "baseline", "discard": 0.0, "acc_mean": 0.80, "test_loss_mean": 2.0},
            {"method": "datarater", "discard": 0.4, "acc_mean": 0.86, "test_loss_mean": 1.7},
            {"method": "oracle", "discard": 0.4, "acc_mean": 0.90, "test_loss_mean": 1.5},
            {"method": "oracle", "discard": 0.2, "acc_mean": 0.99, "test_loss_mean": 0.1}]  # another fraction: unused
    assert study.oracle_gain(rows, 0.4, METRICS["image"]) == pytest.approx(0.6)  # 6 of 10 points
    assert study.oracle_gain(rows, 0.4, METRICS["text"]) == pytest.approx(0.6)  # 0.3 of 0.5 nats, lower is better
    no_gain = [dict(r, acc_mean=0.80) if r["method"] == "oracle" else r for r in rows]
    assert math.isnan(study.oracle_gain(no_gain, 0.4, METRICS["image"]))


def test_signed_marks_only_differences_beyond_two_standard_errors():
    assert study._signed({"diff": 0.021, "se": 0.01}, 100.0) == "+2.1 ± 1 **beats**"
    assert study._signed({"diff": 0.019, "se": 0.01}, 100.0) == "+1.9 ± 1"
    assert study._signed({"diff": -0.021, "se": 0.01}, 100.0) == "-2.1 ± 1 *worse*"
    assert study._signed({"diff": math.nan, "se": math.nan}, 1.0) == "–"


def test_cells_are_consistent():
    names = [cell.name for cell in study.CELLS]
    assert len(set(names)) == len(names)
    for cell in study.CELLS:
        assert cell.regime in study.REGIMES and set(cell.methods) <= set(EVALUATE_METHODS)
        assert cell.rater_cell in names and all(0.0 <= d < 1.0 for d in cell.discard)
        if "text" in cell.name:
            assert "cleanlab" not in cell.methods  # text has no labels
        if cell.rater_of:  # a transfer cell evaluates on the data its rater was meta-trained on
            owner = study.CELL_BY_NAME[cell.rater_of]
            assert (cell.config, cell.regime, cell.meta_set) == (owner.config, owner.regime, owner.meta_set)
            assert cell.eval_arch and not owner.rater_of

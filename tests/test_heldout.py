"""The held-out regime (data.heldout clean|same) and size (data.heldout_size): which rows the outer
loss sees, what a data set's own held-out split may hold, the one-line refusals, and the run's
record of it (metrics.jsonl, the report)."""
import hashlib
import json
import math

import numpy as np
import pytest

from drray import seeds
from drray.config import CorruptionSpec, DataConfig, load_config
from drray.data.examples import ExampleSet
from drray.data.parquet import write_parquet
from drray.data.splits import DATA_SOURCES, build_splits
from drray.errors import DataError
from drray.seeds import seeded_rng
from drray.train.loop import format_report, meta_train

FLIP_40 = [CorruptionSpec(kind="label_flip", fraction=0.4)]
FIXTURE: dict = {}
DATA_SOURCES.register("heldout_fixture")(lambda cfg: FIXTURE["parts"])


def digits(**overrides) -> DataConfig:
    return DataConfig(**{"source": "digits", "corruption": FLIP_40, "probe_size": 300, **overrides})


def one_line(excinfo, *fragments: str) -> None:
    message = str(excinfo.value)
    assert "\n" not in message, message
    assert all(fragment in message for fragment in fragments), message


def digest(splits) -> str:
    """Every column of every split: any change in which rows go where, or how they are corrupted."""
    h = hashlib.sha256()
    for name in ("train", "heldout", "test", "probe"):
        part = getattr(splits, name)
        for column in (part.ids, part.labels, part.is_corrupted, part.rows):
            h.update(np.ascontiguousarray(column).tobytes())
        h.update("|".join(part.corruption.tolist()).encode())
    return h.hexdigest()[:16]


def marked_pool(n=80) -> ExampleSet:
    """A Parquet-ready pool, every 4th row marked corrupted (a prepared set's own ground truth)."""
    rng = np.random.default_rng(7)
    pool = ExampleSet.clean(np.arange(n), rng.integers(0, 256, (n, 3, 5)), np.arange(n) % 4, 4)
    pool.is_corrupted[::4], pool.corruption[::4], pool.corruption_level[::4] = True, "label_flip", 1.0
    return pool


# ---- clean: unchanged ---------------------------------------------------------------------------


@pytest.mark.parametrize("max_train,seed,expected", [(None, 0, "f8c483eb284341f0"), (None, 3, "a05beca04ef080b4"),
                                                     (200, 0, "073c048ca7e05ebf"), (200, 3, "59deb319635bde8d")])
def test_clean_splits_are_the_ones_drray_always_drew(max_train, seed, expected):
    """Digests pinned from build_splits as it was before data.heldout existed."""
    splits = build_splits(digits(max_train=max_train), seed)
    assert splits.heldout.is_corrupted.sum() == 0 and splits.test.is_corrupted.sum() == 0
    assert digest(splits) == expected


def test_clean_prepared_pool_is_unchanged(tmp_path):
    write_parquet(marked_pool(), tmp_path / "train.parquet")
    cfg = DataConfig(source="parquet", dir=str(tmp_path), test_fraction=0.25, probe_size=20,
                     corruption=[CorruptionSpec(kind="label_flip", fraction=0.1)])
    assert digest(build_splits(cfg, 5)) == "d86255409b4cd986"


def test_clean_heldout_ids_by_hand():
    """The old draw, by hand: test from all 1,797 digits, then held-out from the rest, clean rows."""
    test_rows = seeded_rng(0, seeds.TEST_SPLIT).choice(np.arange(1797), 359, replace=False)
    rest = np.setdiff1d(np.arange(1797), test_rows)
    heldout_ids = np.sort(rest[seeded_rng(0, seeds.HELDOUT_SPLIT).choice(np.arange(len(rest)), 144, replace=False)])
    splits = build_splits(digits(), 0)
    np.testing.assert_array_equal(splits.test.ids, np.sort(test_rows))
    np.testing.assert_array_equal(splits.heldout.ids, heldout_ids)


# ---- same: the corruption's rate ----------------------------------------------------------------


def test_same_heldout_carries_the_corruption_rate():
    from sklearn.datasets import load_digits

    splits = build_splits(digits(heldout="same", heldout_fraction=0.5), 0)
    heldout, train, test = splits.heldout, splits.train, splits.test
    assert (len(test), len(heldout), len(train)) == (359, 719, 719)  # round(0.5 * 1438)
    assert not test.is_corrupted.any()
    # The pool of 1,438 is corrupted once: floor(0.4 * 1438) = 575 rows, spread over both splits.
    assert heldout.is_corrupted.sum() + train.is_corrupted.sum() == 575
    rate, n = heldout.is_corrupted.mean(), len(heldout)
    assert abs(rate - 0.4) < 4 * math.sqrt(0.4 * 0.6 / n), rate  # a uniform draw: binomial spread at most
    assert set(heldout.corruption[heldout.is_corrupted]) == {"label_flip"}
    target = load_digits().target
    np.testing.assert_array_equal(heldout.labels != target[heldout.ids], heldout.is_corrupted)  # flips are real
    assert sorted(np.concatenate([train.ids, heldout.ids, test.ids]).tolist()) == list(range(1797))
    probe_rows = np.searchsorted(train.ids, splits.probe.ids)
    np.testing.assert_array_equal(train.ids[probe_rows], splits.probe.ids)  # the probe set: a subset of train


def test_same_then_max_train_caps_the_corrupted_rest():
    splits = build_splits(digits(heldout="same", max_train=200), 0)
    assert len(splits.train) == 200 and len(splits.heldout) == 144
    assert 0.2 < splits.train.is_corrupted.mean() < 0.6 and splits.heldout.is_corrupted.any()


# ---- heldout_size --------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", ["clean", "same"])
def test_heldout_size_is_exact(regime):
    splits = build_splits(digits(heldout=regime, heldout_size=100), 0)
    assert (len(splits.heldout), len(splits.train), len(splits.test)) == (100, 1338, 359)
    assert splits.heldout.is_corrupted.any() == (regime == "same")


def given_splits(directory, heldout: ExampleSet) -> None:
    write_parquet(marked_pool(), directory / "train.parquet")
    write_parquet(heldout, directory / "heldout.parquet")
    test = ExampleSet.clean(200 + np.arange(8), np.zeros((8, 3, 5)), np.arange(8) % 4, 4)
    write_parquet(test, directory / "test.parquet")


@pytest.mark.parametrize("stream", [False, True])
def test_own_heldout_with_corrupted_rows(tmp_path, stream):
    """A data set's own held-out split: taken as it is under `same`, refused under `clean`."""
    heldout = marked_pool(12)
    heldout.ids += 100
    given_splits(tmp_path, heldout)
    def config(**overrides):
        return DataConfig(source="parquet", dir=str(tmp_path), stream=stream, probe_size=20, **overrides)

    splits = build_splits(config(heldout="same"), 0)
    np.testing.assert_array_equal(splits.heldout.ids, heldout.ids)
    assert splits.heldout.is_corrupted.sum() == 3
    with pytest.raises(DataError) as excinfo:
        build_splits(config(), 0)
    one_line(excinfo, "(heldout): 3 rows are marked is_corrupted", "data.heldout=same")
    sized = build_splits(config(heldout="same", heldout_size=5), 0).heldout
    again = build_splits(config(heldout="same", heldout_size=5), 0).heldout
    assert len(sized) == 5 and set(sized.ids) <= set(heldout.ids)
    np.testing.assert_array_equal(sized.ids, again.ids)  # seeded
    assert not np.array_equal(sized.ids, build_splits(config(heldout="same", heldout_size=5), 1).heldout.ids)
    with pytest.raises(DataError) as excinfo:
        build_splits(config(heldout="same", heldout_size=13), 0)
    one_line(excinfo, "data.heldout_size=13", "12 rows")


# ---- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("regime", ["clean", "same"])
def test_heldout_size_not_below_the_pool_is_refused(regime):
    for size in (1438, 5000):  # the pool after the test split: 1,438 rows
        with pytest.raises(DataError) as excinfo:
            build_splits(digits(heldout=regime, heldout_size=size), 0)
        one_line(excinfo, f"heldout set of {size} from 1438", "data.heldout_size")


def test_same_with_too_small_a_pool_is_refused(monkeypatch):
    tiny = ExampleSet.clean(np.arange(5), np.zeros((5, 4, 4)), np.arange(5) % 2, 2)
    test = ExampleSet.clean(10 + np.arange(2), np.zeros((2, 4, 4)), [0, 1], 2)
    monkeypatch.setitem(FIXTURE, "parts", (tiny, test))
    with pytest.raises(DataError) as excinfo:  # round(0.05 * 5) = 0 rows
        build_splits(DataConfig(source="heldout_fixture", heldout="same", heldout_fraction=0.05), 0)
    one_line(excinfo, "heldout set of 0 from 5", "data.heldout_fraction")
    one_row = tiny.subset(np.arange(1))
    monkeypatch.setitem(FIXTURE, "parts", (one_row, test))
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="heldout_fixture", heldout="same", heldout_size=1), 0)
    one_line(excinfo, "heldout set of 1 from 1", "data.heldout_size")


def test_bad_heldout_size_writes_nothing(tmp_path):
    cfg = load_config(None, ["data.heldout=same", "data.heldout_size=1438", f"run.out={tmp_path / 'run'}"])
    with pytest.raises(DataError, match="data.heldout_size"):
        meta_train(cfg)
    assert not (tmp_path / "run").exists()


# ---- the run says which regime it used -----------------------------------------------------------


def test_a_run_records_its_heldout_regime(tmp_path):
    cfg = load_config(None, ["data.source=digits", "data.max_train=300", "data.probe_size=150", "population.size=2",
                             "population.lifetime=4", "inner.batch_size=32", "meta.outer_batch_size=32",
                             "meta.steps=2", "run.backend=local", "data.heldout=same", f"run.out={tmp_path / 'run'}",
                             "data.corruption=[{kind: label_flip, fraction: 0.4}]"])
    heldout = build_splits(cfg.data, cfg.run.seed).heldout
    expected = {"regime": "same", "rows": 144, "corrupted_fraction": float(heldout.is_corrupted.sum() / 144)}
    summary = meta_train(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [0, 1]
    assert records[0]["heldout"] == expected and "heldout" not in records[1]
    assert 0.25 < expected["corrupted_fraction"] < 0.55
    assert f"held-out split (same): 144 rows, {expected['corrupted_fraction']:.1%} corrupted" in format_report(summary)

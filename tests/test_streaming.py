"""Training data streamed from Parquet in batches (data.stream), never loaded whole."""
import numpy as np
import pyarrow as pa
import pytest

from drray.config import DataConfig, load_config
from drray.data.parquet import write_parquet
from drray.data.splits import build_splits
from drray.data.streams import BatchStream, decode_batch, local_parquet_epochs
from drray.errors import ConfigError, DataError
from drray.train.loop import make_population, meta_train


def prepared_digits(directory, train_shards=3):
    """Digits with 30% label flips, written as Parquet splits the way a prepare job would."""
    splits = build_splits(DataConfig(source="digits", max_train=600, corruption=[{"kind": "label_flip",
                                                                                 "fraction": 0.3}]), 0)
    train_dir = directory / "train"
    train_dir.mkdir(parents=True)
    for i, rows in enumerate(np.array_split(np.arange(len(splits.train)), train_shards)):
        write_parquet(splits.train.subset(rows), train_dir / f"part-{i}.parquet")
    write_parquet(splits.heldout, directory / "heldout.parquet")
    write_parquet(splits.test, directory / "test.parquet")
    return splits


def stream_config(directory, out, *extra):
    return load_config(None, ["data.source=parquet", f"data.dir={directory}", "data.stream=true",
                              "data.probe_size=200", "population.size=2", "inner.batch_size=32",
                              "meta.outer_batch_size=32", "meta.steps=4", "run.log_every=4",
                              f"run.out={out}", *extra])


def test_streamed_splits_leave_train_on_disk(tmp_path):
    original = prepared_digits(tmp_path / "data")
    splits = build_splits(stream_config(tmp_path / "data", tmp_path / "run").data, 0)
    assert splits.train is None and splits.train_path.endswith("train")
    assert len(splits.probe) == 200 and splits.probe.is_corrupted.any()
    np.testing.assert_array_equal(splits.probe.ids, original.train.ids[:200])
    np.testing.assert_array_equal(splits.heldout.rows, original.heldout.rows)


def test_batch_stream_serves_every_row_each_epoch_with_bounded_memory(tmp_path):
    original = prepared_digits(tmp_path / "data")
    stream = BatchStream(local_parquet_epochs(str(tmp_path / "data" / "train"), 50, (8, 8)), (8, 8), 10, "cpu", "train")
    n = len(original.train)
    seen = np.concatenate([stream.sample(40)[1].numpy() for _ in range(2 * n // 40)])  # two epochs
    np.testing.assert_array_equal(seen[:n], original.train.labels)
    np.testing.assert_array_equal(seen[n:2 * n], original.train.labels[: len(seen) - n])
    assert stream.max_buffered < 40 + 50


def test_stream_meta_training_in_process(tmp_path):
    prepared_digits(tmp_path / "data")
    cfg = stream_config(tmp_path / "data", tmp_path / "run")
    summary = meta_train(cfg)
    assert 0.0 <= summary.auroc <= 1.0 and np.isfinite(summary.mean_score_clean)
    population = make_population(cfg, build_splits(cfg.data, 0))
    population.step()
    assert all(learner.train.max_buffered < 2 * cfg.inner.batch_size for learner in population.learners)


@pytest.mark.parametrize("overrides,expected", [
    (["data.source=parquet", "data.corruption=[{kind: label_flip, fraction: 0.1}]"], "corrupted once when it is"),
    (["data.source=digits"], "streaming reads Parquet only"),
])
def test_stream_config_errors(overrides, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(None, [*overrides, "data.stream=true"])


def test_stream_needs_heldout_and_valid_labels(tmp_path):
    prepared_digits(tmp_path / "data")
    (tmp_path / "data" / "heldout.parquet").unlink()
    with pytest.raises(DataError, match="needs a heldout split"):
        build_splits(stream_config(tmp_path / "data", tmp_path / "run").data, 0)
    batch = pa.table({"image": [[0] * 4], "label": [12]})
    with pytest.raises(DataError, match="label 12 outside 0..9"):
        decode_batch(batch, (2, 2), 10, "train")

"""Colour images in memory and as raw Parquet: rows uint8 [N, H, W, 3] (channels last, as Arrow and
PIL keep them), models on [B, 3, H, W], meta-training, checkpoints and scoring; data.image_size."""
import numpy as np
import pyarrow.dataset as pads
import pytest
import torch

from drray.config import load_config
from drray.curation.scoring import check_schema, score_table
from drray.data.examples import ExampleSet, to_tensors
from drray.data.modality import ImageModality, describe_rows, image_channels
from drray.data.parquet import read_parquet, write_parquet
from drray.data.splits import build_splits
from drray.data.streams import BatchStream, local_parquet_epochs
from drray.errors import DataError
from drray.models import choose_arch
from drray.registry import DATA_SOURCES
from drray.train.checkpoint import load_rater
from drray.train.loop import meta_train


def tint(gray: np.ndarray, seed: int) -> np.ndarray:
    """Grayscale uint8 [N, H, W] -> RGB [N, H, W, 3]: each image in its own random colour."""
    colours = np.random.default_rng(seed).uniform(0.3, 1.0, size=(len(gray), 1, 1, 3))
    return np.rint(gray[..., None] * colours).astype(np.uint8)


@DATA_SOURCES.register("test_tinted_digits")
def tinted_digits(cfg):
    from sklearn.datasets import load_digits

    digits = load_digits()
    gray = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return ExampleSet.clean(np.arange(len(gray)), tint(gray, 0), digits.target, 10), None


TINTED = ["data.source=test_tinted_digits", "data.max_train=600", "data.probe_size=300",
          "data.corruption=[{kind: label_flip, fraction: 0.3}]"]


def test_colour_rows_become_channels_first_inputs():
    rows = torch.arange(12, dtype=torch.uint8).reshape(1, 2, 2, 3)  # [N, H, W, C]
    x = ImageModality.inputs(rows)
    assert x.shape == (1, 3, 2, 2)
    for c in range(3):
        assert torch.equal(x[0, c], rows[0, :, :, c].float() / 255.0)
    assert image_channels((32, 32, 3)) == 3 and image_channels((28, 28)) == 1
    assert describe_rows((32, 32, 3)) == "32x32x3 images"
    assert choose_arch("auto", (32, 32, 3)) == "cnn_gap" and choose_arch("auto", (64, 64)) == "cnn_gap"
    assert (choose_arch("auto", (28, 28)), choose_arch("auto", (8, 8))) == ("cnn", "mlp")  # as before


def test_colour_splits_parquet_round_trip_and_resize(tmp_path):
    splits = build_splits(load_config(None, TINTED).data, 0)
    assert splits.row_shape == (8, 8, 3) and splits.train.rows.dtype == np.uint8
    write_parquet(splits.train, tmp_path / "train.parquet")
    back = read_parquet(tmp_path / "train.parquet")
    assert np.array_equal(back.rows, splits.train.rows) and np.array_equal(back.labels, splits.train.labels)
    shapes = pads.dataset(str(tmp_path / "train.parquet")).to_table(columns=["shape"]).column("shape").to_pylist()
    assert shapes[0] == [8, 8, 3]
    bigger = build_splits(load_config(None, TINTED + ["data.image_size=[16, 12]"]).data, 0)
    assert bigger.row_shape == (16, 12, 3) and np.array_equal(bigger.train.ids, splits.train.ids)
    # a flat image keeps its colour when enlarged (bilinear of a constant is the constant)
    flat = ExampleSet.clean([0], np.full((1, 4, 4, 3), [10, 20, 30], np.uint8), [0], 1)
    from drray.data.splits import resized

    assert np.array_equal(resized(flat, (8, 6)).rows, np.full((1, 8, 6, 3), [10, 20, 30], np.uint8))
    with pytest.raises(DataError, match="need N >= 1 images"):  # RGBA is not RGB
        from drray.data.splits import _validated

        _validated(ExampleSet.clean([0], np.zeros((1, 4, 4, 4), np.uint8), [0], 1), "here")


def test_streamed_colour_batches(tmp_path):
    splits = build_splits(load_config(None, TINTED).data, 0)
    write_parquet(splits.train, tmp_path / "train.parquet")
    epochs = local_parquet_epochs(str(tmp_path / "train.parquet"), 50, splits.row_shape)
    stream = BatchStream(epochs, splits.row_shape, 10, "cpu", "train")
    x, y = stream.sample(64)
    assert x.shape == (64, 3, 8, 8)
    first = to_tensors(splits.train.subset(np.arange(64)))[0]
    assert torch.equal(x, first)  # file order: the first 64 rows


def test_colour_meta_training_checkpoint_and_scoring(tmp_path):
    cfg = load_config(None, TINTED + ["population.size=2", "meta.steps=4", "inner.batch_size=32",
                                      "meta.outer_batch_size=32", "run.backend=local", f"run.out={tmp_path / 'run'}"])
    summary = meta_train(cfg)
    assert summary.steps == 4
    rater, info = load_rater(tmp_path / "run")
    assert info["row_shape"] == [8, 8, 3] and info["arch"] == "cnn_gap"
    splits = build_splits(cfg.data, cfg.run.seed)
    write_parquet(splits.train, tmp_path / "train.parquet")
    table = pads.dataset(str(tmp_path / "train.parquet")).to_table()
    check_schema(table.schema, info, "train.parquet", table.slice(0, 1))
    scored = score_table(rater, table, tuple(info["row_shape"]), info["num_classes"])
    with torch.no_grad():
        expected = rater(*to_tensors(splits.train)).numpy()
    assert np.allclose(scored.column("score").to_numpy(), expected, atol=1e-5)
    gray = {**info, "row_shape": [8, 8]}
    with pytest.raises(DataError, match=r"images have 192 pixels but the rater \(cnn_gap, step 4\) takes 8x8 images"):
        check_schema(table.schema, gray, "train.parquet", table.slice(0, 1))

import dataclasses
import gzip
import hashlib
import struct
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from drray.config import CorruptionSpec, DataConfig
from drray.data.examples import ExampleSet, to_tensors
from drray.data.parquet import read_parquet, write_parquet
from drray.data.sources.idx import MNIST_MD5, download_mnist, read_idx
from drray.data.splits import DATA_SOURCES, build_splits
from drray.errors import DataError

SHARED_MNIST = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "mnist"

# A source whose output each test sets; lets build_splits' own checks be tested on any data.
FIXTURE_PARTS: dict = {}
DATA_SOURCES.register("test_fixture")(lambda cfg: FIXTURE_PARTS["parts"])


def one_line_error(excinfo, *fragments: str) -> str:
    message = str(excinfo.value)
    assert "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- IDX ---------------------------------------------------------------------------------------


def idx_bytes(array: np.ndarray) -> bytes:
    header = struct.pack(">I", 0x0800 | array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(np.uint8).tobytes()


def write_idx(path: Path, array: np.ndarray, gz: bool) -> Path:
    data = idx_bytes(array)
    path = path.with_name(path.name + ".gz") if gz else path
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def make_idx_dir(directory: Path, gz: bool, n_train=5, n_test=3, side=4) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, side, side)),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, side, side)),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test),
    }
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in arrays.items():
        write_idx(directory / name, array, gz)
    return arrays


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path, gz):
    images = np.arange(2 * 3 * 5).reshape(2, 3, 5).astype(np.uint8)
    path = write_idx(tmp_path / "x-idx3-ubyte", images, gz)
    array, raw = read_idx(path, 3)
    assert array.dtype == np.uint8 and np.array_equal(array, images)
    assert raw[:4] == b"\x00\x00\x08\x03" and len(raw) == 16 + images.size


@pytest.mark.parametrize("gz", [False, True])
def test_idx_source_loads_with_unique_ids(tmp_path, gz):
    arrays = make_idx_dir(tmp_path, gz)
    train, test = DATA_SOURCES.get("idx")(DataConfig(source="idx", dir=str(tmp_path)))
    assert np.array_equal(train.rows, arrays["train-images-idx3-ubyte"])
    assert np.array_equal(test.labels, arrays["t10k-labels-idx1-ubyte"])
    assert train.ids.tolist() == [0, 1, 2, 3, 4] and test.ids.tolist() == [5, 6, 7]
    assert train.num_classes == 10 and not train.is_corrupted.any()


def test_idx_num_classes_grows_with_large_labels(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.array([0, 1, 2, 3, 14]), gz=False)
    train, _ = DATA_SOURCES.get("idx")(DataConfig(source="idx", dir=str(tmp_path)))
    assert train.num_classes == 15


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:-3])


def wrong_magic(path: Path) -> None:
    path.write_bytes(b"\x00\x00\x08\x01" + path.read_bytes()[4:])


def short_header(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:10])


DAMAGES = [(truncate, "data bytes"), (wrong_magic, "magic"), (short_header, "header")]


@pytest.mark.parametrize("damage, expected", DAMAGES)
def test_damaged_idx_file_is_a_one_line_data_error(tmp_path, damage, expected):
    make_idx_dir(tmp_path, gz=False)
    damage(tmp_path / "train-images-idx3-ubyte")
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="idx", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte", expected)


def test_broken_gzip_is_a_data_error(tmp_path):
    make_idx_dir(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="idx", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "t10k-labels-idx1-ubyte.gz")


def test_image_label_count_mismatch(tmp_path):
    make_idx_dir(tmp_path, gz=False)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([1, 2]), gz=False)
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="idx", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "t10k-labels-idx1-ubyte", "2 labels for 3 images")


def test_missing_dir_and_missing_file(tmp_path):
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="idx", dir=str(tmp_path / "nowhere")), 0)
    one_line_error(excinfo, "nowhere", "does not exist", "data.dir")
    (tmp_path / "notes.txt").write_text("not data")
    for source in ("idx", "parquet"):  # a file where a folder belongs is not "missing"
        with pytest.raises(DataError) as excinfo:
            build_splits(DataConfig(source=source, dir=str(tmp_path / "notes.txt")), 0)
        one_line_error(excinfo, "notes.txt", "is a file, not a folder", "data.dir")
    make_idx_dir(tmp_path, gz=False)
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="idx", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "t10k-images-idx3-ubyte", "missing")


# ---- MNIST -------------------------------------------------------------------------------------


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not on this machine")
def test_real_mnist_loads_and_checksums_match():
    # Independent check of the checksum table against the files themselves.
    for name, md5 in MNIST_MD5.items():
        assert hashlib.md5(gzip.decompress((SHARED_MNIST / f"{name}.gz").read_bytes())).hexdigest() == md5
    splits = build_splits(DataConfig(source="mnist", dir=str(SHARED_MNIST), probe_size=100), 0)
    assert len(splits.train) + len(splits.heldout) == 60000 and len(splits.test) == 10000
    assert len(splits.heldout) == 6000 and splits.row_shape == (28, 28) and splits.num_classes == 10
    assert np.bincount(splits.test.labels).tolist()[:2] == [980, 1135]  # MNIST's known test counts


def test_mnist_checksum_mismatch(tmp_path):
    make_idx_dir(tmp_path, gz=True)  # valid IDX, but not MNIST
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="mnist", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte.gz", "md5", MNIST_MD5["train-images-idx3-ubyte"])


def test_mnist_missing_without_download(tmp_path):
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="mnist", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "train-images-idx3-ubyte", "data.download=true")


@pytest.mark.skipif(not SHARED_MNIST.is_dir(), reason="shared MNIST copy not on this machine")
def test_download_tries_mirrors_in_order_offline(tmp_path):
    # file:// mirrors exercise the download path without a network: the first has no files.
    mirrors = ((tmp_path / "empty").as_uri() + "/", SHARED_MNIST.resolve().as_uri() + "/")
    target = tmp_path / "mnist"
    download_mnist(target, ["t10k-labels-idx1-ubyte"], mirrors)
    name = "t10k-labels-idx1-ubyte.gz"
    assert (target / name).read_bytes() == (SHARED_MNIST / name).read_bytes()
    assert [p.name for p in target.iterdir()] == [name]  # no partial file left
    make_idx_dir(tmp_path / "fake", gz=True)
    with pytest.raises(DataError) as excinfo:  # a mirror serving other bytes fails the checksum
        download_mnist(target, ["train-labels-idx1-ubyte"], ((tmp_path / "fake").as_uri() + "/",))
    one_line_error(excinfo, "train-labels-idx1-ubyte.gz", "download failed", "md5")


# ---- digits and splitting ----------------------------------------------------------------------


def digits_config(**overrides) -> DataConfig:
    corruption = [CorruptionSpec(kind="label_flip", fraction=0.2), CorruptionSpec(kind="pixel_noise", fraction=0.1)]
    return DataConfig(**{"source": "digits", "corruption": corruption, "probe_size": 300, **overrides})


def test_digits_splits_are_disjoint_and_add_up():
    from sklearn.datasets import load_digits

    splits = build_splits(digits_config(), seed=0)
    parts = (splits.train, splits.heldout, splits.test)
    assert sum(map(len, parts)) == 1797
    assert (len(splits.test), len(splits.heldout)) == (359, 144)  # round(0.2 * 1797), round(0.1 * 1438)
    ids = np.concatenate([p.ids for p in parts])
    assert sorted(ids.tolist()) == list(range(1797))
    assert not splits.heldout.is_corrupted.any() and not splits.test.is_corrupted.any()
    assert splits.train.is_corrupted.sum() == int(0.2 * 1294) + int(0.1 * 1294)
    assert splits.row_shape == (8, 8) and splits.num_classes == 10
    # Clean rows carry the original pixels, 0..16 scaled to 0..255.
    digits = load_digits()
    for part in (splits.test, splits.heldout):
        assert np.array_equal(part.rows, np.rint(digits.images[part.ids] * 255 / 16).astype(np.uint8))
        assert np.array_equal(part.labels, digits.target[part.ids])


def test_probe_is_a_fixed_subset_of_train_with_ground_truth():
    splits = build_splits(digits_config(), seed=0)
    assert len(splits.probe) == 300
    rows = np.searchsorted(splits.train.ids, splits.probe.ids)
    assert np.array_equal(splits.train.ids[rows], splits.probe.ids)
    assert np.array_equal(splits.train.is_corrupted[rows], splits.probe.is_corrupted)
    assert np.array_equal(splits.train.rows[rows], splits.probe.rows)
    assert len(build_splits(digits_config(probe_size=5000), seed=0).probe) == 1294


def test_same_seed_same_splits_other_seed_other_splits():
    first, again, other = (build_splits(digits_config(), seed) for seed in (0, 0, 1))
    for name in ("train", "heldout", "test", "probe"):
        a, b = getattr(first, name), getattr(again, name)
        for column in ("ids", "rows", "labels", "corruption"):
            assert np.array_equal(getattr(a, column), getattr(b, column)), (name, column)
    assert not np.array_equal(first.test.ids, other.test.ids)
    assert not np.array_equal(first.train.corruption, other.train.corruption)


def test_max_train_caps_before_corruption():
    splits = build_splits(digits_config(max_train=200), seed=0)
    assert len(splits.train) == 200 and splits.train.is_corrupted.sum() == 40 + 20
    assert len(splits.test) == 359  # the cap leaves the evaluation split alone


def test_to_tensors_scales_to_unit_range():
    examples = ExampleSet.clean([0, 1], np.array([[[0, 255]], [[51, 102]]]), [3, 4], 10)
    x, y = to_tensors(examples)
    assert x.shape == (2, 1, 1, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.allclose(x.flatten(), torch.tensor([0.0, 1.0, 0.2, 0.4])) and y.tolist() == [3, 4]


def test_labels_out_of_range_is_a_data_error(monkeypatch):
    bad = ExampleSet.clean(np.arange(50), np.zeros((50, 4, 4)), np.r_[np.zeros(49), 10], 10)
    monkeypatch.setitem(FIXTURE_PARTS, "parts", (bad, None))
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="test_fixture"), 0)
    one_line_error(excinfo, "test_fixture", "label 10", "id 49")


def test_float_images_whole_numbers_pass_nan_fails(monkeypatch):
    good = ExampleSet.clean(np.arange(50), np.zeros((50, 4, 4)), np.zeros(50), 2)
    monkeypatch.setitem(FIXTURE_PARTS, "parts", (dataclasses.replace(good, rows=np.full((50, 4, 4), 7.0)), None))
    assert build_splits(DataConfig(source="test_fixture"), 0).train.rows.dtype == np.uint8
    nan_images = np.full((50, 4, 4), 7.0)
    nan_images[3, 1, 1] = np.nan
    monkeypatch.setitem(FIXTURE_PARTS, "parts", (dataclasses.replace(good, rows=nan_images), None))
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="test_fixture"), 0)
    one_line_error(excinfo, "NaN")


def test_too_small_for_a_heldout_split(monkeypatch):
    tiny = ExampleSet.clean(np.arange(3), np.zeros((3, 4, 4)), np.zeros(3), 2)
    monkeypatch.setitem(FIXTURE_PARTS, "parts", (tiny, tiny.subset(np.arange(0))))
    with pytest.raises(DataError):  # an empty test split
        build_splits(DataConfig(source="test_fixture"), 0)
    monkeypatch.setitem(FIXTURE_PARTS, "parts", (tiny, None))
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="test_fixture"), 0)
    one_line_error(excinfo, "data.")


# ---- Parquet -----------------------------------------------------------------------------------


def corrupted_examples(n=40, first_id=0) -> ExampleSet:
    rng = np.random.default_rng(first_id)
    examples = ExampleSet.clean(first_id + np.arange(n), rng.integers(0, 256, (n, 3, 5)), rng.integers(0, 4, n), 4)
    examples.labels[0] = 3  # so max label + 1 recovers num_classes
    examples.is_corrupted[::4] = True
    examples.corruption[::4] = "label_flip"
    examples.corruption_level[::4] = 1.0
    return examples


def assert_same(a: ExampleSet, b: ExampleSet) -> None:
    for column in ("ids", "rows", "labels", "is_corrupted", "corruption", "corruption_level"):
        x, y = getattr(a, column), getattr(b, column)
        assert x.dtype == y.dtype and np.array_equal(x, y), column
    assert a.num_classes == b.num_classes


def test_parquet_round_trip_file_and_shards(tmp_path):
    examples = corrupted_examples()
    write_parquet(examples, tmp_path / "one.parquet")
    assert_same(read_parquet(tmp_path / "one.parquet"), examples)
    (tmp_path / "shards").mkdir()
    write_parquet(examples.subset(np.arange(25)), tmp_path / "shards" / "part-0.parquet")
    write_parquet(examples.subset(np.arange(25, 40)), tmp_path / "shards" / "part-1.parquet")
    back = read_parquet(tmp_path / "shards")
    assert_same(back.subset(np.argsort(back.ids)), examples)


def test_parquet_variable_list_and_no_ground_truth(tmp_path):
    images = np.arange(2 * 2 * 3, dtype=np.uint8).reshape(2, 2, 3)
    table = pa.table({
        "id": pa.array([7, 9], pa.int64()),
        "image": pa.array([row.ravel().tolist() for row in images], pa.list_(pa.uint8())),
        "shape": pa.array([[2, 3], [2, 3]], pa.list_(pa.int64())),
        "label": pa.array([1, 0], pa.int64()),
    })  # fmt: skip
    pq.write_table(table, tmp_path / "t.parquet")
    back = read_parquet(tmp_path / "t.parquet")
    assert_same(back, ExampleSet.clean([7, 9], images, [1, 0], 2))


def test_parquet_source_keeps_given_splits(tmp_path):
    write_parquet(corrupted_examples(40, 0), tmp_path / "train.parquet")
    write_parquet(corrupted_examples(10, 100).subset(np.arange(1, 10, 2)), tmp_path / "heldout.parquet")
    write_parquet(corrupted_examples(12, 200).subset(np.arange(1, 12, 2)), tmp_path / "test.parquet")
    splits = build_splits(DataConfig(source="parquet", dir=str(tmp_path)), 0)
    assert len(splits.train) == 40 and splits.train.is_corrupted.sum() == 10  # heldout not carved out of train
    assert splits.heldout.ids.tolist() == [101, 103, 105, 107, 109] and len(splits.test) == 6
    assert splits.row_shape == (3, 5) and splits.num_classes == 4


def test_parquet_without_heldout_splits_clean_rows_only(tmp_path):
    write_parquet(corrupted_examples(40, 0), tmp_path / "train.parquet")
    splits = build_splits(DataConfig(source="parquet", dir=str(tmp_path), test_fraction=0.25), 0)
    assert (len(splits.test), len(splits.heldout), len(splits.train)) == (10, 3, 27)
    assert not splits.test.is_corrupted.any() and not splits.heldout.is_corrupted.any()
    assert splits.train.is_corrupted.sum() == 10  # every prepared corruption stays in train


def test_parquet_missing_columns(tmp_path):
    pq.write_table(pa.table({"id": [1], "pixels": [[0, 1]], "label": [0]}), tmp_path / "train.parquet")
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="parquet", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "train.parquet", "image", "shape")
    empty = pa.table({"id": pa.array([], pa.int64()), "image": pa.array([], pa.list_(pa.uint8())),
                      "shape": pa.array([], pa.list_(pa.int32())), "label": pa.array([], pa.int64())})
    pq.write_table(empty, tmp_path / "train.parquet")
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="parquet", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "train.parquet", "no rows")


def test_parquet_negative_label_and_repeated_ids(tmp_path):
    examples = corrupted_examples()
    write_parquet(examples, tmp_path / "train.parquet")
    write_parquet(examples.subset(np.arange(1, 4)), tmp_path / "test.parquet")  # ids also in train (clean rows)
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="parquet", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "ids repeat")
    examples.labels[3] = -1
    write_parquet(examples, tmp_path / "train.parquet")
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="parquet", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "train.parquet", "negative label -1")


def test_parquet_given_splits_must_be_clean_and_labels_integers(tmp_path):
    """A supplied test or held-out split is ground truth: corrupted rows there are refused; so is a
    float label column (it would be truncated: 1.7 -> 1)."""
    write_parquet(corrupted_examples(40, 0), tmp_path / "train.parquet")
    write_parquet(corrupted_examples(12, 200), tmp_path / "test.parquet")  # rows 0, 4, 8 corrupted
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="parquet", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "(test): 3 rows are marked is_corrupted", "split must be clean")
    (tmp_path / "test.parquet").unlink()
    table = pq.read_table(tmp_path / "train.parquet")
    labels = table.column("label").cast(pa.float64())
    pq.write_table(table.set_column(table.column_names.index("label"), "label", labels), tmp_path / "train.parquet")
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="parquet", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "train.parquet", "column label is double, not an integer class")


def test_parquet_missing_train(tmp_path):
    with pytest.raises(DataError) as excinfo:
        build_splits(DataConfig(source="parquet", dir=str(tmp_path)), 0)
    one_line_error(excinfo, "train.parquet", "missing")

"""Images as users keep them: decoding (Pillow), resizing, stacking, encoded Arrow columns, and the
imagefolder source (drray.data.images, drray.data.sources.imagefolder)."""
import io

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from drray.config import load_config
from drray.data.images import (
    check_image_type, decode_every_image, decode_image, decode_image_column, is_encoded_image_type, resize,
    row_namer, stack_images,
)
from drray.data.sources.imagefolder import class_names, image_files, load_imagefolder_source
from drray.data.splits import build_splits
from drray.errors import DataError
from tests.colour_data import WORD_NAMES, jpeg_bytes, png_bytes, tinted_digits, write_class_tree

GRAY = np.array([[0, 64], [128, 255]], dtype=np.uint8)
RGB = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], dtype=np.uint8)


def encoded(image, mode=None, fmt="PNG") -> bytes:
    out = io.BytesIO()
    (image if isinstance(image, Image.Image) else Image.fromarray(image, mode)).save(out, format=fmt)
    return out.getvalue()


def one_line_error(call, *needles):
    with pytest.raises(DataError) as caught:
        call()
    message = str(caught.value)
    assert "\n" not in message
    for needle in needles:
        assert str(needle) in message, message
    return message


# ---------------------------------------------------------------------------------------- decode


def test_png_round_trips_are_exact():
    assert np.array_equal(decode_image(encoded(GRAY), "a.png"), GRAY)
    assert np.array_equal(decode_image(encoded(RGB), "a.png"), RGB)
    assert decode_image(encoded(RGB), "a.png").shape == (2, 2, 3)


def test_jpeg_round_trip_is_close():
    smooth = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 8
    colour = np.stack([smooth, 255 - smooth, np.full_like(smooth, 100)], axis=2)
    for image in (smooth, colour):
        decoded = decode_image(jpeg_bytes(image), "a.jpg")
        assert decoded.shape == image.shape and decoded.dtype == np.uint8
        assert np.abs(decoded.astype(int) - image).max() <= 12


def test_modes_become_gray_or_rgb():
    rgba = np.concatenate([RGB, np.full((2, 2, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(decode_image(encoded(rgba, "RGBA"), "x"), RGB)  # alpha dropped
    palette = Image.fromarray(RGB).quantize(4)
    assert np.array_equal(decode_image(encoded(palette), "x"), RGB)  # P: 4 colours, kept exactly
    bits = decode_image(encoded(Image.fromarray(GRAY > 100)), "x")
    assert bits.shape == (2, 2) and set(np.unique(bits)) <= {0, 255}
    wide = np.array([[0, 257 * 100], [65535, 257 * 3]], dtype=np.uint16)  # 16-bit PNG: scaled, not clipped
    assert np.array_equal(decode_image(encoded(wide), "x"), [[0, 100], [255, 3]])
    gray_alpha = Image.fromarray(np.stack([GRAY, GRAY], axis=2), "LA")
    assert np.array_equal(decode_image(encoded(gray_alpha), "x"), GRAY)  # gray with alpha stays gray


@pytest.mark.parametrize("data", [b"not an image", encoded(RGB)[:40], b""])
def test_undecodable_bytes_are_a_one_line_error_naming_where(data):
    one_line_error(lambda: decode_image(data, "data/cat/003.png"), "data/cat/003.png", "cannot decode")


# ---------------------------------------------------------------------------------------- resize


def test_resize():
    assert resize(RGB, None) is RGB and resize(RGB, (2, 2)) is RGB
    ramp = np.tile(np.arange(0, 256, 16, dtype=np.uint8), (6, 1))  # [6, 16], brighter to the right
    small = resize(ramp, (3, 4))
    assert small.shape == (3, 4) and (np.diff(small.astype(int), axis=1) > 0).all() and (small == small[0]).all()
    assert np.array_equal(small, np.asarray(Image.fromarray(ramp).resize((4, 3), Image.Resampling.BILINEAR)))
    grown = resize(np.full((2, 3, 3), 77, np.uint8), (5, 7))
    assert grown.shape == (5, 7, 3) and (grown == 77).all()
    assert resize(GRAY, (4, 6)).shape == (4, 6)


# ---------------------------------------------------------------------------------------- stack


def test_stack_images():
    assert stack_images([RGB, RGB], str).shape == (2, 2, 2, 3)
    assert stack_images([GRAY] * 3, str).shape == (3, 2, 2)
    names = ["a.png", "b.png", "c.png"].__getitem__
    one_line_error(lambda: stack_images([GRAY, np.zeros((3, 2), np.uint8), GRAY], names),
                   "b.png", "3x2 grayscale", "2 of 3 are 2x2 grayscale", "data.image_size")
    # the odd one is the one unlike most, even when it comes first
    one_line_error(lambda: stack_images([np.zeros((3, 2), np.uint8), GRAY, GRAY], names), "a.png")
    one_line_error(lambda: stack_images([RGB, GRAY, RGB], names), "b.png", "grayscale but 2 of 3 are RGB",
                   "convert")
    mixed = stack_images([RGB, GRAY, RGB], names, to_one_mode=True)
    assert mixed.shape == (3, 2, 2, 3) and np.array_equal(mixed[1][..., 2], GRAY)


# ---------------------------------------------------------------------------------------- Arrow


def hf_column(data, paths=None) -> pa.StructArray:
    paths = paths or [None] * len(data)
    return pa.StructArray.from_arrays([pa.array(data, pa.binary()), pa.array(paths, pa.string())],
                                      names=["bytes", "path"])


def test_image_column_types():
    for kind in (pa.binary(), pa.large_binary(), hf_column([b"x"]).type,
                 pa.struct([("bytes", pa.large_binary()), ("path", pa.string())])):
        assert is_encoded_image_type(kind)
        check_image_type(kind, "f.parquet")
    check_image_type(pa.list_(pa.uint8()), "f.parquet")  # raw pixels
    for kind in (pa.string(), pa.list_(pa.string()), pa.int64(), pa.struct([("path", pa.string())])):
        assert not is_encoded_image_type(kind)
        one_line_error(lambda: check_image_type(kind, "f.parquet"), "f.parquet", str(kind), "binary", "struct<bytes")


def test_decode_binary_column_marks_bad_rows():
    column = pa.array([encoded(RGB), None, b"junk", encoded(GRAY), encoded(np.zeros((3, 3, 3), np.uint8))],
                      pa.binary())
    decoded = decode_image_column(column, shape=(2, 2, 3))
    assert decoded.ok.tolist() == [True, False, False, False, False]
    assert np.array_equal(decoded.images[0], RGB) and decoded.images.shape == (5, 2, 2, 3)
    assert decoded.problems[1] == "image is null" and "cannot decode" in decoded.problems[2]
    assert "2x2 grayscale, not 2x2 RGB" in decoded.problems[3] and "3x3 RGB" in decoded.problems[4]
    resized = decode_image_column(column, shape=(3, 3, 3), size=(3, 3))  # image_size: gray becomes RGB
    assert resized.ok.tolist() == [True, False, False, True, True]
    assert decode_image_column(column).images.shape == (5, 2, 2, 3)  # no shape: the usual one


def test_hugging_face_struct_reads_paths_beside_the_parquet_file(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(encoded(GRAY))
    column = hf_column([encoded(GRAY), None, None, None], [None, "imgs/a.png", "imgs/gone.png", None])
    decoded = decode_image_column(column, base_dir=tmp_path)
    assert decoded.ok.tolist() == [True, True, False, False]
    assert np.array_equal(decoded.images[1], GRAY)
    assert "gone.png cannot be read" in decoded.problems[2] and "neither bytes nor a path" in decoded.problems[3]
    absolute = hf_column([None], [str(tmp_path / "imgs" / "a.png")])
    assert decode_image_column(absolute).ok.all()


def test_decode_every_image_names_the_first_bad_row():
    names = row_namer(np.array([10, 11, 12]), "train.parquet")
    good = pa.array([encoded(GRAY)] * 3, pa.binary())
    assert decode_every_image(good, names).shape == (3, 2, 2)
    one_line_error(lambda: decode_every_image(pa.array([encoded(GRAY), b"junk", None], pa.binary()), names),
                   "train.parquet: row id 11", "cannot decode")
    one_line_error(lambda: decode_every_image(pa.array([encoded(GRAY), None], pa.binary()), names),
                   "train.parquet: row id 11", "image is null")
    odd = pa.array([encoded(GRAY), encoded(GRAY), encoded(RGB)], pa.binary())
    one_line_error(lambda: decode_every_image(odd, names), "row id 12", "RGB but 2 of 3 are grayscale")
    assert decode_every_image(odd, names, size=(4, 4)).shape == (3, 4, 4, 3)


# ---------------------------------------------------------------------------------------- imagefolder


def imagefolder_splits(root, *overrides, seed=0):
    cfg = load_config(None, ["data.source=imagefolder", f"data.dir={root}", *overrides])
    return build_splits(cfg.data, seed)


def small_tree(root, per_class=4, classes=3, side=8, splits=None):
    """classes x per_class tinted digits in folders named zero, one, two...; optionally split."""
    data = tinted_digits(side=side)
    index = np.concatenate([np.flatnonzero(data.labels == label)[:per_class] for label in range(classes)])
    data = data.subset(index)
    parts = None if splits is None else {name: np.arange(len(data))[offset::len(splits)]
                                         for offset, name in enumerate(splits)}
    write_class_tree(root, data, parts, WORD_NAMES)
    return data


def test_classes_sorted_by_name_give_the_labels(tmp_path):
    data = small_tree(tmp_path, classes=4)
    names = sorted(WORD_NAMES[:4])  # one, three, two, zero
    assert class_names(tmp_path) == names
    files = image_files(tmp_path)
    assert [f.id for f in files] == list(range(16))
    assert all(names[f.label] == f.path.parent.name for f in files)
    train, test, heldout = load_imagefolder_source(load_config(None, ["data.source=imagefolder",
                                                                      f"data.dir={tmp_path}"]).data)
    assert test is None and heldout is None and train.rows.shape == (16, 8, 8, 3) and train.num_classes == 4
    for file, row, label in zip(files, train.rows, train.labels):
        assert label == file.label and np.array_equal(row, np.asarray(Image.open(file.path)))
    assert sorted(map(tuple, train.rows.reshape(16, -1))) == sorted(map(tuple, data.images.reshape(16, -1)))


def test_build_splits_from_a_colour_tree(tmp_path):
    small_tree(tmp_path, per_class=10)
    splits = imagefolder_splits(tmp_path)
    assert splits.row_shape == (8, 8, 3) and splits.num_classes == 3
    assert len(splits.train) + len(splits.heldout) + len(splits.test) == 30


def test_split_folders_are_the_splits(tmp_path):
    small_tree(tmp_path, per_class=6, splits=("train", "heldout", "test"))
    assert [p.name for p in (tmp_path / "train").iterdir()]
    splits = imagefolder_splits(tmp_path)
    assert (len(splits.train), len(splits.heldout), len(splits.test)) == (6, 6, 6)
    files = image_files(tmp_path)
    heldout_ids = {f.id for f in files if f.split == "heldout"}
    assert set(splits.heldout.ids) == heldout_ids
    assert {f.split for f in files} == {"train", "heldout", "test"}


def test_missing_split_folders_are_split_off_train(tmp_path):
    small_tree(tmp_path, per_class=10, splits=("train", "test"))
    train, test, heldout = load_imagefolder_source(load_config(None, ["data.source=imagefolder",
                                                                      f"data.dir={tmp_path}"]).data)
    assert heldout is None and len(test) == 15
    splits = imagefolder_splits(tmp_path)
    assert len(splits.test) == 15 and len(splits.heldout) + len(splits.train) == 15


def test_image_size_resizes_mixed_sizes_and_modes(tmp_path):
    small_tree(tmp_path)
    odd = next((tmp_path / "one").iterdir())
    Image.fromarray(np.full((12, 10), 99, np.uint8)).save(odd)
    one_line_error(lambda: imagefolder_splits(tmp_path), odd, "12x10 grayscale", "data.image_size")
    splits = imagefolder_splits(tmp_path, "data.image_size=[16,16]")
    assert splits.row_shape == (16, 16, 3)
    gray_row = [f.id for f in image_files(tmp_path) if f.path == odd]
    for part in (splits.train, splits.heldout, splits.test):
        hit = np.isin(part.ids, gray_row)
        if hit.any():
            assert (part.rows[hit] == 99).all()  # gray 99 became RGB (99, 99, 99)


def test_gray_tree_and_upper_case_suffixes(tmp_path):
    for label, name in enumerate(("b", "a")):
        (tmp_path / name).mkdir()
        for n in range(5):
            Image.fromarray(np.full((4, 4), 10 * n + label, np.uint8)).save(tmp_path / name / f"{n}.PNG")
        (tmp_path / name / "notes.txt").write_text("not an image")
        Image.fromarray(np.full((4, 4), 200, np.uint8)).save(tmp_path / name / "x.JPG")
    train, _, _ = load_imagefolder_source(load_config(None, ["data.source=imagefolder", f"data.dir={tmp_path}"]).data)
    assert train.rows.shape == (12, 4, 4) and class_names(tmp_path) == ["a", "b"]
    assert train.labels.tolist() == [0] * 6 + [1] * 6
    assert train.rows[0, 0, 0] == 1  # a/0.PNG holds 10 * 0 + 1


@pytest.mark.parametrize("case", ["empty", "no_images", "empty_class", "channels", "corrupt", "classes_differ",
                                  "loose_image", "stray_folder", "no_train"])
def test_bad_trees_are_one_line_errors_naming_the_path(tmp_path, case):
    root = tmp_path / "tree"
    root.mkdir()
    if case == "empty":
        expected = [root, "no class folders"]
    elif case == "no_images":
        (root / "cat").mkdir()
        (root / "cat" / "readme.txt").write_text("hi")
        expected = [root / "cat", "no images"]
    elif case == "empty_class":
        small_tree(root)
        (root / "aardvark").mkdir()
        expected = [root / "aardvark", "no images"]
    elif case == "channels":
        small_tree(root)
        odd = sorted((root / "two").iterdir())[1]
        Image.fromarray(np.zeros((8, 8), np.uint8)).save(odd)
        expected = [odd, "grayscale but 11 of 12 are RGB", "data.image_size"]
    elif case == "corrupt":
        small_tree(root)
        odd = sorted((root / "zero").iterdir())[2]
        odd.write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8))[:30])
        expected = [odd, "cannot decode"]
    elif case == "classes_differ":
        small_tree(root, per_class=6, splits=("train", "heldout"))
        for file in (root / "heldout" / "two").iterdir():
            file.unlink()
        (root / "heldout" / "two").rmdir()
        expected = [root / "heldout", "lacks two", "same class folders"]
    elif case == "loose_image":
        small_tree(root)
        (root / "stray.png").write_bytes(png_bytes(np.zeros((8, 8, 3), np.uint8)))
        expected = [root / "stray.png", "outside any class folder"]
    elif case == "stray_folder":
        small_tree(root, per_class=6, splits=("train", "test"))
        (root / "val").mkdir()
        expected = [root / "val", "not a split"]
    else:
        small_tree(root, per_class=6, splits=("heldout", "test"))
        expected = [root / "train", "missing"]
    one_line_error(lambda: imagefolder_splits(root), *expected)


def test_missing_dir_says_what_it_should_hold(tmp_path):
    one_line_error(lambda: imagefolder_splits(tmp_path / "nowhere"), "nowhere", "class folders")


# ---------------------------------------------------------------------------------------- encoded Parquet


def raw_table(data) -> pa.Table:
    """The same rows in drray's raw schema (list<uint8> pixels and shape)."""
    n, shape = len(data), list(data.images.shape[1:])
    return pa.table({"id": np.arange(n), "image": pa.array(list(data.images.reshape(n, -1)), pa.list_(pa.uint8())),
                     "shape": pa.array([shape] * n, pa.list_(pa.int32())), "label": data.labels})


@pytest.mark.parametrize("form", ["hf", "png"])
def test_read_encoded_parquet_as_the_raw_rows(tmp_path, form):
    from drray.data.parquet import read_parquet
    from tests.colour_data import write_encoded_parquet

    data = tinted_digits(count=60, side=16, flip_fraction=0.3)
    write_encoded_parquet(tmp_path, {"train": data.subset(np.arange(40)), "test": data.subset(np.arange(40, 60))}, form)
    train = read_parquet(tmp_path / "train.parquet")
    assert train.rows.shape == (40, 16, 16, 3) and np.array_equal(train.rows, data.images[:40])
    assert np.array_equal(train.labels, data.labels[:40]) and np.array_equal(train.is_corrupted, data.is_corrupted[:40])
    assert set(train.corruption[train.is_corrupted]) == {"label_flip"}
    assert np.array_equal(read_parquet(tmp_path / "train.parquet", image_size=(8, 8)).rows.shape, (40, 8, 8, 3))
    splits = build_splits(load_config(None, ["data.source=parquet", f"data.dir={tmp_path}"]).data, 0)
    assert splits.row_shape == (16, 16, 3) and len(splits.test) == 20 and not splits.test.is_corrupted.any()


def test_encoded_parquet_errors_name_the_row(tmp_path):
    import pyarrow.parquet as pq

    from drray.data.parquet import read_parquet

    good = encoded(RGB)
    for images, expected in (([good, b"junk"], "row id 1: cannot decode"),
                             ([good, encoded(GRAY)], "row id 1: image is grayscale but 1 of 2 are RGB"),
                             ([good, None], "row id 1: image is null")):
        table = pa.table({"id": [0, 1], "image": pa.array(images, pa.binary()), "label": [0, 1]})
        pq.write_table(table, tmp_path / "t.parquet")
        one_line_error(lambda: read_parquet(tmp_path / "t.parquet"), "t.parquet", expected)
    pq.write_table(pa.table({"id": [0], "image": ["a.png"], "label": [0]}), tmp_path / "s.parquet")
    one_line_error(lambda: read_parquet(tmp_path / "s.parquet"), "s.parquet", "column image is string", "binary")
    pq.write_table(pa.table({"id": [0], "image": pa.array([good], pa.binary())}), tmp_path / "n.parquet")
    one_line_error(lambda: read_parquet(tmp_path / "n.parquet"), "missing columns label", "id, image, label")


def test_hf_paths_are_read_relative_to_the_parquet_file(tmp_path):
    import pyarrow.parquet as pq

    from drray.data.parquet import read_parquet

    (tmp_path / "data" / "pics").mkdir(parents=True)
    (tmp_path / "data" / "pics" / "a.png").write_bytes(encoded(RGB))
    column = hf_column([None, encoded(RGB)], ["pics/a.png", None])
    pq.write_table(pa.table({"id": [0, 1], "image": column, "label": [0, 0]}), tmp_path / "data" / "t.parquet")
    rows = read_parquet(tmp_path / "data" / "t.parquet").rows
    assert rows.shape == (2, 2, 2, 3) and np.array_equal(rows[0], RGB)


def scoring_fixture(count=12):
    import torch

    from drray.models import build_rater

    torch.manual_seed(0)
    data = tinted_digits(count=count, side=16)
    rater = build_rater("cnn", (16, 16, 3), 10).eval()
    return data, rater


@pytest.mark.parametrize("form", ["hf", "png"])
def test_score_table_decodes_and_keeps_the_encoded_column(form):
    from drray.curation.scoring import SCORE, score_table
    from tests.colour_data import encoded_table

    data, rater = scoring_fixture()
    table = encoded_table(data, form)
    scored = score_table(rater, table, (16, 16, 3), 10, chunk_rows=5)
    raw = score_table(rater, raw_table(data), (16, 16, 3), 10)
    assert scored.column_names == table.column_names + [SCORE]
    assert scored.column("image").equals(table.column("image"))  # not re-encoded
    np.testing.assert_allclose(scored.column(SCORE).to_numpy(), raw.column(SCORE).to_numpy(), atol=1e-6)


def test_undecodable_images_are_bad_rows():
    from drray.curation.scoring import SCORE, find_bad_rows, score_table
    from tests.colour_data import encoded_table

    data, rater = scoring_fixture(6)
    table = encoded_table(data, "png")
    images = table.column("image").to_pylist()
    images[1], images[3], images[4] = b"junk", None, encoded(np.zeros((16, 16), np.uint8))
    bad = table.set_column(table.column_names.index("image"), "image", pa.array(images, pa.binary()))
    labels = pa.array([0, 1, 2, 3, 4, 99], pa.int64())
    bad = bad.set_column(table.column_names.index("label"), "label", labels)
    table = table.set_column(table.column_names.index("label"), "label", labels)
    mask, reason = find_bad_rows(bad, (16, 16, 3), 10)
    assert mask.tolist() == [False, True, False, True, True, True] and reason.startswith("row id 1: cannot decode")
    one_line_error(lambda: score_table(rater, bad, (16, 16, 3), 10), "row id 1: cannot decode", "4 bad rows",
                   "--on-bad-row drop")
    kept = score_table(rater, bad, (16, 16, 3), 10, on_bad_row="drop")
    assert kept.column("id").to_pylist() == [0, 2]
    clean = score_table(rater, table.slice(0, 5), (16, 16, 3), 10)
    np.testing.assert_allclose(kept.column(SCORE).to_numpy(), clean.column(SCORE).to_numpy()[[0, 2]], atol=1e-6)
    # the rater's data.image_size (when its run had one) resizes, and makes grayscale images RGB
    resized = score_table(rater, bad.slice(4, 1), (16, 16, 3), 10, image_size=[16, 16])
    assert resized.num_rows == 1


def test_encoded_schema_checks():
    from drray.curation.scoring import check_schema, input_columns
    from tests.colour_data import encoded_table

    data, _ = scoring_fixture(2)
    info = {"row_shape": [16, 16, 3], "num_classes": 10, "arch": "cnn", "step": 5}
    for form in ("hf", "png"):
        table = encoded_table(data, form)
        assert input_columns(info, table.schema) == ["image"]
        check_schema(table.schema, info, "in.parquet", table.slice(0, 1))
        one_line_error(lambda: check_schema(table.schema, {**info, "row_shape": [8, 8]}, "in.parquet", table),
                       "in.parquet", "images are 16x16 RGB (the first row) but the rater (cnn, step 5) takes 8x8 images")
        one_line_error(lambda: check_schema(table.drop_columns(["label"]).schema, info, "in.parquet"),
                       "missing column label")
    check_schema(table.schema, {**info, "row_shape": [8, 8, 3], "image_size": [8, 8]}, "in.parquet", table)
    strings = pa.schema([("image", pa.string()), ("shape", pa.list_(pa.int32())), ("label", pa.int64())])
    one_line_error(lambda: check_schema(strings, info, "in.parquet"), "column image is string", "struct<bytes")


def test_streamed_batches_decode_encoded_images(tmp_path):
    import torch

    from drray.data.examples import to_tensors
    from drray.data.parquet import read_parquet
    from drray.data.streams import BatchStream, local_parquet_epochs
    from tests.colour_data import write_encoded_parquet

    data = tinted_digits(count=50, side=16)
    write_encoded_parquet(tmp_path, {"train": data})
    epochs = local_parquet_epochs(str(tmp_path / "train.parquet"), 20, (16, 16, 3))
    x, y = BatchStream(epochs, (16, 16, 3), 10, "cpu", "train").sample(30)
    expected = to_tensors(read_parquet(tmp_path / "train.parquet").subset(np.arange(30)))
    assert torch.equal(x, expected[0]) and torch.equal(y, expected[1])
    wrong = BatchStream(epochs, (8, 8, 3), 10, "cpu", "train.parquet")
    one_line_error(lambda: wrong.sample(5), "train.parquet: row 0 of a batch: image is 16x16 RGB, not 8x8 RGB")


# ---------------------------------------------------------------------------------------- class names


def test_class_names_travel_from_the_tree_through_splits_and_parquet(tmp_path):
    from drray.data.parquet import read_parquet, write_parquet

    small_tree(tmp_path / "tree", per_class=10, classes=4)
    names = tuple(sorted(WORD_NAMES[:4]))  # one, three, two, zero: label id i is names[i]
    splits = imagefolder_splits(tmp_path / "tree")
    assert splits.class_names == names and splits.train.class_names == names and splits.probe.class_names == names
    write_parquet(splits.test, tmp_path / "test.parquet")
    back = read_parquet(tmp_path / "test.parquet")
    assert back.class_names == names and back.num_classes == 4


def test_class_names_from_schema_metadata():
    import json

    from drray.data.parquet import CLASS_NAMES_KEY, class_names_from_schema
    from tests.colour_data import hf_metadata

    def names(metadata):
        return class_names_from_schema(pa.schema([("label", pa.int64())], metadata=metadata))

    assert names(hf_metadata(["cat", "dog"])) == ("cat", "dog")
    assert names({**hf_metadata(["cat", "dog"]), CLASS_NAMES_KEY: b'{"class_names": ["a", "b"]}'}) == ("a", "b")
    as_value = {b"huggingface": json.dumps({"info": {"features": {"label": {"dtype": "int64", "_type": "Value"}}}})}
    odd = [None, {}, {b"huggingface": b"{not json"}, {b"huggingface": b"[]"}, as_value, hf_metadata([]),
           hf_metadata(["cat", "cat"]), {b"huggingface": json.dumps({"info": {"features": {"label": {
               "names": [1, 2], "_type": "ClassLabel"}}}})}, {CLASS_NAMES_KEY: b'{"class_names": "ab"}'}]
    assert [names(metadata) for metadata in odd] == [None] * len(odd)


def test_hugging_face_names_set_the_class_count_unless_labels_go_beyond(tmp_path):
    import pyarrow.parquet as pq

    from drray.data.parquet import read_parquet
    from tests.colour_data import encoded_table, hf_metadata

    data = tinted_digits(count=20, side=8)
    data.labels[:] = np.arange(20) % 3  # classes 0..2 present
    table = encoded_table(data, truth=False)
    pq.write_table(table.replace_schema_metadata(hf_metadata(["a", "b", "c", "d", "e"])), tmp_path / "named.parquet")
    named = read_parquet(tmp_path / "named.parquet")
    assert named.class_names == ("a", "b", "c", "d", "e") and named.num_classes == 5
    pq.write_table(table.replace_schema_metadata(hf_metadata(["a", "b"])), tmp_path / "short.parquet")
    short = read_parquet(tmp_path / "short.parquet")
    assert short.class_names is None and short.num_classes == 3


def test_differing_class_names_are_refused_in_one_line():
    from drray.data.examples import check_same_class_names
    from drray.errors import ConfigError

    check_same_class_names(("a", "b"), ("a", "b"), "data", "run")
    check_same_class_names(None, ("a", "b"), "data", "run")  # unknown on one side: no check
    check_same_class_names(("a", "b"), None, "data", "run")
    one_line_error(lambda: check_same_class_names(("a", "x"), ("a", "b"), "in.parquet", "runs/r"),
                   "in.parquet names its classes [a, x] but rater runs/r was trained on [a, b]",
                   "label 1 is 'x' there but 'b' for the rater")
    with pytest.raises(ConfigError, match="3 classes against the rater's 2"):
        check_same_class_names(("a", "b", "c"), ("a", "b"), "data", "run", ConfigError)


# ---------------------------------------------------------------------------------------- Hugging Face exports


def test_parquet_without_ids_numbers_rows_by_position(tmp_path):
    from drray.data.parquet import read_parquet
    from tests.colour_data import write_hf_export

    data = tinted_digits(count=50, side=8)
    # shards named out of order on disk: positions follow the sorted paths (a.parquet, then sub/b.parquet)
    write_hf_export(tmp_path / "train" / "sub" / "b.parquet", data.subset(np.arange(20, 50)))
    write_hf_export(tmp_path / "train" / "a.parquet", data.subset(np.arange(20)))
    train = read_parquet(tmp_path / "train", first_id=7)
    assert train.ids.tolist() == list(range(7, 57)) and np.array_equal(train.rows, data.images)
    head = read_parquet(tmp_path / "train", limit=25)
    assert head.ids.tolist() == list(range(25)) and np.array_equal(head.rows, data.images[:25])
    # the parquet source: train first, then heldout, then test, so ids are unique over the splits
    write_hf_export(tmp_path / "heldout.parquet", data.cleaned().subset(np.arange(10)))
    write_hf_export(tmp_path / "test.parquet", data.cleaned().subset(np.arange(10, 22)))
    for stream in ("false", "true"):
        splits = build_splits(load_config(None, ["data.source=parquet", f"data.dir={tmp_path}",
                                                 f"data.stream={stream}", "data.probe_size=30"]).data, 0)
        assert splits.heldout.ids.tolist() == list(range(50, 60)) and splits.test.ids.tolist() == list(range(60, 72))
        assert np.array_equal(splits.test.rows, data.images[10:22])
    assert sorted(splits.probe.ids.tolist()) == list(range(30))  # streamed: the first rows of train


def test_relative_paths_are_read_beside_each_file_in_memory_and_streamed(tmp_path, monkeypatch):
    from drray.data.examples import to_tensors
    from drray.data.parquet import read_parquet
    from drray.data.streams import BatchStream, local_parquet_epochs
    from tests.colour_data import write_hf_export

    data = tinted_digits(count=30, side=8)
    write_hf_export(tmp_path / "train" / "a.parquet", data.subset(np.arange(12)), as_files={0, 5, 11})
    write_hf_export(tmp_path / "train" / "deeper" / "b.parquet", data.subset(np.arange(12, 30)), as_files={1, 2})
    monkeypatch.chdir(tmp_path / "train" / "deeper")  # the working directory holds other pics/0.png ...
    train = read_parquet(tmp_path / "train")
    assert np.array_equal(train.rows, data.images)
    epochs = local_parquet_epochs(str(tmp_path / "train"), 7, (8, 8, 3))
    x, y = BatchStream(epochs, (8, 8, 3), 10, "cpu", "train").sample(30)
    assert torch_equal(x, to_tensors(train)[0]) and np.array_equal(y.numpy(), data.labels)
    # a missing file: in memory and streamed, a one-line error naming it
    write_hf_export(tmp_path / "gone" / "t.parquet", data.subset(np.arange(4)), as_files={0}, missing={2})
    one_line_error(lambda: read_parquet(tmp_path / "gone"), "row id 2", str(tmp_path / "gone" / "pics" / "2.png"),
                   "cannot be read")
    stream = BatchStream(local_parquet_epochs(str(tmp_path / "gone"), 4, (8, 8, 3)), (8, 8, 3), 10, "cpu", "gone")
    one_line_error(lambda: stream.sample(4), "row 2 of a batch", str(tmp_path / "gone" / "pics" / "2.png"))


def torch_equal(a, b) -> bool:
    import torch

    return torch.equal(a, b)


def test_scored_batches_read_relative_paths_from_their_file_and_number_rows(tmp_path):
    import pyarrow.fs as pafs

    from drray.curation.scoring import SCORE, find_bad_rows, positioned_batches, score_table
    from drray.data.images import IMAGE_DIR_COLUMN
    from tests.colour_data import write_hf_export

    data, rater = scoring_fixture(10)
    file = write_hf_export(tmp_path / "in" / "t.parquet", data, as_files={1, 4}, missing={6})
    batches = list(positioned_batches(str(file), pafs.LocalFileSystem(), 100, 4, str(file.parent)))
    assert [b.num_rows for b in batches] == [4, 4, 2] and batches[1].column("id").to_pylist() == [104, 105, 106, 107]
    mask, reason = find_bad_rows(batches[1], (16, 16, 3), 10)
    assert mask.tolist() == [False, False, True, False]
    assert reason.startswith("row id 106: image bytes are null and its path")
    assert str(file.parent / "pics" / "6.png") in reason
    one_line_error(lambda: score_table(rater, batches[1], (16, 16, 3), 10), "row id 106", "pics/6.png", "1 bad rows")
    scored = [score_table(rater, batch, (16, 16, 3), 10, on_bad_row="drop") for batch in batches]
    assert all(IMAGE_DIR_COLUMN not in t.column_names for t in scored)
    assert [i for t in scored for i in t.column("id").to_pylist()] == [100 + i for i in range(10) if i != 6]
    assert scored[0].column("image").equals(batches[0].column("image"))  # the path rows written back as they were
    expected = score_table(rater, raw_table(data), (16, 16, 3), 10).column(SCORE).to_numpy()
    got = np.concatenate([t.column(SCORE).to_numpy() for t in scored])
    np.testing.assert_allclose(got, np.delete(expected, 6), atol=1e-6)

"""drray's Parquet schema (docs/design.md, Data): one split as a table and back.

Images: id, image (list<uint8>, H*W*C), shape ([H, W] or [H, W, C]), label; or id, image encoded
(PNG/JPEG bytes: binary, or Hugging Face's struct<bytes, path>; drray.data.images), label, with no
shape column needed. Text: id, text (string), optional label. Both may carry the ground truth of an experiment: is_corrupted, corruption,
corruption_level.

A file without an `id` column (a Hugging Face export) numbers its rows: id = the row's position in
the split, files sorted by path and rows in order, plus `first_id` (the parquet source starts
heldout after train and test after heldout, so ids are unique over the splits). Class names
(label id -> name) are read from the schema metadata: drray's own key (CLASS_NAMES_KEY, which
write_parquet sets) or a Hugging Face ClassLabel of the label column; anything else gives None.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import numpy as np

from drray.data.tokenizer import PAD
from drray.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

from drray.data.examples import ExampleSet, as_uint8, text_examples
from drray.data.images import (BaseDirs, check_image_type, decode_every_image, has_image_paths, is_encoded_image_type,
                               row_namer)
from drray.data.tokenizer import decode

PARQUET_COLUMNS, SPLITS = ("id", "image", "shape", "label"), ("train", "test", "heldout")
ENCODED_COLUMNS = ("id", "image", "label")  # encoded images carry their own size
CLASS_NAMES_KEY = b"drray"  # schema metadata: JSON {"class_names": [...]}
HUGGING_FACE_KEY = b"huggingface"  # schema metadata: JSON {"info": {"features": {column: feature}}}


def read_parquet(path: Path, seq_len: int = 128, image_size=None, first_id: int = 0,
                 limit: Optional[int] = None) -> ExampleSet:
    """One split from a .parquet file or a folder of shards (or its first `limit` rows);
    num_classes is max label + 1, or the number of class names the file gives. A table with a
    `text` column holds text: tokenized into sequences of `seq_len` bytes. Encoded images are
    decoded, resized to image_size = (H, W) when given; a relative Hugging Face path is read from
    its file's folder. Without an id column, ids are first_id + the rows' positions."""
    import pyarrow as pa

    dataset = parquet_dataset(path)
    try:
        table = dataset.to_table() if limit is None else dataset.head(limit)
        folders = row_folders(dataset, table.num_rows) if has_image_paths(table.schema) else None
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as Parquet ({exc}); check the file".replace("\n", " ")) from None
    return examples_from_any_table(with_positions(table, first_id), path, seq_len, image_size, folders)


def with_positions(table: pa.Table, first_id: int = 0) -> pa.Table:
    """The table with an int64 `id` column of first_id + row position, when it has no id column."""
    import pyarrow as pa

    if "id" in table.column_names:
        return table
    return table.append_column("id", pa.array(first_id + np.arange(table.num_rows, dtype=np.int64), pa.int64()))


def parquet_dataset(path):
    """A pyarrow dataset of a .parquet file, or of a folder's .parquet files (searched recursively,
    sorted by path; other files, such as images beside a Hugging Face export, left out)."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from drray.storage import parquet_files

    fs, _, files = parquet_files(str(path))
    try:
        return ds.dataset(files, filesystem=fs, format="parquet")
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as Parquet ({exc}); check the file".replace("\n", " ")) from None


def count_rows(path) -> int:
    """Rows of a .parquet file or folder of shards, from the footers."""
    import pyarrow as pa

    try:
        return parquet_dataset(path).count_rows()
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{path}: cannot read as Parquet ({exc}); check the file".replace("\n", " ")) from None


def row_folders(dataset, rows: int) -> list[str]:
    """The folder of each of the first `rows` rows' files, in the dataset's (sorted) file order."""
    folders, counts = [], []
    for fragment in dataset.get_fragments():
        folders.append(str(Path(fragment.path).parent))
        counts.append(fragment.count_rows())
    return list(np.repeat(np.array(folders, dtype=object), counts)[:rows])


def class_names_from_schema(schema: pa.Schema, label: str = "label") -> Optional[tuple[str, ...]]:
    """The class names the schema metadata gives for the label column (drray's key, else a Hugging
    Face ClassLabel), or None: absent, unreadable or odd metadata (not a list of distinct strings)."""
    metadata = schema.metadata or {}
    for key, path in ((CLASS_NAMES_KEY, ("class_names",)), (HUGGING_FACE_KEY, ("info", "features", label))):
        try:
            value = json.loads(metadata[key]) if key in metadata else None
            for step in path:
                value = value.get(step) if isinstance(value, dict) else None
        except (ValueError, UnicodeDecodeError):
            value = None
        if key == HUGGING_FACE_KEY:  # a ClassLabel feature: {"names": [...], "_type": "ClassLabel"}
            value = value.get("names") if isinstance(value, dict) and value.get("_type") == "ClassLabel" else None
        if isinstance(value, list) and value and all(isinstance(name, str) for name in value) \
                and len(set(value)) == len(value):
            return tuple(value)
    return None


def with_class_names(table: pa.Table, names) -> pa.Table:
    """The table with `names` in its schema metadata (drray's key; other keys kept); None: as it is."""
    if names is None:
        return table
    metadata = dict(table.schema.metadata or {})
    metadata[CLASS_NAMES_KEY] = json.dumps({"class_names": list(names)}).encode()
    return table.replace_schema_metadata(metadata)


def check_clean(part: "ExampleSet | None", name: str, where) -> None:
    """A test split the data supplies must be clean (the evaluation takes it as ground truth), and
    so must a held-out one under data.heldout=clean (docs/design.md, "Data")."""
    if part is not None and part.is_corrupted.any():
        same = ", or set data.heldout=same" if name == "heldout" else ""
        raise DataError(f"{where} ({name}): {int(part.is_corrupted.sum())} rows are marked is_corrupted, but the {name} "
                        f"split must be clean; drop them, or leave the {name} split out and drray splits one off "
                        f"train{same}")


def examples_from_any_table(table: pa.Table, path, seq_len: int = 128, image_size=None,
                            base_dir: BaseDirs = None) -> ExampleSet:
    """Images (the image schema above) or, for a table with a `text` column, token sequences."""
    if "text" in table.column_names and "image" not in table.column_names:
        return examples_from_text_table(table, path, seq_len)
    return examples_from_table(table, path, image_size, base_dir)


def examples_from_table(table: pa.Table, path, image_size=None, base_dir: BaseDirs = None) -> ExampleSet:
    """Rows of the image schema as an ExampleSet (checked: columns, nulls, shapes, labels).
    Encoded images are decoded (resized to image_size = (H, W) when given); raw pixels are taken
    as they are (data.image_size resizes them later, in build_splits)."""
    if "image" in table.column_names:
        check_image_type(table.schema.field("image").type, path)
        if is_encoded_image_type(table.schema.field("image").type):
            return examples_from_encoded_table(table, path, image_size, base_dir)
    missing = [c for c in PARQUET_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}; needs {', '.join(PARQUET_COLUMNS)}")
    if any(table.column(column).null_count for column in PARQUET_COLUMNS):
        raise DataError(f"{path}: nulls in {', '.join(PARQUET_COLUMNS)}; fill or drop those rows")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows; write the examples there (prepare makes such files)")
    n, shapes = table.num_rows, _list_column(table, "shape", path)
    ndim = shapes.size // n if shapes.size % n == 0 else 0
    if ndim not in (2, 3) or (shapes.reshape(n, ndim) != shapes[:ndim]).any():
        raise DataError(f"{path}: column shape must be the same [H, W] or [H, W, C] on every row")
    row_shape = [int(side) for side in shapes[:ndim]]
    pixels = _list_column(table, "image", path)
    if pixels.size != n * int(np.prod(row_shape)):
        raise DataError(f"{path}: image sizes do not match shape {row_shape}; rewrite the image column")
    pixels = as_uint8(pixels, path)
    return _image_examples(table, pixels.reshape(n, *row_shape), path)


def examples_from_encoded_table(table: pa.Table, path, image_size=None, base_dir: BaseDirs = None) -> ExampleSet:
    """Rows with encoded images (id, image, label): each image decoded, the first that is null,
    undecodable or of another size or channel count than the rest a one-line DataError naming its id.
    A Hugging Face row without bytes reads its path, relative to base_dir (per row, or one folder;
    by default the folder of `path`)."""
    missing = [c for c in ENCODED_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}; encoded images need {', '.join(ENCODED_COLUMNS)}")
    if table.column("id").null_count or table.column("label").null_count:
        raise DataError(f"{path}: nulls in id or label; fill or drop those rows")
    if table.num_rows == 0:
        raise DataError(f"{path}: no rows; write the examples there")
    if base_dir is None:
        base_dir = Path(path) if Path(path).is_dir() else Path(path).parent
    ids = table.column("id").to_numpy()
    images = decode_every_image(table.column("image"), row_namer(ids, path), image_size, base_dir)
    return _image_examples(table, images, path)


def _image_examples(table: pa.Table, rows: np.ndarray, path) -> ExampleSet:
    """An ExampleSet of decoded rows and the table's id, label and ground-truth columns."""
    import pyarrow as pa

    if not pa.types.is_integer(table.schema.field("label").type):
        raise DataError(f"{path}: column label is {table.schema.field('label').type}, not an integer class; "
                        "store labels as int64")
    labels = table.column("label").to_numpy().astype(np.int64)
    if (labels < 0).any():
        raise DataError(f"{path}: negative label {labels[labels < 0][0]}; labels must be 0..num_classes-1")
    num_classes = int(labels.max(initial=-1)) + 1
    names = class_names_from_schema(table.schema)
    if names is not None and num_classes > len(names):
        names = None  # labels beyond the names: the names are not this column's
    examples = ExampleSet.clean(table.column("id").to_numpy(), rows, labels,
                                num_classes if names is None else len(names), class_names=names)
    read_ground_truth(table, examples)
    return examples


def _list_column(table: pa.Table, name: str, path: Path) -> np.ndarray:
    import pyarrow as pa

    column = table.column(name).combine_chunks()
    kind = column.type
    if not (pa.types.is_list(kind) or pa.types.is_fixed_size_list(kind) or pa.types.is_large_list(kind)):
        raise DataError(f"{path}: column {name} must be a list, got {column.type}; see docs/design.md (Data)")
    return column.flatten().to_numpy(zero_copy_only=False)  # flatten honours slicing and offsets


def read_ground_truth(table: pa.Table, examples: ExampleSet) -> None:
    """Keep prepared data's experiment columns (is_corrupted, corruption, corruption_level)."""
    import pyarrow.compute as pc

    names = table.column_names
    if "corruption" in names:
        examples.corruption = pc.fill_null(table.column("corruption"), "").to_numpy(zero_copy_only=False).astype(object)
    if "is_corrupted" in names:
        examples.is_corrupted = np.array(pc.fill_null(table.column("is_corrupted"), False), dtype=bool)
    else:
        examples.is_corrupted = examples.corruption != ""
    examples.corruption[examples.is_corrupted & (examples.corruption == "")] = "unknown"
    if "corruption_level" in names:
        examples.corruption_level = pc.fill_null(table.column("corruption_level"), 0.0).to_numpy().astype(np.float32)
    else:
        examples.corruption_level = examples.is_corrupted.astype(np.float32)


def write_parquet(examples: ExampleSet, path: Path) -> None:
    """One split as Parquet in drray's schema, ground-truth columns included; class names, when
    known, in the schema metadata (CLASS_NAMES_KEY)."""
    if examples.rows.ndim == 2:
        return write_text_parquet(examples, path)
    import pyarrow as pa
    import pyarrow.parquet as pq

    n, row_shape = len(examples.rows), list(examples.rows.shape[1:])  # [H, W] or [H, W, C]
    table = pa.table({
        "id": pa.array(examples.ids, pa.int64()),
        "image": pa.FixedSizeListArray.from_arrays(pa.array(examples.rows.reshape(-1), pa.uint8()),
                                                   int(np.prod(row_shape))),
        "shape": pa.FixedSizeListArray.from_arrays(pa.array(np.tile(row_shape, n), pa.int32()), len(row_shape)),
        **label_and_truth_columns(examples),
    })  # fmt: skip
    pq.write_table(with_class_names(table, examples.class_names), str(path))


def label_and_truth_columns(examples: ExampleSet) -> dict:
    """The columns every modality writes after its payload: label and the ground truth."""
    import pyarrow as pa

    return {
        "label": pa.array(examples.labels, pa.int64()),
        "is_corrupted": pa.array(examples.is_corrupted, pa.bool_()),
        "corruption": pa.array(examples.corruption.astype(str), pa.string()),
        "corruption_level": pa.array(examples.corruption_level, pa.float32()),
    }


def examples_from_text_table(table: pa.Table, path, seq_len: int) -> ExampleSet:
    """Rows with `id` and `text` (string) as token sequences; `label` is optional (zeros)."""
    import pyarrow as pa

    missing = [c for c in ("id", "text") if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: missing columns {', '.join(missing)}; a text data set needs id and text")
    if table.num_rows == 0 or table.column("id").null_count or table.column("text").null_count:
        raise DataError(f"{path}: needs at least one row and no nulls in id and text; fill or drop those rows")
    if not pa.types.is_string(table.column("text").type) and not pa.types.is_large_string(table.column("text").type):
        raise DataError(f"{path}: column text is {table.column('text').type}, not string; store text as UTF-8 strings")
    examples = text_examples(table.column("text").to_pylist(), seq_len)
    examples.ids = table.column("id").to_numpy().astype(np.int64)
    short = (examples.rows != PAD).sum(axis=1) < 2  # no next byte to predict: its loss would be 0, the best
    if short.any():
        raise DataError(f"{path}: {int(short.sum())} rows (the first: id {examples.ids[short][0]}) hold under 2 bytes "
                        f"of text cut to data.seq_len={seq_len} (at a character boundary), nothing for a language "
                        "model to predict; drop them, or raise data.seq_len")
    if "label" in table.column_names:
        examples.labels = table.column("label").to_numpy().astype(np.int64)
        examples.num_classes = int(examples.labels.max(initial=0)) + 1
    read_ground_truth(table, examples)
    return examples


def write_text_parquet(examples: ExampleSet, path) -> None:
    """One text split as Parquet: id, text (the sequence's bytes as UTF-8), label and ground truth."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "id": pa.array(examples.ids, pa.int64()),
        "text": pa.array([decode(row) for row in examples.rows], pa.string()),
        **label_and_truth_columns(examples),
    })  # fmt: skip
    pq.write_table(table, str(path))

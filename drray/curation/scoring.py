"""Scoring a data set with a trained rater (docs/design.md, "Using a trained rater").

`score_table` is the maths of one batch: Arrow rows of drray's Parquet schema in, the same rows
out with a float32 `score` column. Both `jobs.score` (Ray Data, a pool of `RaterScorer` actors,
actors.score_pipeline) and a plain single-process loop call it, so the two are the same computation.

`check_schema` refuses, before anything is written, an input the rater cannot read (`open_input`,
`read_rater`): a missing column, a wrong image size or dtype. Images are raw pixels (image and
shape) or encoded (PNG/JPEG bytes, drray.data.images), decoded per batch and never rewritten: the
output keeps the input's columns as they were, plus `score`. Problems of single rows (a null or
undecodable image, a pixel that is NaN or outside 0..255, a label outside the rater's classes)
are found per batch: `on_bad_row="fail"` stops with a one-line error naming the row's id;
`"drop"` removes the rows.

A Hugging Face image without bytes is read from its path: a relative one from the folder in the
batch's IMAGE_DIR_COLUMN (`positioned_batches` adds it, with the Parquet file's folder), an
unreadable one a bad row. An input without an `id` column is given one by `positioned_batches`:
the row's position in the input (files sorted, rows in order), from the Parquet footers' row counts.
Class names: `check_class_names` refuses data whose known class names differ from the rater's.
"""
from __future__ import annotations

import warnings
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from drray.data.examples import check_same_class_names
from drray.data.images import (DecodedImages, check_image_type, decode_image_column, describe_image,
                               has_image_paths, is_encoded_image_type, split_image_dirs, to_rgb, with_image_dir)
from drray.data.modality import ImageModality, TextModality, describe_rows, is_text
from drray.data.parquet import class_names_from_schema, with_positions
from drray.data.streams import decode_batch, decode_text_batch, stream_columns
from drray.errors import ConfigError, DataError

SCORE = "score"


REQUIRED_COLUMNS = ("image", "shape", "label")


BAD_ROW_MODES = ("fail", "drop")


# Rows per forward pass. On CPU a conv rater runs slower on bigger batches (the activations fall
# out of cache), so a large Ray Data batch is scored in chunks of this many rows.
CHUNK_ROWS = 512


def _is_list(kind: pa.DataType) -> bool:
    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _describe(info: dict) -> str:
    rows = describe_rows(info["row_shape"])
    return f"the rater ({info.get('arch', '?')}, step {info.get('step', '?')}) takes {rows}"


def read_rater(run_dir: str) -> tuple[bytes, dict]:
    """(rater.pt bytes, metadata) of a run (its folder, checkpoint folder or rater.pt), checked to
    rebuild into this version's rater. The bytes go to the scoring actors, which may not see the run."""
    from drray.train.checkpoint import CHECKPOINT_DIR, load_rater, run_dir_of

    _, info = load_rater(run_dir)
    return (run_dir_of(run_dir) / CHECKPOINT_DIR / "rater.pt").read_bytes(), info


def open_input(location: str):
    """(pyarrow filesystem, pyarrow dataset of its .parquet files); DataError when it is not
    Parquet. Other files in a folder (a filter's summary.json) are left out."""
    import pyarrow.dataset as pads

    from drray.storage import parquet_files

    fs, _, files = parquet_files(location)
    try:
        dataset = pads.dataset(files, filesystem=fs, format="parquet")
    except (OSError, pa.ArrowException) as exc:
        raise DataError(f"{location}: cannot read as Parquet ({exc}); check the file".replace("\n", " ")) from None
    return fs, dataset


def check_text_schema(schema: pa.Schema, info: dict, where: str) -> None:
    """A text data set needs a string `text` column (any other column is kept, none is read)."""
    if "text" not in schema.names:
        raise DataError(f"{where}: missing column text; {_describe(info)}, read from a string column text "
                        "(see docs/design.md, Data)")
    kind = schema.field("text").type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise DataError(f"{where}: column text is {kind}, not string; store text as UTF-8 strings")


def input_columns(info: dict, schema: Optional[pa.Schema] = None) -> list[str]:
    """The columns whose first row check_schema looks at: text, image and shape, or image alone
    for encoded images (which carry their size)."""
    if is_text(info["row_shape"]):
        return ["text"]
    return ["image"] if schema is not None and _is_encoded(schema) else ["image", "shape"]


def _is_encoded(schema: pa.Schema) -> bool:
    return "image" in schema.names and is_encoded_image_type(schema.field("image").type)


def check_schema(schema: pa.Schema, info: dict, where: str, first: Optional[pa.Table] = None) -> None:
    """A one-line DataError unless rows of `schema` can be scored by the rater of `info`
    (load_rater's metadata). `first`: the data set's first row(s), to check the image size
    where the schema alone cannot (variable-length lists)."""
    if is_text(info["row_shape"]):
        return check_text_schema(schema, info, where)
    if _is_encoded(schema):
        return check_encoded_schema(schema, info, where, first)
    if "image" in schema.names:
        check_image_type(schema.field("image").type, where)
    row_shape = [int(side) for side in info["row_shape"]]
    pixels = int(np.prod(row_shape))
    missing = [name for name in REQUIRED_COLUMNS if name not in schema.names]
    if missing:
        raise DataError(f"{where}: missing column{'s' if len(missing) > 1 else ''} {', '.join(missing)}; "
                        f"{_describe(info)} as image (list of uint8), shape [H, W] and label (see docs/design.md, Data)")
    image, shape, label = (schema.field(name).type for name in REQUIRED_COLUMNS)
    if not _is_list(image) or not (pa.types.is_integer(image.value_type) or pa.types.is_floating(image.value_type)):
        raise DataError(f"{where}: column image is {image}, not a list of pixels; store images as list<uint8>")
    if not _is_list(shape) or not pa.types.is_integer(shape.value_type):
        raise DataError(f"{where}: column shape is {shape}, not a list of integers [H, W] or [H, W, C]; "
                        "rewrite the shape column")
    if not pa.types.is_integer(label):
        raise DataError(f"{where}: column label is {label}, not an integer class; store labels as int64")
    if pa.types.is_fixed_size_list(image) and image.list_size != pixels:
        raise DataError(f"{where}: images have {image.list_size} pixels but {_describe(info)} ({pixels} pixels); "
                        "score data of the rater's image size, or use a rater trained on this data")
    if first is not None and first.num_rows:
        first_shape = first.column("shape")[0].as_py()
        if first_shape is not None and list(first_shape) != row_shape:
            size = "x".join(str(side) for side in first_shape)
            raise DataError(f"{where}: images are {size} (shape of the first row) but {_describe(info)}; "
                            "score data of the rater's image size, or use a rater trained on this data")
        first_image = first.column("image")[0]
        if first_image.is_valid and len(first_image) != pixels:
            raise DataError(f"{where}: the first row's image has {len(first_image)} pixels but {_describe(info)} "
                            f"({pixels} pixels); score data of the rater's image size")


def check_encoded_schema(schema: pa.Schema, info: dict, where: str, first: Optional[pa.Table] = None) -> None:
    """Encoded images need image and label (no shape); the first row's image, when it decodes, must
    have the rater's size and channel count (an undecodable one is left to the per-row checks)."""
    missing = [name for name in ("image", "label") if name not in schema.names]
    if missing:
        raise DataError(f"{where}: missing column {', '.join(missing)}; {_describe(info)} with an integer label")
    if not pa.types.is_integer(schema.field("label").type):
        raise DataError(f"{where}: column label is {schema.field('label').type}, not an integer class; "
                        "store labels as int64")
    if first is None or not first.num_rows:
        return
    row_shape = tuple(int(side) for side in info["row_shape"])
    first, folders = split_image_dirs(first.slice(0, 1))
    decoded = decode_image_column(first.column("image"), size=info.get("image_size"), base_dir=folders)
    image = decoded.images[0]
    if info.get("image_size") is not None and len(row_shape) == 3:
        image = to_rgb(image)  # as training made grayscale images among RGB ones
    if decoded.ok[0] and image.shape != row_shape:
        raise DataError(f"{where}: images are {describe_image(image)} (the first row) but {_describe(info)}; "
                        "score data of the rater's image size and colour mode, or use a rater trained on this data")


def check_class_names(schema: pa.Schema, info: dict, where: str, rater_where: str) -> None:
    """A one-line DataError when the data's schema metadata names its classes otherwise than the
    rater's metadata (label ids would mean other classes); unknown names on either side: no check."""
    check_same_class_names(class_names_from_schema(schema), info.get("class_names"), where, rater_where)


def needs_positions(schema: pa.Schema, local: bool) -> bool:
    """Whether the input's batches must carry where they come from: their ids (no id column) or
    their file's folder (local Hugging Face images, whose relative paths are read from there)."""
    return "id" not in schema.names or (local and has_image_paths(schema))


def positioned_batches(file: str, filesystem, first_id: int, rows_per_batch: int, folder=None):
    """Tables of up to rows_per_batch rows of one Parquet file, in order: with an `id` column of
    first_id + the row's position in the file when it has none, and with IMAGE_DIR_COLUMN = folder
    when a folder is given."""
    import pyarrow.parquet as pq

    position = first_id
    with filesystem.open_input_file(file) as handle:
        for batch in pq.ParquetFile(handle).iter_batches(batch_size=rows_per_batch):
            table = with_positions(pa.Table.from_batches([batch]), position)
            position += table.num_rows
            yield table if folder is None else with_image_dir(table, folder)


def _shape_ok(shape: pa.ChunkedArray, row_shape: list[int]) -> np.ndarray:
    """Per row: whether its shape is row_shape ([H, W] or [H, W, C])."""
    if isinstance(shape, pa.ChunkedArray):
        shape = shape.combine_chunks()  # 2 or 3 ints a row: a cheap copy
    ok = pc.fill_null(pc.equal(pc.list_value_length(shape), len(row_shape)), False).to_numpy(zero_copy_only=False)
    if ok.any():
        rows = shape.filter(pa.array(ok))
        sides = [pc.fill_null(pc.list_element(rows, i), -1).to_numpy(zero_copy_only=False) for i in range(len(row_shape))]
        ok[ok] = np.logical_and.reduce([side == want for side, want in zip(sides, row_shape)])
    return ok


def find_bad_rows(table: pa.Table, row_shape, num_classes: int,
                  image_size=None) -> tuple[Optional[np.ndarray], str]:
    """(mask of rows the rater cannot score, or None when every row is fine; why the first is bad).
    Encoded images are decoded (resized to image_size, the rater's data.image_size, when given):
    one that is null, undecodable or not of the rater's size and channel count is bad."""
    table, folders = split_image_dirs(table)
    if is_text(row_shape):
        return _first_bad(table, _text_checks(table))
    if _is_encoded(table.schema):
        return _encoded_bad_rows(table, row_shape, num_classes, image_size, folders)[1:]
    row_shape = [int(side) for side in row_shape]
    pixels, size = int(np.prod(row_shape)), "x".join(map(str, row_shape))
    n = table.num_rows
    checks: list[tuple[np.ndarray, str]] = []
    image = table.column("image")
    if image.null_count:
        checks.append((image.is_null().to_numpy(zero_copy_only=False), "image is null"))
    if not pa.types.is_fixed_size_list(image.type):
        lengths = pc.fill_null(pc.list_value_length(image), pixels).to_numpy(zero_copy_only=False)
        checks.append((lengths != pixels, f"image does not have {size}={pixels} values"))
    shape_bad = ~_shape_ok(table.column("shape"), row_shape)
    checks.append((shape_bad, f"shape is not {row_shape}"))
    checks.append(_label_check(table, num_classes))
    if image.type.value_type != pa.uint8() or pc.list_flatten(image).null_count:
        # NaN, null, fractional or out-of-range pixel values: not a uint8 pixel
        decodable = ~np.logical_or.reduce([mask for mask, _ in checks])
        if decodable.any():
            values = pc.list_flatten(image.filter(pa.array(decodable))).to_numpy(zero_copy_only=False)
            values = values.reshape(-1, pixels).astype(np.float64, copy=False)
            with np.errstate(invalid="ignore"):
                wrong = ~((values >= 0) & (values <= 255) & (values == np.rint(values)))
            bad_pixels = np.zeros(n, dtype=bool)
            bad_pixels[decodable] = wrong.any(axis=1)
            checks.append((bad_pixels, "pixel values must be whole numbers 0..255 (NaN, null or out of range)"))
    return _first_bad(table, checks)


def _encoded_bad_rows(table: pa.Table, row_shape, num_classes: int, image_size=None, folders=None):
    """(the decoded images, mask of bad rows or None, why the first is bad). folders: per row, where
    a relative Hugging Face path is read."""
    decoded = decode_image_column(table.column("image"), tuple(int(side) for side in row_shape), image_size, folders)
    first_image_problem = decoded.problems[min(decoded.problems)] if decoded.problems else ""
    checks = [(~decoded.ok, first_image_problem), _label_check(table, num_classes)]
    return (decoded, *_first_bad(table, checks))


def _label_check(table: pa.Table, num_classes: int) -> tuple[np.ndarray, str]:
    labels = pc.fill_null(table.column("label"), -1).to_numpy(zero_copy_only=False)
    return (labels < 0) | (labels >= num_classes), f"label outside the rater's classes 0..{num_classes - 1}"


def _text_checks(table: pa.Table) -> list[tuple[np.ndarray, str]]:
    """A text row is bad when its text is null or empty (Arrow strings are valid UTF-8, so every
    text encodes). A label column is not read: text raters score the text alone."""
    empty = pc.fill_null(pc.equal(pc.binary_length(table.column("text")), 0), True).to_numpy(zero_copy_only=False)
    return [(empty, "text is null or empty")]


def _first_bad(table: pa.Table, checks: list[tuple[np.ndarray, str]]) -> tuple[Optional[np.ndarray], str]:
    bad = np.logical_or.reduce([mask for mask, _ in checks]) if checks else np.zeros(table.num_rows, dtype=bool)
    if not bad.any():
        return None, ""
    first = int(np.flatnonzero(bad)[0])
    why = next(why for mask, why in checks if mask[first])
    return bad, f"{_row_name(table, first)}: {why}"


def _row_name(table: pa.Table, row: int) -> str:
    if "id" in table.column_names:
        return f"row id {table.column('id')[row].as_py()}"
    return "a row (no id column)"


def score_table(rater: torch.nn.Module, table: pa.Table, row_shape, num_classes: int,
                on_bad_row: str = "fail", where: str = "input", device: str | torch.device = "cpu",
                chunk_rows: int = CHUNK_ROWS, image_size=None) -> pa.Table:
    """`table` with a float32 `score` column (replacing one already there), every other column
    kept as it is (encoded images too: they are decoded for the rater, not rewritten). Rows the
    rater cannot score raise a DataError (fail) or are removed (drop); the caller counts them as
    rows in minus rows out. image_size: the rater's data.image_size, to resize encoded images.
    An IMAGE_DIR_COLUMN (per row, the folder relative image paths are read from) is not returned."""
    if on_bad_row not in BAD_ROW_MODES:
        raise ConfigError(f"on_bad_row={on_bad_row!r}: choose one of {', '.join(BAD_ROW_MODES)}")
    table, folders = split_image_dirs(table)
    decoded = None
    if not is_text(row_shape) and _is_encoded(table.schema):
        decoded, bad, reason = _encoded_bad_rows(table, row_shape, num_classes, image_size, folders)
    else:
        bad, reason = find_bad_rows(table, row_shape, num_classes)
    if bad is not None:
        if on_bad_row == "fail":
            raise DataError(f"{where}: {reason} ({int(bad.sum())} bad rows in this batch); fix those rows "
                            "or pass --on-bad-row drop to leave them out")
        table = table.filter(pa.array(~bad))
    scores = _score_decoded(rater, decoded, bad, table, device, chunk_rows) if decoded is not None else \
        _score_stored(rater, table, row_shape, num_classes, where, device, chunk_rows)
    column = pa.array(scores, type=pa.float32())
    if SCORE in table.column_names:
        return table.set_column(table.column_names.index(SCORE), SCORE, column)
    return table.append_column(SCORE, column)


def _score_decoded(rater: torch.nn.Module, decoded: DecodedImages, bad: Optional[np.ndarray], table: pa.Table,
                   device, chunk_rows: int) -> np.ndarray:
    """Scores of decoded images (the bad rows already out of `table`) in chunks of chunk_rows."""
    images = decoded.images if bad is None else decoded.images[~bad]
    labels = torch.from_numpy(table.column("label").to_numpy().astype(np.int64))
    scores = np.empty(table.num_rows, dtype=np.float32)
    with torch.no_grad():
        for start in range(0, table.num_rows, chunk_rows):
            x = ImageModality.inputs(torch.from_numpy(images[start:start + chunk_rows]).to(device))
            y = labels[start:start + chunk_rows].to(device)
            scores[start:start + len(y)] = rater(x, y).float().cpu().numpy()
    return scores


def _score_stored(rater: torch.nn.Module, table: pa.Table, row_shape, num_classes: int, where: str, device,
                  chunk_rows: int) -> np.ndarray:
    """Scores of raw pixel or text rows, read from the Arrow batches in chunks of chunk_rows."""
    scores = np.empty(table.num_rows, dtype=np.float32)
    start = 0
    read = _text_inputs if is_text(row_shape) else _image_inputs
    with torch.no_grad():
        # Record batches are contiguous: flattening their image lists is zero-copy.
        for batch in table.select(stream_columns(row_shape)).to_batches(max_chunksize=chunk_rows):
            x, y = read(batch, row_shape, num_classes, where, torch.device(device))
            scores[start:start + len(y)] = rater(x, y).float().cpu().numpy()
            start += len(y)
    return scores


def _image_inputs(batch: pa.RecordBatch, row_shape, num_classes: int, where: str, device: torch.device):
    """(float images [B, C, H, W] in [0, 1], int64 labels [B]) on `device`, as in meta-training."""
    images, labels = decode_batch(batch, row_shape, num_classes, where)
    with warnings.catch_warnings():  # Arrow's buffers are read-only: inputs() converts to a new tensor
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        rows = torch.from_numpy(images)
    return ImageModality.inputs(rows.to(device)), torch.from_numpy(labels).to(device)


def _text_inputs(batch: pa.RecordBatch, row_shape, num_classes: int, where: str, device: torch.device):
    """(int64 tokens [B, L], zero labels [B]): each text's first L bytes (cut at a character
    boundary, as the rater was trained on sequences of L bytes), padded."""
    tokens, labels = decode_text_batch(batch, row_shape[0], where)
    return TextModality.inputs(torch.from_numpy(tokens).to(device)), torch.from_numpy(labels).to(device)


def for_scoring(rater: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """The rater, moved in place to `device` and on CPU with its conv weights channels-last: oneDNN
    then runs the convs without a layout conversion, 1.11x the rows/s on one thread and 1.16x on
    two (BENCHMARKS.md); its pools keep their outputs channels-last too (MaxPool2x2.output_layout).
    Scores move in rounding only (~4e-8); not for meta-training, where the rater's forward with and
    without a graph must agree bit for bit."""
    from drray.models.layers import MaxPool2x2

    rater = rater.to(device)
    if device.type != "cpu":
        return rater
    for pool in (m for m in rater.modules() if isinstance(m, MaxPool2x2)):
        pool.output_layout = None
    return rater.to(memory_format=torch.channels_last)

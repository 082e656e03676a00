"""Images as users store them: encoded files (PNG, JPEG, ...) and Arrow columns of encoded bytes,
turned into drray's rows, uint8 [H, W] (grayscale) or [H, W, 3] (RGB). Pillow decodes and resizes.

An Arrow `image` column may hold raw pixels (list<uint8>, with a `shape` column: drray.data.parquet)
or encoded images: binary / large_binary bytes, or Hugging Face's struct<bytes: binary, path: string>
(`datasets.Image()`), whose bytes may be null where path names the file: a relative path is read
from the folder of the Parquet file that holds the row. Where rows travel as batches that forgot
their file (jobs.score, streamed training), the reader adds that folder as IMAGE_DIR_COLUMN.
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence, Union

import numpy as np

from drray.errors import DataError

if TYPE_CHECKING:
    import pyarrow as pa

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")  # what an image folder reads (any case)
ACCEPTED_IMAGE_TYPES = ("list<uint8> pixels with a shape column", "binary (PNG/JPEG bytes)",
                        "struct<bytes: binary, path: string> (Hugging Face datasets.Image)")
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")  # 16-bit grayscale PNG opens as I;16
IMAGE_DIR_COLUMN = "_drray_image_dir"  # per row: the folder of its Parquet file (read there, never written)
BaseDirs = Union[None, str, Path, Sequence[Optional[str]]]  # one folder for every row, or one per row


def decode_image(data: bytes, where: str) -> np.ndarray:
    """Encoded image bytes -> uint8 [H, W] (one channel) or [H, W, 3] (colour; alpha is dropped).
    A one-line DataError naming `where` (a file, or "FILE: row id N") when Pillow cannot read it."""
    image, problem = image_or_problem(data)
    if image is None:
        raise DataError(f"{where}: {problem}; replace or remove it")
    return image


def image_or_problem(data: bytes) -> tuple[Optional[np.ndarray], str]:
    """(rows, "") or (None, why Pillow cannot decode `data`)."""
    from PIL import Image

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # a truncated file fails here, not at open
            return _as_rows(image), ""
    except Exception as exc:  # Pillow raises OSError, ValueError, SyntaxError, struct.error... on bad bytes
        why = " ".join(str(exc).split()) or type(exc).__name__
        return None, f"cannot decode the image ({why})"


def _as_rows(image) -> np.ndarray:
    """A loaded Pillow image as uint8 rows: L, 1 and 16-bit modes (and LA: gray with alpha) give
    [H, W]; RGB, RGBA, P, CMYK, YCbCr... give [H, W, 3]."""
    if image.mode in SIXTEEN_BIT_MODES:  # Pillow's convert("L") clips 16-bit values at 255: scale instead
        wide = np.asarray(image, dtype=np.float64)
        return np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    if image.mode in ("L", "1", "LA", "F"):
        return np.asarray(image if image.mode == "L" else image.convert("L"), dtype=np.uint8)
    return np.asarray(image if image.mode == "RGB" else image.convert("RGB"), dtype=np.uint8)


def read_image_file(path: Path) -> np.ndarray:
    """An image file's rows; a DataError naming the file when it is missing or undecodable."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise DataError(f"{path}: cannot read the image ({exc.strerror or exc}); check the file") from None
    return decode_image(data, str(path))


def resize(image: np.ndarray, size: Optional[Sequence[int]]) -> np.ndarray:
    """`image` resized to size = (H, W), bilinear (Pillow's, which also averages when it shrinks);
    None, or the size it has: the image unchanged."""
    if size is None or tuple(image.shape[:2]) == tuple(size):
        return image
    from PIL import Image

    height, width = (int(side) for side in size)
    return np.asarray(Image.fromarray(image).resize((width, height), Image.Resampling.BILINEAR), dtype=np.uint8)


def describe_image(image: np.ndarray) -> str:
    """'32x32 RGB' or '28x28 grayscale'."""
    colour = "RGB" if image.ndim == 3 else "grayscale"
    return f"{image.shape[0]}x{image.shape[1]} {colour}"


def to_rgb(image: np.ndarray) -> np.ndarray:
    """A grayscale image as RGB (three equal channels: nothing is lost); an RGB image unchanged."""
    return image if image.ndim == 3 else np.repeat(image[:, :, None], 3, axis=2)


def stack_images(images: list[np.ndarray], where_of: Callable[[int], str], to_one_mode: bool = False) -> np.ndarray:
    """One array [N, H, W] or [N, H, W, 3] from images of one size and channel count. The first image
    unlike most of the others is a one-line DataError naming it (`where_of(i)`). to_one_mode
    (data.image_size is set): grayscale images among RGB ones become RGB instead."""
    if not images:
        raise DataError(f"{where_of(0)}: no images")
    if to_one_mode and any(image.ndim == 3 for image in images):
        images = [to_rgb(image) for image in images]
    shapes = [image.shape for image in images]
    usual = max(set(shapes), key=shapes.count)
    odd = next((i for i, shape in enumerate(shapes) if shape != usual), None)
    if odd is not None:
        raise DataError(_odd_image_message(images[odd], usual, where_of(odd), shapes.count(usual), len(images)))
    return np.stack(images)


def _odd_image_message(image: np.ndarray, usual: tuple, where: str, count: int, total: int) -> str:
    usual_text = describe_image(np.empty(usual, np.uint8))
    if image.shape[:2] != usual[:2]:
        return (f"{where}: image is {describe_image(image)} but {count} of {total} are {usual_text}; "
                "set data.image_size: [H, W] to resize every image to one size (grayscale ones among RGB "
                "ones then become RGB)")
    modes = ("grayscale", "RGB") if image.ndim == 2 else ("RGB", "grayscale")
    return (f"{where}: image is {modes[0]} but {count} of {total} are {modes[1]}; convert the images to one "
            "colour mode, or set data.image_size: [H, W] to make every image that size and RGB")


# ----------------------------------------------------------------------------- Arrow columns


def is_encoded_image_type(kind: "pa.DataType") -> bool:
    """binary / large_binary (encoded bytes) or a struct with a binary `bytes` field (Hugging Face)."""
    import pyarrow as pa

    if pa.types.is_binary(kind) or pa.types.is_large_binary(kind):
        return True
    if pa.types.is_struct(kind) and kind.get_field_index("bytes") >= 0:
        inner = kind.field("bytes").type
        return pa.types.is_binary(inner) or pa.types.is_large_binary(inner)
    return False


def is_pixel_list_type(kind: "pa.DataType") -> bool:
    """list / large_list / fixed_size_list of integers or floats: raw pixels (drray's schema)."""
    import pyarrow as pa

    if not (pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)):
        return False
    return pa.types.is_integer(kind.value_type) or pa.types.is_floating(kind.value_type)


def check_image_type(kind: "pa.DataType", where: str) -> None:
    """A one-line DataError unless the `image` column is raw pixels or encoded images."""
    if not (is_encoded_image_type(kind) or is_pixel_list_type(kind)):
        raise DataError(f"{where}: column image is {kind}, which drray cannot read as images; store it as one of: "
                        f"{'; '.join(ACCEPTED_IMAGE_TYPES)}")


@dataclass
class DecodedImages:
    """Rows of an encoded column: images [N, ...] (zeros where not ok), which rows decoded to the
    expected shape (`ok`), and why each bad row is bad (row index -> reason)."""
    images: np.ndarray
    ok: np.ndarray
    problems: dict[int, str]


def has_image_paths(schema: "pa.Schema") -> bool:
    """Whether the schema's image column can name files (Hugging Face's struct<bytes, path>)."""
    import pyarrow as pa

    if "image" not in schema.names:
        return False
    kind = schema.field("image").type
    return pa.types.is_struct(kind) and kind.get_field_index("path") >= 0


def with_image_dir(batch, folder: str):
    """The batch (Table or RecordBatch) with IMAGE_DIR_COLUMN = folder on every row."""
    import pyarrow as pa

    return batch.append_column(IMAGE_DIR_COLUMN, pa.array([str(folder)] * batch.num_rows, pa.string()))


def split_image_dirs(batch) -> tuple:
    """(the batch without IMAGE_DIR_COLUMN, its per-row folders or None when it has none)."""
    if IMAGE_DIR_COLUMN not in batch.schema.names:
        return batch, None
    return batch.drop_columns([IMAGE_DIR_COLUMN]), batch.column(IMAGE_DIR_COLUMN).to_pylist()


def _row_dirs(base_dir: BaseDirs, rows: int) -> list:
    if base_dir is None or isinstance(base_dir, (str, Path)):
        return [base_dir] * rows
    if len(base_dir) != rows:
        raise ValueError(f"{len(base_dir)} base folders for {rows} rows")
    return list(base_dir)


def encoded_image_bytes(column, base_dir: BaseDirs = None) -> list[tuple[Optional[bytes], str]]:
    """Per row (bytes or None, where they came from or why there are none). A Hugging Face struct row
    with null bytes reads its `path`: a relative one from `base_dir` (the Parquet file's folder; one
    for all rows, or one per row) when that is known, else from the working directory."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_struct(column.type):
        return [(data, "") if data is not None else (None, "image is null") for data in column.to_pylist()]
    fields = dict(zip((field.name for field in column.type), column.flatten()))  # flatten honours slicing
    data = fields["bytes"].to_pylist()
    paths = fields["path"].to_pylist() if "path" in fields else [None] * len(column)
    valid = column.is_valid().to_pylist()
    return [_struct_row_bytes(row_data, path, is_valid, folder)
            for row_data, path, is_valid, folder in zip(data, paths, valid, _row_dirs(base_dir, len(column)))]


def _struct_row_bytes(data, path, is_valid: bool, base_dir) -> tuple[Optional[bytes], str]:
    if not is_valid:
        return None, "image is null"
    if data is not None:
        return data, ""
    if not path:
        return None, "image has neither bytes nor a path"
    file = Path(path)
    if not file.is_absolute() and base_dir is not None:
        file = Path(base_dir) / file
    try:
        return file.read_bytes(), str(file)
    except OSError as exc:
        return None, f"image bytes are null and its path {file} cannot be read ({exc.strerror or exc})"


def decode_image_column(column, shape: Optional[tuple] = None, size: Optional[Sequence[int]] = None,
                        base_dir: BaseDirs = None) -> DecodedImages:
    """Decode an encoded Arrow image column, resized to `size` when given. `shape`: the row shape
    every image must have ((H, W) or (H, W, 3)); None: the shape most rows have. A row that is null,
    undecodable or of another shape is not ok (never an exception: the caller fails or drops it).
    With a size (data.image_size), grayscale images among RGB ones become RGB."""
    decoded: list[Optional[np.ndarray]] = []
    problems: dict[int, str] = {}
    for row, (data, origin) in enumerate(encoded_image_bytes(column, base_dir)):
        image, problem = (None, origin) if data is None else image_or_problem(data)
        if image is None:
            problems[row] = f"{origin}: {problem}" if data is not None and origin else problem
        decoded.append(None if image is None else resize(image, size))
    return _gathered(decoded, problems, shape, to_one_mode=size is not None)


def _gathered(decoded: list[Optional[np.ndarray]], problems: dict[int, str], shape: Optional[tuple],
              to_one_mode: bool) -> DecodedImages:
    colour = len(shape) == 3 if shape is not None else any(image is not None and image.ndim == 3 for image in decoded)
    if to_one_mode and colour:
        decoded = [None if image is None else to_rgb(image) for image in decoded]
    shapes = [image.shape for image in decoded if image is not None]
    if shape is None:
        shape = max(set(shapes), key=shapes.count) if shapes else (1, 1)
    shape = tuple(shape)
    images = np.zeros((len(decoded),) + shape, dtype=np.uint8)
    ok = np.zeros(len(decoded), dtype=bool)
    for row, image in enumerate(decoded):
        if image is None:
            continue
        if image.shape != shape:
            problems[row] = f"image is {describe_image(image)}, not {describe_image(np.empty(shape, np.uint8))}"
            continue
        images[row], ok[row] = image, True
    return DecodedImages(images, ok, problems)


def decode_every_image(column, row_name: Callable[[int], str], size: Optional[Sequence[int]] = None,
                       base_dir: BaseDirs = None) -> np.ndarray:
    """A whole encoded column as one array [N, H, W] or [N, H, W, 3], for data read into memory:
    the first null, undecodable or odd-sized row is a one-line DataError naming it (`row_name(i)`)."""
    images = []
    for row, (data, origin) in enumerate(encoded_image_bytes(column, base_dir)):
        if data is None:
            raise DataError(f"{row_name(row)}: {origin}; fill or drop that row")
        where = f"{row_name(row)} ({origin})" if origin else row_name(row)
        images.append(resize(decode_image(data, where), size))
    return stack_images(images, row_name, to_one_mode=size is not None)


def row_namer(ids, where: str) -> Callable[[int], str]:
    """row index -> "WHERE: row id N" (or the row's index when there are no ids)."""
    if ids is None:
        return lambda row: f"{where}: row {row}"
    return lambda row: f"{where}: row id {ids[row]}"

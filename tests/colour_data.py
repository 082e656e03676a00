"""Test data in the forms users keep images: "coloured digits" (scikit-learn's 8x8 digits, each
tinted with its own random hue, optionally upscaled, a fraction of labels flipped for ground truth),
written as a class-folder tree of PNG files, as Hugging Face-style Parquet (image struct<bytes, path>)
or as Parquet of plain PNG bytes, or as a Hugging Face export (no id column, ClassLabel names in the
schema metadata, images as files beside the Parquet). Offline, seeded and small (1,797 images at most).
"""
from __future__ import annotations

import colorsys
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

DIGIT_NAMES = tuple(str(digit) for digit in range(10))  # sorted as the digits: class id = digit
WORD_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # sorted otherwise


@dataclass
class TintedDigits:
    images: np.ndarray  # uint8 [N, H, W, 3]
    labels: np.ndarray  # int64 [N], flipped where is_corrupted
    true_labels: np.ndarray  # int64 [N]
    is_corrupted: np.ndarray  # bool [N]: the label was flipped

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index) -> "TintedDigits":
        return TintedDigits(self.images[index], self.labels[index], self.true_labels[index], self.is_corrupted[index])

    def cleaned(self) -> "TintedDigits":
        """The same images with their true labels."""
        return TintedDigits(self.images, self.true_labels, self.true_labels, np.zeros(len(self), dtype=bool))


def tinted_digits(count: Optional[int] = None, side: int = 8, flip_fraction: float = 0.0, seed: int = 0) -> TintedDigits:
    """`count` of scikit-learn's digits (all 1,797 by default), each drawn in a random hue on black
    (colours differ between images, never the digit), upscaled to side x side (nearest-neighbour: side a multiple of 8), and
    a `flip_fraction` of labels changed to another class."""
    from sklearn.datasets import load_digits

    rng = np.random.default_rng(seed)
    digits = load_digits()
    chosen = np.sort(rng.choice(len(digits.target), count, replace=False)) if count else np.arange(len(digits.target))
    gray = digits.images[chosen] / 16.0  # [N, 8, 8] in [0, 1]
    ink = np.array([colorsys.hsv_to_rgb(hue, 0.8, 1.0) for hue in rng.random(len(chosen))])
    rgb = gray[..., None] * ink[:, None, None, :]
    images = np.rint(rgb * 255.0).astype(np.uint8)
    scale = side // 8
    images = images.repeat(scale, axis=1).repeat(scale, axis=2)
    true_labels = digits.target[chosen].astype(np.int64)
    labels, is_corrupted = flip_labels(true_labels, flip_fraction, rng)
    return TintedDigits(images, labels, true_labels, is_corrupted)


def flip_labels(labels: np.ndarray, fraction: float, rng: np.random.Generator, classes: int = 10):
    """(labels with a `fraction` moved to a different class, which were moved)."""
    flipped = np.zeros(len(labels), dtype=bool)
    flipped[rng.choice(len(labels), int(round(fraction * len(labels))), replace=False)] = True
    shifted = (labels + rng.integers(1, classes, len(labels))) % classes
    return np.where(flipped, shifted, labels), flipped


def png_bytes(image: np.ndarray) -> bytes:
    """An image [H, W] or [H, W, 3] as PNG bytes (lossless)."""
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="PNG")
    return out.getvalue()


def jpeg_bytes(image: np.ndarray, quality: int = 95) -> bytes:
    from PIL import Image

    out = io.BytesIO()
    Image.fromarray(image).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def write_class_tree(root: Path, data: TintedDigits, splits: Optional[dict[str, np.ndarray]] = None,
                     names=DIGIT_NAMES) -> dict[Path, bool]:
    """PNG files root/<class name>/<n>.png, or root/<split>/<class name>/<n>.png for splits
    {split: row index}; the class of a file is its (possibly flipped) label, named names[label].
    imagefolder numbers classes by sorted name: with WORD_NAMES the ids are not the digits.
    Returns each file's ground truth (is_corrupted)."""
    root = Path(root)
    parts = splits or {"": np.arange(len(data))}
    truth = {}
    for split, index in parts.items():
        for row in index:
            folder = root / split / names[data.labels[row]]
            folder.mkdir(parents=True, exist_ok=True)
            path = folder / f"{row:05d}.png"
            path.write_bytes(png_bytes(data.images[row]))
            truth[path] = bool(data.is_corrupted[row])
    return truth


def truth_columns(data: TintedDigits) -> dict:
    """drray's ground-truth columns (drray.data.parquet.label_and_truth_columns, less label)."""
    return {
        "is_corrupted": pa.array(data.is_corrupted, pa.bool_()),
        "corruption": pa.array(np.where(data.is_corrupted, "label_flip", ""), pa.string()),
        "corruption_level": pa.array(data.is_corrupted.astype(np.float32), pa.float32()),
    }


def hf_image_column(images: np.ndarray) -> pa.StructArray:
    """Hugging Face's datasets.Image() column: struct<bytes: binary, path: string>, PNG bytes, no path."""
    encoded = pa.array([png_bytes(image) for image in images], pa.binary())
    return pa.StructArray.from_arrays([encoded, pa.nulls(len(images), pa.string())], names=["bytes", "path"])


def encoded_table(data: TintedDigits, form: str = "hf", first_id: int = 0, truth: bool = True) -> pa.Table:
    """id, image (form "hf": struct<bytes, path>; "png": binary), label and the ground truth."""
    image = hf_image_column(data.images) if form == "hf" else pa.array([png_bytes(i) for i in data.images], pa.binary())
    columns = {"id": pa.array(first_id + np.arange(len(data)), pa.int64()), "image": image,
               "label": pa.array(data.labels, pa.int64())}
    return pa.table({**columns, **(truth_columns(data) if truth else {})})


def write_encoded_parquet(folder: Path, parts: dict[str, TintedDigits], form: str = "hf") -> Path:
    """folder/<split>.parquet for each part ({"train": ..., "heldout": ..., "test": ...}), ids unique
    across them; heldout and test are written with their true labels (they must be clean)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    first_id = 0
    for split, data in parts.items():
        data = data if split == "train" else data.cleaned()
        pq.write_table(encoded_table(data, form, first_id), str(folder / f"{split}.parquet"))
        first_id += len(data)
    return folder


def split_index(count: int, heldout: int, test: int, seed: int = 0) -> dict[str, np.ndarray]:
    """A seeded partition of range(count) into train, heldout and test row indices."""
    order = np.random.default_rng(seed).permutation(count)
    return {"heldout": np.sort(order[:heldout]), "test": np.sort(order[heldout:heldout + test]),
            "train": np.sort(order[heldout + test:])}


def hf_metadata(names) -> dict:
    """Schema metadata as Hugging Face datasets writes it (Features.arrow_schema) for an Image
    column and a ClassLabel label column naming the classes."""
    features = {"image": {"_type": "Image"}, "label": {"names": list(names), "_type": "ClassLabel"}}
    return {b"huggingface": json.dumps({"info": {"features": features}}).encode()}


def write_hf_export(file: Path, data: TintedDigits, names=None, as_files=(), missing=()) -> Path:
    """A Hugging Face-style export at `file`: image struct<bytes, path> and label, no id column, the
    class names (when given) in the schema metadata. Rows in `as_files` are PNG files
    pics/<row>.png beside the Parquet file, named by relative path with null bytes; rows in
    `missing` name such a file without writing it."""
    file = Path(file)
    (file.parent / "pics").mkdir(parents=True, exist_ok=True)
    data_bytes, paths = [], []
    for row, image in enumerate(data.images):
        relative = f"pics/{row}.png"
        if row in as_files:
            (file.parent / relative).write_bytes(png_bytes(image))
        on_disk = row in as_files or row in missing
        data_bytes.append(None if on_disk else png_bytes(image))
        paths.append(relative if on_disk else None)
    image = pa.StructArray.from_arrays([pa.array(data_bytes, pa.binary()), pa.array(paths, pa.string())],
                                       names=["bytes", "path"])
    table = pa.table({"image": image, "label": pa.array(data.labels, pa.int64())})
    pq.write_table(table.replace_schema_metadata(hf_metadata(names) if names is not None else None), str(file))
    return file

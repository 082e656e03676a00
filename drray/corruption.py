"""Synthetic corruption of a fixed, seeded subset of the training set (applied once, not per epoch).

A corruption kind is `fn(images, labels, num_classes, rng) -> (images, labels, level)`, called on
the selected rows only; `level` (float32 per row) says how strongly each row was corrupted. New
kinds plug in with `@CORRUPTIONS.register("name")` and are then valid in `data.corruption`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from drray.errors import DataError
from drray.modality import modality_of_array
from drray.registry import CORRUPTIONS

if TYPE_CHECKING:  # data.py imports this module; the class is only needed for type hints here
    from drray.config import CorruptionSpec
    from drray.data import ExampleSet

__all__ = ["CORRUPTIONS", "apply_corruptions", "label_flip", "pixel_noise", "seeded_rng"]

# Separate random streams per stage, so e.g. changing max_train does not move the test split.
STAGE_SELECT, STAGE_APPLY = 101, 102


def seeded_rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for (seed, stream...); any int seed, negative included."""
    return np.random.default_rng([seed % 2**64, *stream])


@CORRUPTIONS.register("pixel_noise")
def pixel_noise(images: np.ndarray, labels: np.ndarray, num_classes: int, rng: np.random.Generator):
    """Replace a fraction f ~ U(0.1, 0.9) of each image's pixels by uniform noise in 0..255."""
    n = len(images)
    flat = images.reshape(n, int(np.prod(images.shape[1:]))).copy()  # -1 fails for n = 0
    pixels = flat.shape[1]
    wanted = np.clip(np.rint(rng.uniform(0.1, 0.9, size=n) * pixels), 1, pixels).astype(np.int64)
    # Random keys per pixel; a row's `wanted` smallest keys are hit. A sort is 3x faster than
    # permuting positions; uint32 keys make ties (one extra hit) vanishingly rare.
    keys = rng.integers(0, 2**32, size=(n, pixels), dtype=np.uint32)
    threshold = np.take_along_axis(np.sort(keys, axis=1), wanted[:, None] - 1, axis=1)
    hit = keys <= threshold
    noise = rng.integers(0, 256, size=(n, pixels), dtype=np.uint8)
    flat[hit] = noise[hit]
    level = hit.mean(axis=1, dtype=np.float64).astype(np.float32)  # the exact fraction replaced, ~f
    return flat.reshape(images.shape), labels.copy(), level


@CORRUPTIONS.register("label_flip")
def label_flip(images: np.ndarray, labels: np.ndarray, num_classes: int, rng: np.random.Generator):
    """Replace each label by a uniformly random different label."""
    if num_classes < 2:
        raise DataError(f"label_flip: needs 2+ classes, the data has {num_classes}; drop it from data.corruption")
    shift = rng.integers(1, num_classes, size=len(labels))  # 1..C-1: never lands on the same class
    flipped = (labels.astype(np.int64) + shift) % num_classes
    return images.copy(), flipped, np.ones(len(labels), dtype=np.float32)


def _count(fraction: float, total: int) -> int:
    # Round down, but forgive float error: 0.29 * 100 is 28.999999999999996.
    return int(math.floor(fraction * total + 1e-9))


def kind_modality(kind: str) -> str:
    """Which data a kind corrupts: 'image' unless its function says otherwise (fn.modality)."""
    return getattr(CORRUPTIONS.get(kind), "modality", "image")


def _check_modalities(examples: "ExampleSet", specs: Sequence["CorruptionSpec"]) -> None:
    data = modality_of_array(examples.images).name
    for spec in specs:
        if kind_modality(spec.kind) != data:
            fitting = [k for k in CORRUPTIONS.names() if kind_modality(k) == data]
            raise DataError(f"data.corruption: {spec.kind!r} corrupts {kind_modality(spec.kind)} data but this data "
                            f"set is {data}; use one of: {', '.join(fitting)}")


def apply_corruptions(examples: "ExampleSet", specs: Sequence["CorruptionSpec"], seed: int) -> "ExampleSet":
    """Corrupt disjoint seeded subsets, `spec.fraction * len(examples)` rows per spec, once each.

    Rows are drawn only from rows not already corrupted (prepared data may carry its own
    corruption), so each row has one kind. Returns a new ExampleSet; the input is untouched.
    """
    _check_modalities(examples, specs)
    counts = [_count(spec.fraction, len(examples)) for spec in specs]
    clean_rows = np.flatnonzero(~examples.is_corrupted)
    if sum(counts) > len(clean_rows):
        raise DataError(
            f"data.corruption: asks for {sum(counts)} corrupted rows but only {len(clean_rows)} clean rows "
            "exist; lower the fractions"
        )
    candidates = seeded_rng(seed, STAGE_SELECT).permutation(clean_rows)
    images, labels = examples.images.copy(), examples.labels.copy()
    is_corrupted, corruption = examples.is_corrupted.copy(), examples.corruption.copy()
    level = examples.corruption_level.copy()
    start = 0
    for i, (spec, count) in enumerate(zip(specs, counts)):
        rows = np.sort(candidates[start : start + count])
        start += count
        if count == 0:
            continue
        corrupt = CORRUPTIONS.get(spec.kind)
        images[rows], labels[rows], level[rows] = corrupt(
            images[rows], labels[rows], examples.num_classes, seeded_rng(seed, STAGE_APPLY, i)
        )
        is_corrupted[rows], corruption[rows] = True, spec.kind
    return dataclasses.replace(
        examples, images=images, labels=labels, is_corrupted=is_corrupted, corruption=corruption, corruption_level=level
    )


from drray import text_corruption  # noqa: E402,F401  (registers the text kinds)

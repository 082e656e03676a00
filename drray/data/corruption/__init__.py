"""Synthetic corruption of a fixed, seeded subset of the training set (applied once, not per epoch).

A corruption kind is `fn(rows, labels, num_classes, rng) -> (rows, labels, level)`, called on
the selected rows only; `level` (float32 per row) says how strongly each row was corrupted. New
kinds plug in with `@CORRUPTIONS.register("name")` and are then valid in `data.corruption`; the
built-ins (image.py, text.py) register on import of this package.
"""
from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING, Sequence

import numpy as np

from drray.data.corruption import image, text  # noqa: F401  (register the built-in kinds)
from drray.data.modality import modality_of_array
from drray.errors import DataError
from drray.registry import CORRUPTIONS

if TYPE_CHECKING:
    from drray.config import CorruptionSpec
    from drray.data.examples import ExampleSet
from drray import seeds
from drray.seeds import seeded_rng


def _count(fraction: float, total: int) -> int:
    # Round down, but forgive float error: 0.29 * 100 is 28.999999999999996.
    return int(math.floor(fraction * total + 1e-9))


def kind_modality(kind: str) -> str:
    """Which data a kind corrupts: 'image' unless its function says otherwise (fn.modality)."""
    return getattr(CORRUPTIONS.get(kind), "modality", "image")


def _check_modalities(examples: "ExampleSet", specs: Sequence["CorruptionSpec"]) -> None:
    data = modality_of_array(examples.rows).name
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
    candidates = seeded_rng(seed, seeds.CORRUPT_SELECT).permutation(clean_rows)
    data, labels = examples.rows.copy(), examples.labels.copy()
    is_corrupted, corruption = examples.is_corrupted.copy(), examples.corruption.copy()
    level = examples.corruption_level.copy()
    start = 0
    for i, (spec, count) in enumerate(zip(specs, counts)):
        chosen = np.sort(candidates[start : start + count])
        start += count
        if count == 0:
            continue
        corrupt = CORRUPTIONS.get(spec.kind)
        data[chosen], labels[chosen], level[chosen] = corrupt(
            data[chosen], labels[chosen], examples.num_classes, seeded_rng(seed, seeds.CORRUPT_APPLY, i)
        )
        is_corrupted[chosen], corruption[chosen] = True, spec.kind
    return dataclasses.replace(
        examples, rows=data, labels=labels, is_corrupted=is_corrupted, corruption=corruption, corruption_level=level
    )

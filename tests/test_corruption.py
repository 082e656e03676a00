import dataclasses

import numpy as np
import pytest

from drray.config import CorruptionSpec
from drray.data.corruption import CORRUPTIONS, apply_corruptions
from drray.data.corruption.image import label_flip, pixel_noise
from drray.data.examples import ExampleSet
from drray.errors import DataError


def random_examples(n=1000, side=8, num_classes=10, seed=0) -> ExampleSet:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
    return ExampleSet.clean(np.arange(n) + 100, images, rng.integers(0, num_classes, n), num_classes)


def specs(**fractions) -> list[CorruptionSpec]:
    return [CorruptionSpec(kind=kind, fraction=fraction) for kind, fraction in fractions.items()]


def test_registry_re_exported_with_built_in_kinds():
    assert {"pixel_noise", "label_flip"} <= set(CORRUPTIONS.names())


def test_exact_disjoint_counts_and_ground_truth():
    examples = random_examples()
    out = apply_corruptions(examples, specs(label_flip=0.25, pixel_noise=0.3), seed=1)
    assert (out.corruption == "label_flip").sum() == 250
    assert (out.corruption == "pixel_noise").sum() == 300
    assert out.is_corrupted.sum() == 550
    assert np.array_equal(out.is_corrupted, out.corruption != "")
    clean = ~out.is_corrupted
    assert np.all(out.corruption_level[clean] == 0)
    assert np.array_equal(out.rows[clean], examples.rows[clean])
    assert np.array_equal(out.labels[clean], examples.labels[clean])
    assert np.array_equal(out.ids, examples.ids)


def test_count_rounds_down_without_float_error():
    # 0.29 * 100 is 28.999999999999996 in floating point; the intended count is 29.
    assert apply_corruptions(random_examples(100), specs(label_flip=0.29), 0).is_corrupted.sum() == 29
    assert apply_corruptions(random_examples(99), specs(label_flip=0.5), 0).is_corrupted.sum() == 49


def test_input_is_not_mutated():
    examples = random_examples()
    before = dataclasses.replace(examples, rows=examples.rows.copy(), labels=examples.labels.copy())
    apply_corruptions(examples, specs(label_flip=0.4, pixel_noise=0.4), 0)
    assert np.array_equal(examples.rows, before.rows) and np.array_equal(examples.labels, before.labels)
    assert not examples.is_corrupted.any() and set(examples.corruption) == {""}


def test_label_flip_never_keeps_the_label_and_spreads_over_the_others():
    examples = random_examples(6000, num_classes=3)
    out = apply_corruptions(examples, specs(label_flip=1.0), 0)
    assert np.all(out.labels != examples.labels)
    assert np.all((out.labels >= 0) & (out.labels < 3))
    assert np.array_equal(out.rows, examples.rows)
    assert np.all(out.corruption_level == 1.0)
    # From class 0, the new label is 1 or 2 with probability 1/2 each.
    share_of_ones = np.mean(out.labels[examples.labels == 0] == 1)
    assert 0.45 < share_of_ones < 0.55


def test_pixel_noise_changes_at_most_level_of_the_pixels():
    examples = random_examples(2000, side=28)
    out = apply_corruptions(examples, specs(pixel_noise=0.5), 3)
    rows = out.corruption == "pixel_noise"
    pixels = 28 * 28
    changed = (out.rows[rows] != examples.rows[rows]).reshape(rows.sum(), -1).sum(axis=1)
    level = out.corruption_level[rows]
    assert np.all(changed <= np.rint(level * pixels))
    assert level.min() >= 0.09 and level.max() <= 0.91 and 0.4 < level.mean() < 0.6
    # A replaced pixel keeps its value only when the noise draws that same value (1 in 256).
    assert abs(changed.sum() / np.rint(level * pixels).sum() - 255 / 256) < 0.01
    assert np.array_equal(out.labels, examples.labels)


def test_same_seed_same_rows_other_seed_other_rows():
    examples = random_examples()
    chosen = specs(pixel_noise=0.2, label_flip=0.2)
    first, again, other = (apply_corruptions(examples, chosen, seed) for seed in (7, 7, 8))
    assert np.array_equal(first.corruption, again.corruption)
    assert np.array_equal(first.rows, again.rows) and np.array_equal(first.labels, again.labels)
    assert not np.array_equal(first.corruption, other.corruption)


def test_already_corrupted_rows_are_not_corrupted_again():
    examples = random_examples(100)
    examples.is_corrupted[:60] = True
    examples.corruption[:60] = "prepared"
    out = apply_corruptions(examples, specs(label_flip=0.4), 0)
    assert np.all(out.corruption[:60] == "prepared") and np.all(out.corruption[60:] == "label_flip")
    with pytest.raises(DataError, match="only 40 clean rows"):
        apply_corruptions(examples, specs(label_flip=0.5), 0)


def test_label_flip_needs_two_classes():
    with pytest.raises(DataError, match=r"needs 2\+ classes"):
        label_flip(np.zeros((3, 2, 2), np.uint8), np.zeros(3, np.int64), 1, np.random.default_rng(0))


def test_kinds_work_on_empty_selection():
    rng = np.random.default_rng(0)
    for kind in (pixel_noise, label_flip):
        images, labels, level = kind(np.zeros((0, 4, 4), np.uint8), np.zeros(0, np.int64), 10, rng)
        assert images.shape == (0, 4, 4) and labels.shape == (0,) and level.dtype == np.float32

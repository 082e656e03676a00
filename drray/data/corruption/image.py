"""Image corruptions: pixel noise and label flips."""
from __future__ import annotations

import numpy as np

from drray.errors import DataError
from drray.registry import CORRUPTIONS


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

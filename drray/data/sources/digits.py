"""The `digits` source: scikit-learn's 1,797 8x8 digits (bundled, offline)."""
from __future__ import annotations

import numpy as np

from drray.config import DataConfig
from drray.data.examples import ExampleSet
from drray.registry import DATA_SOURCES


@DATA_SOURCES.register("digits")
def load_digits_source(cfg: DataConfig):
    """scikit-learn's 1,797 8x8 digits (bundled, offline); values 0..16 scaled to 0..255."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8)
    return ExampleSet.clean(np.arange(len(images)), images, digits.target, 10), None

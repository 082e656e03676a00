"""Every random stream of drray, named in one place, so that no stage shifts another.

Two forms, both pure functions of their inputs:
- `seeded_rng(seed, stream, ...)`: a numpy Generator, for data (splits, corruption, draws);
- `derive_seed(*parts)`: a 63-bit int for torch (model weights, batch order).

Changing `data.max_train`, say, moves no test split; learner i's k-th inner model is the same
wherever it runs (in-process or on any Ray worker).
"""
from __future__ import annotations

import numpy as np

# seeded_rng streams
TEST_SPLIT, HELDOUT_SPLIT, TRAIN_CAP, PROBE_ROWS = 1, 2, 3, 4  # drray.data.splits
# drray.data.splits, data.heldout=same: held-out rows from the corrupted pool; data.heldout_size: of a
# held-out split the data supplies
HELDOUT_SAME_SPLIT, HELDOUT_SUBSET = 5, 6
CORRUPT_SELECT, CORRUPT_APPLY = 101, 102  # drray.data.corruption: which rows, then how (per spec)
FILTER_CDF_SAMPLE = 201  # curation: the scores a sample-mode filter estimates its CDF from
EVAL_RANDOM_SCORES, EVAL_LOSS_MODEL, EVAL_ROWS = 301, 302, 303  # evaluation
EVAL_CLEANLAB_FOLDS = 304  # the cleanlab rival: its folds and their models

# derive_seed parts, after the run seed
FRESH_MODEL_BATCHES = 1  # evaluation: a fresh model's batch order, after its weights' seed
RATER_INIT, RATER_WARM_START = 1_000_003, 1_000_004  # meta-training's initial rater
# An inner model: derive_seed(run seed, model index, incarnation); its held-out batches use that + 1.


def seeded_rng(seed: int, *stream: int) -> np.random.Generator:
    """A generator for (seed, stream...); any int seed, negative included."""
    return np.random.default_rng([seed % 2**64, *stream])


def derive_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from (run seed, model index, incarnation, ...)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> 1)

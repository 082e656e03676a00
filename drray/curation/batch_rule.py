"""The paper's training-time filter, the batch rule: draw N = round_half_up(B / (1 - rho))
examples, score them, keep the top B. Over any stream of batches (`filter_stream_batches`, e.g.
a Ray Data iterator) or as a torch IterableDataset (`BatchFilter`). Given each row's label, the top B
are stratified: each class keeps its share of the pool (`select_top`), so a score that runs higher
for some classes cannot starve the others. `drray.curation.filtering` holds the rules for filtering a
whole scored data set (quantile, sample), `class_quotas`, and the summary.
"""
from __future__ import annotations

import sys
from typing import Any, Callable, Iterable, Iterator, Optional

import numpy as np

from drray.curation.filtering import batch_draw_size, class_quotas, class_rows, round_half_up

# torch is imported only by BatchFilter (see __getattr__ below), so importing this module is cheap.

__all__ = ["BatchFilter", "batch_draw_size", "class_quotas", "filter_stream_batches",  # noqa: F822 (lazy)
           "select_top", "stratified_top_b_indices", "top_b_indices"]


def top_b_indices(scores: np.ndarray, b: int) -> np.ndarray:
    """Indices of the b highest scores, in their original order. Ties go to the earlier row;
    NaN counts as the lowest score."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    b = max(0, min(int(b), len(scores)))
    order = np.argsort(-np.nan_to_num(scores, nan=-np.inf), kind="stable")
    return np.sort(order[:b])


def stratified_top_b_indices(scores: np.ndarray, labels: np.ndarray, b: int,
                             tie_rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """Indices of b rows, in their original order: each class keeps its share of the rows
    (class_quotas, tie_rng), and within a class the highest scores (top_b_indices' ties and NaN
    rule). So a score that is higher for one class than another cannot starve a class."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    _, rows_of = class_rows(labels)
    kept = [rows[top_b_indices(scores[rows], quota)]
            for rows, quota in zip(rows_of, class_quotas([len(r) for r in rows_of], b, tie_rng))]
    return np.sort(np.concatenate(kept)) if kept else np.zeros(0, dtype=np.int64)


def select_top(scores: np.ndarray, b: int, labels: Optional[np.ndarray] = None,
               tie_rng: Optional[np.random.Generator] = None) -> np.ndarray:
    """The top b rows: stratified by class when labels are given (stratified_top_b_indices), else
    the top b whatever their class (top_b_indices)."""
    return top_b_indices(scores, b) if labels is None else stratified_top_b_indices(scores, labels, b, tie_rng)


def _is_tensor(value) -> bool:
    torch = sys.modules.get("torch")  # a tensor exists only if torch was imported
    return torch is not None and isinstance(value, torch.Tensor)


def _num_rows(batch) -> int:
    if isinstance(batch, dict):
        return _num_rows(next(iter(batch.values())))
    if isinstance(batch, (tuple, list)):
        return _num_rows(batch[0])
    return batch.num_rows if hasattr(batch, "num_rows") else len(batch)


def _take(batch, index: np.ndarray):
    """Rows `index` of a batch: a tensor, array, pyarrow Table/RecordBatch, or a dict/tuple of them."""
    if isinstance(batch, dict):
        return {key: _take(value, index) for key, value in batch.items()}
    if isinstance(batch, (tuple, list)):
        return type(batch)(_take(value, index) for value in batch)
    if _is_tensor(batch):
        import torch

        return batch[torch.as_tensor(index, dtype=torch.long, device=batch.device)]
    if hasattr(batch, "take"):  # pyarrow
        import pyarrow as pa

        return batch.take(pa.array(index, type=pa.int64()))
    return np.asarray(batch)[index]


def _concat(parts: list):
    first = parts[0]
    if len(parts) == 1:
        return first
    if isinstance(first, dict):
        return {key: _concat([p[key] for p in parts]) for key in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([p[i] for p in parts]) for i in range(len(first)))
    if _is_tensor(first):
        import torch

        return torch.cat(parts)
    if hasattr(first, "num_rows"):  # pyarrow
        import pyarrow as pa

        tables = [pa.Table.from_batches([p]) if isinstance(p, pa.RecordBatch) else p for p in parts]
        return pa.concat_tables(tables).combine_chunks()
    return np.concatenate(parts)


def _rebatch(batches: Iterable, size: int) -> Iterator:
    """Batches of exactly `size` rows (the last may be shorter) from batches of any size."""
    pending, count = [], 0
    for batch in batches:
        n, start = _num_rows(batch), 0
        while start < n:
            take = min(size - count, n - start)
            part = batch if (start == 0 and take == n) else _take(batch, np.arange(start, start + take))
            pending.append(part)
            count += take
            start += take
            if count == size:
                yield _concat(pending)
                pending, count = [], 0
    if count:
        yield _concat(pending)


def _as_numpy(values) -> np.ndarray:
    """One value per row from numpy, torch or pyarrow, as a flat numpy array."""
    if _is_tensor(values):
        values = values.detach().cpu()
        values = (values.float() if values.is_floating_point() else values).numpy()  # numpy has no bfloat16
    elif hasattr(values, "to_numpy"):  # pyarrow
        values = values.to_numpy(zero_copy_only=False)
    return np.asarray(values).reshape(-1)


def _per_row(fn: Callable[[Any], Any], pool, n: int, what: str) -> np.ndarray:
    values = _as_numpy(fn(pool))
    if len(values) != n:
        raise ValueError(f"{what} gave {len(values)} values for a pool of {n} rows")
    return values


def filter_stream_batches(
    batches: Iterable, score_fn: Callable[[Any], Any], discard: float, batch_size: int, drop_last: bool = False,
    labels_fn: Optional[Callable[[Any], Any]] = None,
) -> Iterator:
    """The paper's batch rule over a stream: regroup `batches` into pools of N =
    batch_draw_size(discard, batch_size) rows, score each pool with `score_fn(pool)` (one score
    per row: numpy, torch or pyarrow), and yield its top B rows (original order kept).

    With `labels_fn(pool)` (one label per row, likewise), the top B are stratified: each class of
    the pool keeps its share of the B (class_quotas), its highest-scored rows (`select_top`).

    Batches may be pyarrow Tables/RecordBatches, numpy arrays, torch tensors, or dicts/tuples of
    them, of any size: e.g. `ray.data.Dataset.iter_batches(batch_size=N, batch_format="pyarrow")`.
    A last, short pool of n < N rows yields its top round_half_up(n * B / N), or nothing with
    drop_last."""
    draw = batch_draw_size(discard, batch_size)
    for pool in _rebatch(batches, draw):
        n = _num_rows(pool)
        keep = batch_size if n == draw else (0 if drop_last else round_half_up(n * batch_size / draw))
        if keep == 0:
            continue
        scores = _per_row(score_fn, pool, n, "score_fn").astype(np.float64)
        labels = None if labels_fn is None else _per_row(labels_fn, pool, n, "labels_fn")
        yield _take(pool, select_top(scores, keep, labels))


def _define_batch_filter():
    import torch

    class BatchFilter(torch.utils.data.IterableDataset):
        """Training-time filtering as a torch IterableDataset: draws N = B / (1 - discard) examples
        from `source`, scores them with `score_fn`, and yields the top B as one batch.

        source: an iterable of batches (`batched=True`: tensors, arrays, dicts/tuples of them, or
        pyarrow), or of single examples (`batched=False`: each collated with `collate_fn`, torch's
        default_collate unless given). Use it with `DataLoader(BatchFilter(...), batch_size=None)`.
        With DataLoader workers, give each worker its own shard of `source`. `labels_fn(pool)` (one
        label per row) stratifies the top B by class, as in `filter_stream_batches`."""

        def __init__(self, source: Iterable, score_fn: Callable[[Any], Any], discard: float, batch_size: int,
                     batched: bool = True, collate_fn: Optional[Callable] = None, drop_last: bool = False,
                     labels_fn: Optional[Callable[[Any], Any]] = None):
            super().__init__()
            self.source, self.score_fn, self.discard, self.batch_size = source, score_fn, discard, int(batch_size)
            self.batched, self.drop_last, self.labels_fn = batched, drop_last, labels_fn
            self.collate_fn = collate_fn or torch.utils.data.default_collate
            self.draw_size = batch_draw_size(discard, batch_size)

        def _batches(self) -> Iterator:
            if self.batched:
                yield from self.source
                return
            pending = []
            for example in self.source:
                pending.append(example)
                if len(pending) == self.draw_size:
                    yield self.collate_fn(pending)
                    pending = []
            if pending:
                yield self.collate_fn(pending)

        def __iter__(self) -> Iterator:
            with torch.no_grad():
                yield from filter_stream_batches(self._batches(), self.score_fn, self.discard, self.batch_size,
                                                 self.drop_last, self.labels_fn)

    BatchFilter.__module__, BatchFilter.__qualname__ = __name__, "BatchFilter"
    return BatchFilter


def __getattr__(name: str):
    if name == "BatchFilter":  # defined on first use, so that importing this module skips torch
        globals()["BatchFilter"] = _define_batch_filter()
        return globals()["BatchFilter"]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")



"""The paper's batch rule for training-time filtering (drray.curation.batch_rule): draw N = B / (1 - discard),
keep the top B, over torch datasets and arrow/numpy batch streams, against a plain reference; and its
stratified form (each class keeps its share: class_quotas, stratified_top_b_indices), hand-worked."""
import numpy as np
import pyarrow as pa
import pytest
import torch

from drray.curation.batch_rule import (BatchFilter, class_quotas, filter_stream_batches, select_top,
                                       stratified_top_b_indices, top_b_indices)
from drray.curation.filtering import batch_draw_size, round_half_up


def test_top_b_indices_ties_nan_and_order():
    assert top_b_indices(np.array([0.1, 0.9, 0.5, 0.9]), 2).tolist() == [1, 3]
    assert top_b_indices(np.array([1.0, 1.0, 1.0]), 2).tolist() == [0, 1]  # ties: earlier rows
    assert top_b_indices(np.array([np.nan, 0.0, -1.0]), 2).tolist() == [1, 2]  # NaN is the lowest
    assert top_b_indices(np.array([3.0, 2.0]), 5).tolist() == [0, 1]


def _reference_top_b(scores, discard, batch_size):
    """Kept row indices of the batch rule over a stream, written out plainly."""
    draw, kept = batch_draw_size(discard, batch_size), []
    for start in range(0, len(scores), draw):
        pool = scores[start : start + draw]
        b = batch_size if len(pool) == draw else round_half_up(len(pool) * batch_size / draw)
        kept += sorted(start + i for i in sorted(range(len(pool)), key=lambda i: (-pool[i], i))[:b])
    return kept


def test_batch_filter_keeps_the_top_b_of_every_n():
    rng = np.random.default_rng(2)
    n, discard, batch_size = 203, 0.5, 4  # N = 8; the last pool has 3 rows and keeps round(1.5) = 2
    features = torch.arange(n, dtype=torch.float32).unsqueeze(1)  # the row number, to check which rows came
    labels = torch.from_numpy(rng.integers(0, 10, n))
    true_scores = torch.from_numpy(rng.normal(size=n).astype(np.float32))
    score_of = dict(zip(range(n), true_scores.tolist()))

    def score_fn(batch):
        rows, _ = batch
        return torch.tensor([score_of[int(r)] for r in rows[:, 0]])

    sizes = [5, 7, 1, 30, 160]  # source batches of uneven sizes, regrouped into pools of 8
    starts = np.cumsum([0] + sizes)
    source = [(features[a:b], labels[a:b]) for a, b in zip(starts[:-1], starts[1:])]
    out = list(BatchFilter(source, score_fn, discard, batch_size))
    assert [len(rows) for rows, _ in out] == [4] * 25 + [2]
    got = torch.cat([rows for rows, _ in out])[:, 0].long().tolist()
    assert got == _reference_top_b(true_scores.numpy(), discard, batch_size)
    assert torch.equal(torch.cat([y for _, y in out]), labels[got])
    dropped = list(BatchFilter(source, score_fn, discard, batch_size, drop_last=True))
    assert len(dropped) == 25

    examples = [(features[i], labels[i]) for i in range(16)]  # single examples, collated
    loader = torch.utils.data.DataLoader(BatchFilter(examples, score_fn, discard, batch_size, batched=False),
                                         batch_size=None)
    rows = torch.cat([x for x, _ in loader])[:, 0].long().tolist()
    assert rows == _reference_top_b(true_scores.numpy()[:16], discard, batch_size)


def test_filter_stream_batches_over_arrow_batches():
    rng = np.random.default_rng(3)
    n = 100
    table = pa.table({"id": np.arange(n), "score": rng.normal(size=n)})
    batches = table.to_batches(max_chunksize=9)  # as Ray Data's iter_batches(batch_format="pyarrow") would
    out = list(filter_stream_batches(batches, lambda t: t.column("score"), 0.25, 6))  # N = 8
    ids = np.concatenate([t.column("id").to_numpy() for t in out])
    assert ids.tolist() == _reference_top_b(table.column("score").to_numpy(), 0.25, 6)
    as_numpy = [{"score": table.column("score").to_numpy()}]
    numpy_out = list(filter_stream_batches(as_numpy, lambda b: b["score"], 0.25, 6))
    assert sum(len(b["score"]) for b in numpy_out) == len(ids)


# --------------------------------------------------------------------------------------------- stratified


def test_class_quotas_hand_worked():
    # exact shares 2.5, 1.5, 1.0: floors 2, 1, 1 and the one left over to the lower of the tied .5 remainders
    assert class_quotas(np.array([5, 3, 2]), 5).tolist() == [3, 1, 1]
    # shares .5, .5, .5, 3.5: floors 0, 0, 0, 3; the two left over to the two lowest classes
    assert class_quotas(np.array([1, 1, 1, 7]), 5).tolist() == [1, 1, 0, 3]
    assert class_quotas(np.array([6, 4]), 5).tolist() == [3, 2]
    assert class_quotas(np.array([2, 3]), 9).tolist() == [2, 3]  # b above the rows: every row
    assert class_quotas(np.array([4, 0, 2]), 3).tolist() == [2, 0, 1]
    assert class_quotas(np.array([3, 3]), 0).tolist() == [0, 0]


def test_class_quotas_sum_to_b_and_never_exceed_counts():
    rng = np.random.default_rng(5)
    for _ in range(300):
        counts = rng.integers(0, 50, size=rng.integers(1, 12))
        b = int(rng.integers(0, counts.sum() + 5))
        quotas = class_quotas(counts, b)
        assert quotas.sum() == min(b, counts.sum())
        assert np.all(quotas <= counts) and np.all(quotas >= 0)
        if counts.sum():
            assert np.all(np.abs(quotas - counts * min(b, counts.sum()) / counts.sum()) < 1)  # within one of its share


def test_stratified_top_b_indices_hand_worked():
    scores = np.array([0.9, 0.1, 0.8, 0.2, 0.7, 0.3])
    labels = np.array([0, 1, 0, 1, 0, 1])
    assert top_b_indices(scores, 2).tolist() == [0, 2]  # class 1 starved
    assert stratified_top_b_indices(scores, labels, 2).tolist() == [0, 5]  # one of each: the best of each
    assert stratified_top_b_indices(scores, labels, 4).tolist() == [0, 2, 3, 5]
    # classes of 2 and 1 keep 1 and 1 of b = 2 (shares 4/3, 2/3); NaN is the lowest, so row 1 beats row 0
    assert stratified_top_b_indices(np.array([np.nan, 0.5, 0.1]), np.array([0, 0, 1]), 2).tolist() == [1, 2]
    assert stratified_top_b_indices(np.array([1.0, 1.0, 1.0, 0.0]), np.array([7, 7, 7, 3]), 2).tolist() == [0, 3]
    assert select_top(scores, 2).tolist() == [0, 2] and select_top(scores, 2, labels).tolist() == [0, 5]


def _reference_stratified(scores, labels, discard, batch_size):
    """Kept row indices of the stratified batch rule, pools of N whose classes each hold half of it."""
    draw, kept = batch_draw_size(discard, batch_size), []
    for start in range(0, len(scores), draw):
        for label in (0, 1):  # each pool is half and half, so each class keeps B / 2
            rows = [start + i for i in range(draw) if labels[start + i] == label]
            kept += sorted(rows, key=lambda r: (-scores[r], r))[: batch_size // 2]
    return sorted(kept)


def test_batch_filter_with_labels_keeps_each_class_share():
    rng = np.random.default_rng(6)
    n, discard, batch_size = 160, 0.5, 4  # N = 8: 20 pools of four rows of each class
    labels = torch.arange(n) % 2
    scores = torch.from_numpy(rng.normal(size=n).astype(np.float32)) + 10.0 * (labels == 0)  # class 0 scores higher
    features = torch.arange(n, dtype=torch.float32).unsqueeze(1)
    source = [(features[a : a + 16], labels[a : a + 16]) for a in range(0, n, 16)]

    def score_fn(batch):
        return scores[batch[0][:, 0].long()]

    plain = torch.cat([y for _, y in BatchFilter(source, score_fn, discard, batch_size)])
    assert plain.sum() == 0  # without labels the top 4 of every pool are all class 0
    out = list(BatchFilter(source, score_fn, discard, batch_size, labels_fn=lambda batch: batch[1]))
    assert [len(y) for _, y in out] == [4] * 20 and all(int(y.sum()) == 2 for _, y in out)  # 2 of each class
    rows = torch.cat([x for x, _ in out])[:, 0].long().tolist()
    assert rows == _reference_stratified(scores.numpy(), labels.numpy(), discard, batch_size)

    table = pa.table({"row": np.arange(n), "label": labels.numpy(), "score": scores.numpy()})
    stream = filter_stream_batches(table.to_batches(max_chunksize=5), lambda t: t.column("score"), discard,
                                   batch_size, labels_fn=lambda t: t.column("label"))
    assert np.concatenate([t.column("row").to_numpy() for t in stream]).tolist() == rows
    with pytest.raises(ValueError, match="labels_fn gave 1 values"):
        list(filter_stream_batches([table], lambda t: t.column("score"), discard, batch_size,
                                   labels_fn=lambda t: [0]))


def test_class_quotas_random_ties_favour_no_class():
    """Ten classes of 3 rows, keep 15: every class's exact share is 1.5, so five get 2. Ties to the
    lower class give classes 0-4 two each every time; with tie_rng each class gets the extra row
    about half the time."""
    counts = np.full(10, 3)
    assert class_quotas(counts, 15).tolist() == [2] * 5 + [1] * 5
    rng = np.random.default_rng(0)
    extras = np.zeros(10)
    for _ in range(2000):
        quotas = class_quotas(counts, 15, rng)
        assert quotas.sum() == 15 and set(quotas.tolist()) <= {1, 2}
        extras += quotas - 1
    assert np.all(np.abs(extras / 2000 - 0.5) < 4 * np.sqrt(0.25 / 2000))

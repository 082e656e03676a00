"""The paper's batch rule for training-time filtering (drray.curation.batch_rule): draw N = B / (1 - discard),
keep the top B, over torch datasets and arrow/numpy batch streams, against a plain reference."""
import numpy as np
import pyarrow as pa
import torch

from drray.curation.batch_rule import BatchFilter, filter_stream_batches, top_b_indices
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

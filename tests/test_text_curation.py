"""Text through the curation jobs with no code change: score (Ray Data), filter and evaluate on
token sequences, with the text-specific pieces (a `text` column, LM test loss as the metric)
checked against independent computations."""
import dataclasses
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from drray.config import load_config
from drray.curation.scoring import check_schema, score_table
from drray.data.examples import to_tensors
from drray.data.modality import TextModality
from drray.data.parquet import write_text_parquet
from drray.data.splits import build_splits
from drray.data.tokenizer import PAD
from drray.errors import DataError
from drray.evaluation import experiment as ev
from drray.evaluation.fresh import Budget
from drray.evaluation.rivals import oracle_scores
from drray.train.checkpoint import load_rater
from drray.train.loop import meta_train
from jobs.evaluate import main as evaluate_main
from jobs.filter import main as filter_main
from jobs.prepare import main as prepare_main
from jobs.score import main as score_main

ROOT = Path(__file__).resolve().parents[1]
TEXT_DIR = ROOT.parent / "shared" / "data" / "text"
TINY = ROOT / "configs" / "text-tiny.yaml"


def tiny_config(*overrides: str):
    return load_config(TINY, [f"data.dir={TEXT_DIR}", *overrides])


@pytest.fixture(scope="module")
def text_rater(tmp_path_factory):
    """A tiny text rater (seconds): the run directory and the data it was trained on."""
    out = tmp_path_factory.mktemp("text-rater")
    cfg = tiny_config(f"run.out={out}", "run.backend=local")
    splits = build_splits(cfg.data, cfg.run.seed)
    meta_train(cfg, splits=splits)
    return out, splits


def run(main, capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    assert code == 0, err
    return out


def test_text_accuracies_by_hand():
    """Next-byte accuracy of a sequence: hits among its real targets (PAD targets do not count)."""
    x = torch.tensor([[1, 2, 3, PAD], [5, 6, PAD, PAD]])
    logits = torch.zeros(2, 4, 257)
    logits[0, 0, 2] = logits[0, 1, 0] = 1.0  # row 0 predicts 2 (right), then 0 (wrong; target 3)
    logits[1, 0, 6] = 1.0  # row 1 predicts 6 (right); its only target
    logits[:, 2:, 9] = 1.0  # predictions at positions whose targets are PAD: ignored
    assert TextModality.accuracies(logits, x, None).tolist() == [0.5, 1.0]


def test_score_table_on_text_is_the_raters_score_and_refuses_bad_rows(text_rater, tmp_path):
    run_dir, splits = text_rater
    rater, info = load_rater(run_dir)
    write_text_parquet(splits.train, tmp_path / "train.parquet")
    table = pq.read_table(tmp_path / "train.parquet")
    check_schema(table.schema, info, "train.parquet")
    scored = score_table(rater, table, info["row_shape"], info["num_classes"], chunk_rows=100)
    x, y = to_tensors(splits.train)
    with torch.no_grad():
        want = rater(x, y).numpy()
    assert scored.column_names == table.column_names + ["score"]
    assert np.allclose(scored.column("score").to_numpy(), want, atol=1e-5)
    # a null text: a one-line error naming the row, or the row dropped
    broken = table.set_column(table.column_names.index("text"), "text",
                              pa.array([None] + table.column("text").to_pylist()[1:], pa.string()))
    first_id = table.column("id")[0].as_py()
    with pytest.raises(DataError, match=f"row id {first_id}: text is null or empty"):
        score_table(rater, broken, info["row_shape"], info["num_classes"])
    dropped = score_table(rater, broken, info["row_shape"], info["num_classes"], on_bad_row="drop")
    assert dropped.num_rows == table.num_rows - 1
    assert np.allclose(dropped.column("score").to_numpy(), want[1:], atol=1e-5)
    with pytest.raises(DataError, match="missing column text; the rater .* takes 32-token sequences"):
        check_schema(table.drop(["text"]).schema, info, "x.parquet")
    with pytest.raises(DataError, match="column text is binary, not string"):
        check_schema(table.set_column(1, "text", table.column("text").cast(pa.binary())).schema, info, "x.parquet")


def test_score_job_refuses_a_set_without_text_in_one_line(text_rater, tmp_path, capsys):
    run_dir, splits = text_rater
    write_text_parquet(splits.train, tmp_path / "train.parquet")
    pq.write_table(pq.read_table(tmp_path / "train.parquet").drop(["text"]), tmp_path / "no-text.parquet")
    code = score_main([str(a) for a in ("--rater", run_dir, "--input", tmp_path / "no-text.parquet",
                                        "--output", tmp_path / "scored")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "missing column text" in err[0], err
    assert not (tmp_path / "scored").exists()


def test_text_prepare_score_filter_round_trip(text_rater, ray_cluster, tmp_path, capsys):
    """The same jobs as for images: the scores written by the Ray pipeline are the rater's scores
    of the same sequences, and the filter's summary is computed from them."""
    run_dir, splits = text_rater
    run(prepare_main, capsys, "--source", "text", "--dir", TEXT_DIR, "--pattern", "austen-persuasion.txt.gz",
        "--seq-len", 32, "--max-train", 600, "--corrupt", "random_bytes:0.15,shuffled_words:0.15", "--shards", 2,
        "--output", tmp_path / "data")
    run(score_main, capsys, "--rater", run_dir, "--input", tmp_path / "data" / "train", "--output",
        tmp_path / "scored", "--address", ray_cluster)
    scored = pq.read_table(tmp_path / "scored").to_pandas().set_index("id").sort_index()
    rater, _ = load_rater(run_dir)
    x, y = to_tensors(splits.train)  # the same rows as the prepared train split (same seed and corruption)
    with torch.no_grad():
        want = dict(zip(splits.train.ids.tolist(), rater(x, y).numpy()))
    assert len(scored) == 600 and np.allclose(scored["score"].to_numpy(), [want[i] for i in scored.index], atol=1e-5)
    out = run(filter_main, capsys, "--input", tmp_path / "scored", "--discard", 0.3, "--output", tmp_path / "kept",
              "--address", ray_cluster)
    summary = json.loads((tmp_path / "kept" / "summary.json").read_text())
    assert summary["rows_in"] == 600 and summary["rows_kept"] == 420 and "kept 420 of 600" in out
    kept = np.concatenate([pq.read_table(f).column("score").to_numpy() for f in (tmp_path / "kept").glob("*.parquet")])
    assert kept.min() >= np.sort(scored["score"].to_numpy())[180] - 1e-6  # the lowest 30% went


def test_an_oracle_selection_lowers_a_language_models_test_loss():
    """The evaluation's selection path on text: with a score that knows the corrupted (random
    bytes) rows, an LM trained on what it keeps has a lower test loss than on everything, and a
    random score does not (measured: 3.26 vs 3.67 vs 3.71 nats/byte)."""
    cfg = tiny_config("data.corruption=[{kind: random_bytes, fraction: 0.6}]")
    splits = build_splits(cfg.data, 0)
    budget = dataclasses.replace(Budget.from_config(cfg), steps=60, batch_size=16)
    data = ev.shared_arrays(splits, {"oracle": oracle_scores(splits.train.is_corrupted)})
    loss = {m: np.mean([ev.run_one(ev.RunSpec(m, 0.0 if m == "baseline" else 0.6, s), data, budget)["test_loss"]
                        for s in range(2)]) for m in ("baseline", "oracle", "random")}
    assert loss["oracle"] < loss["baseline"] - 0.1, loss
    assert loss["oracle"] < loss["random"] - 0.1, loss


def test_evaluate_job_on_text_judges_language_models_by_test_loss(text_rater, ray_cluster, tmp_path, capsys):
    run_dir, _ = text_rater
    out = run(evaluate_main, capsys, "--config", TINY, "--set", f"data.dir={TEXT_DIR}", "--rater", run_dir,
              "--discard", 0.3, "--seeds", 2, "--steps", 5, "--methods", "baseline,datarater,random,loss,oracle",
              "--set", "evaluate.max_eval_rows=500", "--out", tmp_path / "eval", "--address", ray_cluster)
    assert "10/10 done" in out and "test loss mean" in out
    payload = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert payload["meta"]["metric"] == "test_loss" and payload["meta"]["arch"] == "transformer_tiny"
    rows = {r["method"]: r for r in payload["rows"]}
    assert [(r["method"], r["discard"]) for r in payload["rows"]] == [
        ("baseline", 0.0), ("datarater", 0.3), ("random", 0.3), ("loss", 0.3), ("oracle", 0.3)]
    for row in payload["rows"]:
        assert 3.0 < row["test_loss_mean"] < 6.0 and 0.0 <= row["acc_mean"] <= 1.0  # nats/byte; ln 257 = 5.55
    assert rows["oracle"]["auroc"] == 1.0 and rows["oracle"]["corrupted_removed_fraction"] == 1.0  # 30% corrupted
    assert {v["metric"] for v in payload["verdicts"]} == {"test_loss"}
    for name in ("results.md", "test_loss.png", "scores.png"):
        assert (tmp_path / "eval" / name).stat().st_size > 0


# ---- streaming a text Parquet training set (data.stream) ---------------------------------------

def prepared_text(directory):
    """A prepared text data set (jobs.prepare), the same rows as text-tiny's source with its corruption."""
    code = prepare_main([str(a) for a in (
        "--source", "text", "--dir", TEXT_DIR, "--pattern", "austen-persuasion.txt.gz", "--seq-len", 32,
        "--max-train", 300, "--corrupt", "random_bytes:0.15,shuffled_words:0.15", "--shards", 3,
        "--output", directory)])
    assert code == 0


def text_stream_config(directory, out, stream: bool = True):
    return tiny_config("data.source=parquet", f"data.dir={directory}", f"data.stream={str(stream).lower()}",
                       "data.corruption=[]",
                       "data.probe_size=60", f"run.out={out}", "run.backend=local")


def test_a_streamed_text_set_serves_the_same_token_rows_and_meta_trains(tmp_path):
    from drray.data.streams import BatchStream, local_parquet_epochs

    prepared_text(tmp_path / "data")
    whole = build_splits(text_stream_config(tmp_path / "data", tmp_path / "r0", stream=False).data, 0)
    cfg = text_stream_config(tmp_path / "data", tmp_path / "run")
    streamed = build_splits(cfg.data, 0)
    assert streamed.train is None and streamed.row_shape == (32,) and len(streamed.probe) == 60
    assert np.array_equal(streamed.heldout.rows, whole.heldout.rows)
    assert np.array_equal(streamed.probe.rows, whole.train.rows[:60])
    assert np.array_equal(streamed.probe.is_corrupted, whole.train.is_corrupted[:60])
    stream = BatchStream(local_parquet_epochs(streamed.train_path, 50, (32,)), (32,), 1, "cpu", "train")
    n = len(whole.train)
    tokens = torch.cat([stream.sample(30)[0] for _ in range(n // 30)])  # one epoch, in file order
    assert tokens.dtype == torch.int64
    assert torch.equal(tokens, torch.from_numpy(whole.train.rows[:len(tokens)]).long())
    assert stream.max_buffered < 30 + 50
    summary = meta_train(cfg, splits=streamed)
    assert np.isfinite(summary.auroc) and set(summary.auroc_by_kind) == {"random_bytes", "shuffled_words"}


def test_a_streamed_text_set_reaches_ray_workers(ray_cluster, tmp_path):
    import ray

    from actors.population import RayPopulation

    prepared_text(tmp_path / "data")
    cfg = text_stream_config(tmp_path / "data", tmp_path / "run")
    population = RayPopulation(cfg, build_splits(cfg.data, cfg.run.seed))
    stats = [population.step() for _ in range(2)]
    assert all(np.isfinite(s.outer_loss) for s in stats)
    held = ray.get([w.max_rows_buffered.remote() for w in population.worker_handles()])
    assert all(0 < rows < 2 * cfg.inner.batch_size for rows in held)  # a batch or two, never the whole set

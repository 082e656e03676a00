"""Scoring a Parquet data set with a trained rater: `score_table` and its checks in-process, and
`jobs.score` (Ray Data, a pool of rater actors) on a local Ray."""
import copy
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import torch

from drray.config import load_config
from drray.curation.scoring import SCORE, check_schema, for_scoring, score_table
from drray.data.examples import to_tensors
from drray.data.parquet import write_parquet
from drray.data.splits import build_splits
from drray.errors import ConfigError, DataError
from drray.models import build_rater
from drray.models.layers import MaxPool2x2
from drray.train.checkpoint import load_rater, save_checkpoint
from drray.train.loop import meta_train
from jobs.score import main as score_main

ROOT = Path(__file__).resolve().parents[1]




@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(run dir of a 5-step digits rater, its training split written as Parquet, the split)."""
    root = tmp_path_factory.mktemp("score")
    cfg = load_config(None, ["data.source=digits", "data.max_train=300", "data.probe_size=100", "population.size=2",
                             "meta.steps=5", "inner.batch_size=32", "meta.outer_batch_size=32",
                             f"run.out={root / 'run'}", "run.backend=local",
                             "data.corruption=[{kind: label_flip, fraction: 0.3}]"])
    meta_train(cfg)
    splits = build_splits(cfg.data, cfg.run.seed)
    data = root / "train.parquet"
    write_parquet(splits.train, data)
    return root / "run", data, splits.train


def expected_scores(run_dir, examples) -> np.ndarray:
    rater, _ = load_rater(run_dir)
    with torch.no_grad():
        return rater(*to_tensors(examples)).numpy()


def read(path) -> pa.Table:
    return pads.dataset(str(path), format="parquet").to_table()


def one_line_error(capsys, after_ray: bool = False) -> str:
    """The job's error line; after Ray ran, Ray Data's progress lines may precede it, no traceback."""
    lines = capsys.readouterr().err.strip().splitlines()
    if after_ray:
        lines = _without_logging_errors(lines)
        # The actor's traceback and Ray Data's retry advice are not repeated to the user.
        assert not any("scoring.py" in line or "Failed to apply UDF" in line for line in lines), lines
        lines = lines[-1:]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def _without_logging_errors(lines: list[str]) -> list[str]:
    """Under pytest, Ray's log handlers can outlive an earlier test's captured stderr; each record
    then prints a '--- Logging error ---' block (with whatever exception is being handled). Not
    seen when the job runs as a command."""
    kept, skipping = [], False
    for line in lines:
        if line == "--- Logging error ---":
            skipping = True
        elif skipping and line.startswith("Arguments:"):
            skipping = False
        elif not skipping:
            kept.append(line)
    return kept


def with_column(table: pa.Table, name: str, values) -> pa.Table:
    return table.set_column(table.column_names.index(name), name, values)


# ---------------------------------------------------------------- in-process: the maths and the checks

def test_score_table_keeps_columns_and_matches_the_rater(trained):
    run_dir, data, examples = trained
    rater, info = load_rater(run_dir)
    table = read(data)
    scored = score_table(rater, table, tuple(info["row_shape"]), info["num_classes"], chunk_rows=64)
    assert scored.column_names == table.column_names + [SCORE] and scored.schema.field(SCORE).type == pa.float32()
    assert scored.drop_columns([SCORE]).equals(table)
    np.testing.assert_allclose(scored.column(SCORE).to_numpy(), expected_scores(run_dir, examples),
                               rtol=1e-6, atol=1e-6)
    rescored = score_table(rater, scored, tuple(info["row_shape"]), info["num_classes"])  # replaces, not duplicates
    assert rescored.column_names == scored.column_names


def test_rater_prepared_for_scoring_scores_the_same():
    """for_scoring (what the job's actors run): a conv rater's weights and pool outputs
    channels-last on CPU, the same scores up to rounding."""
    torch.manual_seed(0)
    rater = build_rater("cnn", (28, 28), 10).eval()
    prepared = for_scoring(copy.deepcopy(rater), torch.device("cpu"))
    convs = [m for m in prepared.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(m.weight.is_contiguous(memory_format=torch.channels_last) for m in convs)
    pools = [m for m in prepared.modules() if isinstance(m, MaxPool2x2)]
    assert pools and all(m.output_layout is None for m in pools)  # channels-last outputs kept
    assert all(m.output_layout == torch.contiguous_format for m in rater.modules() if isinstance(m, MaxPool2x2))
    x, y = torch.rand(300, 1, 28, 28), torch.randint(10, (300,))
    with torch.no_grad():
        assert torch.allclose(prepared(x, y), rater(x, y), rtol=1e-5, atol=1e-6)


def test_bad_rows_are_found_named_and_dropped(trained):
    run_dir, data, _ = trained
    rater, info = load_rater(run_dir)
    shape, classes = tuple(info["row_shape"]), info["num_classes"]
    table = read(data).slice(0, 6)
    ids = table.column("id").to_pylist()
    images = table.column("image").to_pylist()
    images[1] = None
    labels = table.column("label").to_pylist()
    labels[3] = classes + 5
    bad = with_column(with_column(table, "image", pa.array(images, table.schema.field("image").type)),
                      "label", pa.array(labels, pa.int64()))
    with pytest.raises(DataError, match=f"row id {ids[1]}: image is null") as info_:
        score_table(rater, bad, shape, classes)
    assert "\n" not in str(info_.value) and "2 bad rows" in str(info_.value)
    kept = score_table(rater, bad, shape, classes, on_bad_row="drop")
    assert kept.column("id").to_pylist() == [ids[i] for i in (0, 2, 4, 5)]
    # Float pixels (allowed when whole numbers 0..255): NaN makes a row bad; so do a wrong size and shape.
    pixels = np.array(table.column("image").to_pylist(), dtype=np.float32)
    pixels[2, 5] = np.nan
    floats = with_column(table, "image", pa.array(list(pixels), pa.list_(pa.float32())))
    with pytest.raises(DataError, match=f"row id {ids[2]}: pixel values"):
        score_table(rater, floats, shape, classes)
    dropped = score_table(rater, floats, shape, classes, on_bad_row="drop")
    clean = score_table(rater, table, shape, classes)
    assert dropped.num_rows == 5
    np.testing.assert_allclose(dropped.column(SCORE), clean.column(SCORE).take([0, 1, 3, 4, 5]), rtol=1e-6, atol=1e-6)
    rows = table.column("image").to_pylist()
    ragged = with_column(table, "image", pa.array([row[:10] if i == 4 else row for i, row in enumerate(rows)],
                                                  pa.list_(pa.uint8())))
    with pytest.raises(DataError, match=f"row id {ids[4]}: image does not have 8x8=64 values"):
        score_table(rater, ragged, shape, classes)
    holes = [row[:3] + [None] + row[4:] if i == 3 else row for i, row in enumerate(rows)]
    with pytest.raises(DataError, match=f"row id {ids[3]}: pixel values"):
        score_table(rater, with_column(table, "image", pa.array(holes, pa.list_(pa.uint8()))), shape, classes)
    shapes = pa.array([[8, 8]] * 5 + [[4, 16]], pa.list_(pa.int32()))
    with pytest.raises(DataError, match=rf"row id {ids[5]}: shape is not \[8, 8\]"):
        score_table(rater, with_column(table, "shape", shapes), shape, classes)


def test_schema_checks(trained):
    run_dir, data, _ = trained
    _, info = load_rater(run_dir)
    table = read(data)
    check_schema(table.schema, info, "in", table.slice(0, 1))
    cases = [
        (table.drop_columns(["label"]), "missing column label"),
        (with_column(table, "label", table.column("label").cast(pa.float64())), "column label is double"),
        (with_column(table, "image", pa.array(["x"] * table.num_rows)), "column image is string"),
        (with_column(table, "shape", pa.array([[28, 28]] * table.num_rows, pa.list_(pa.int32()))), "images are 28x28"),
    ]
    for bad, expected in cases:
        with pytest.raises(DataError, match=expected) as caught:
            check_schema(bad.schema, info, "in", bad.slice(0, 1))
        assert "\n" not in str(caught.value)
    with pytest.raises(DataError, match="images have 64 pixels but the rater .* takes 28x28"):
        check_schema(table.schema, {**info, "row_shape": [28, 28]}, "in")


# ---------------------------------------------------------------- the job on Ray

@pytest.fixture(scope="module")
def with_bad_labels(trained, tmp_path_factory):
    """The training split with labels out of the rater's range at two rows: (path, table, bad rows)."""
    _, data, _ = trained
    table = read(data)
    labels = table.column("label").to_numpy().copy()
    bad = [7, 100]
    labels[bad] = 42
    path = tmp_path_factory.mktemp("bad") / "bad.parquet"
    pq.write_table(with_column(table, "label", pa.array(labels)), path)
    return path, table, bad


def test_score_job_keeps_every_column_and_drops_bad_rows(ray_cluster, trained, with_bad_labels, tmp_path, capsys):
    """One Ray pipeline (two actors, small batches, an old output replaced): the scored rows are
    the input's rows, less the bad ones, with the rater's exact scores."""
    run_dir, _, examples = trained
    bad_path, table, bad = with_bad_labels
    out = tmp_path / "scored"
    out.mkdir()
    (out / "old.parquet").write_bytes(b"")
    assert score_main(["--rater", str(run_dir), "--input", str(bad_path), "--output", str(out), "--batch-size", "64",
                       "--actors", "2", "--on-bad-row", "drop", "--overwrite"]) == 0
    final = capsys.readouterr().out.strip().splitlines()[-1]
    kept = len(examples) - len(bad)
    assert final.startswith(f"scored {kept} rows in ") and "rows/s" in final and final.endswith(str(out))
    assert "dropped 2 bad rows" in final
    assert not (out / "old.parquet").exists()
    scored = read(out)
    assert scored.column_names == table.column_names + [SCORE] and scored.schema.field(SCORE).type == pa.float32()
    good = np.setdiff1d(np.arange(len(examples)), bad)
    want = read(bad_path).take(good).sort_by("id")
    scored = scored.sort_by("id")
    assert scored.num_rows == kept and scored.drop_columns([SCORE]).equals(want)
    clean = examples.subset(good)
    order = np.argsort(clean.ids)
    np.testing.assert_allclose(scored.column(SCORE).to_numpy(), expected_scores(run_dir, clean)[order],
                               rtol=1e-6, atol=1e-6)
    # An existing output is refused, and left as it was, unless --overwrite.
    before = sorted(p.name for p in out.iterdir())
    assert score_main(["--rater", str(run_dir), "--input", str(bad_path), "--output", str(out)]) == 2
    assert "already exists; pass --overwrite" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == before


def test_bad_rows_fail_the_job_by_default(ray_cluster, trained, with_bad_labels, tmp_path, capsys):
    run_dir, _, _ = trained
    bad_path, table, bad = with_bad_labels
    out = tmp_path / "out"
    assert score_main(["--rater", str(run_dir), "--input", str(bad_path), "--output", str(out)]) == 2
    error = one_line_error(capsys, after_ray=True)
    assert f"row id {table.column('id')[bad[0]].as_py()}: label outside" in error and "--on-bad-row drop" in error
    assert not out.exists()  # nothing half-written is left
    out.mkdir()  # and an earlier output that --overwrite would replace stays as it was
    (out / "part-0.parquet").write_text("earlier scores")
    assert score_main(["--rater", str(run_dir), "--input", str(bad_path), "--output", str(out), "--overwrite"]) == 2
    assert "label outside" in one_line_error(capsys, after_ray=True)
    assert [p.name for p in out.iterdir()] == ["part-0.parquet"] and not list(tmp_path.glob(".out.*"))
    # Nor may --output replace the rater it scores with.
    assert score_main(["--rater", str(run_dir), "--input", str(bad_path), "--output", str(run_dir), "--overwrite"]) == 2
    assert one_line_error(capsys).endswith("overlaps --rater " + str(run_dir) + "; write somewhere else")


def test_mismatched_input_is_refused_before_anything_is_written(trained, tmp_path, capsys):
    run_dir, data, _ = trained
    torch.manual_seed(0)
    mnist_run = tmp_path / "mnist-rater"
    save_checkpoint(mnist_run, {"step": 0}, {"rater": build_rater("cnn", (28, 28), 10).state_dict(), "arch": "cnn",
                                             "row_shape": [28, 28], "num_classes": 10}, {})
    out = tmp_path / "out"
    assert score_main(["--rater", str(mnist_run), "--input", str(data), "--output", str(out)]) == 2
    assert "images have 64 pixels but the rater (cnn, step 0) takes 28x28" in one_line_error(capsys)
    no_label = tmp_path / "no-label.parquet"
    pq.write_table(read(data).drop_columns(["label"]), no_label)
    assert score_main(["--rater", str(run_dir), "--input", str(no_label), "--output", str(out)]) == 2
    assert "missing column label" in one_line_error(capsys)
    assert score_main(["--rater", str(run_dir), "--input", str(tmp_path / "nope"), "--output", str(out)]) == 2
    assert "no such file or folder" in one_line_error(capsys)
    assert score_main(["--rater", str(run_dir), "--input", str(data), "--output", str(out), "--threads", "0"]) == 2
    assert one_line_error(capsys) == "error: --threads 0: need at least 1"
    assert not out.exists()
    # A checkpoint that does not fit this version's raters names the checkpoint and the problem.
    save_checkpoint(tmp_path / "odd", {"step": 3}, {"rater": build_rater("mlp", (8, 8), 10).state_dict(), "arch": "cnn",
                                                    "row_shape": [8, 8], "num_classes": 10}, {})
    with pytest.raises(ConfigError, match=r"odd/checkpoint/rater.pt: the checkpoint "
                       r"\(arch cnn, 8x8 images, 10 classes\) does not load into this version's rater "
                       r"of that config \(Error"):
        load_rater(tmp_path / "odd")
    (tmp_path / "odd" / "checkpoint" / "rater.pt").write_text("hello")  # not a torch file at all
    assert score_main(["--rater", str(tmp_path / "odd"), "--input", str(data), "--output", str(out)]) == 2
    assert one_line_error(capsys).startswith(f"error: {tmp_path / 'odd' / 'checkpoint' / 'rater.pt'}: not a readable "
                                             "checkpoint (")
    torch.save({"rater": object}, tmp_path / "odd" / "checkpoint" / "rater.pt")  # more than tensors: refused
    with pytest.raises(ConfigError, match=r"not a readable checkpoint \(damaged, or holds more than tensors") as info:
        load_rater(tmp_path / "odd")
    assert "weights_only" not in str(info.value)  # no advice to unpickle it unsafely
    assert not out.exists()


def test_rater_may_be_named_by_its_checkpoint_folder_or_file(trained, capsys):
    from drray.curation.scoring import read_rater

    run_dir, data = trained[0], trained[1]
    out = run_dir / "scored"  # inside the run: a later meta-train --overwrite would delete it
    assert score_main(["--rater", str(run_dir / "checkpoint"), "--input", str(data), "--output", str(out)]) == 2
    assert "overlaps --rater" in one_line_error(capsys) and not out.exists()
    blob, info = read_rater(str(run_dir))
    for other in (run_dir / "checkpoint", run_dir / "checkpoint" / "rater.pt"):
        assert read_rater(str(other)) == (blob, info)
        loaded, want = load_rater(other)[0].state_dict(), load_rater(run_dir)[0].state_dict()
        assert loaded.keys() == want.keys() and all(torch.equal(loaded[k], want[k]) for k in want)


def test_input_folder_may_hold_other_files(trained, tmp_path):
    """A filter's output (summary.json beside the shards) reads as an input."""
    from drray.curation.scoring import open_input

    _, data, examples = trained
    (tmp_path / "shards").mkdir()
    shutil.copy(data, tmp_path / "shards" / "part-00000.parquet")
    (tmp_path / "shards" / "summary.json").write_text("{}")
    _, dataset = open_input(str(tmp_path / "shards"))
    assert dataset.count_rows() == len(examples) and [Path(f).name for f in dataset.files] == ["part-00000.parquet"]


def test_job_as_a_command_prints_one_line_errors(trained, tmp_path):
    run_dir, data, _ = trained
    out = tmp_path / "out"
    out.mkdir()
    result = subprocess.run([sys.executable, "-m", "jobs.score", "--rater", str(run_dir), "--input", str(data),
                             "--output", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.strip().splitlines() == [
        f"error: {out} already exists; pass --overwrite to replace it or choose another output"]


def test_scorer_uses_a_gpu_only_when_ray_gave_it_one(monkeypatch):
    """Ray 2.60 leaves CUDA visible to an actor given no GPU: visibility alone must not decide."""
    import ray

    from actors import score_pipeline as scoring

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [])
    assert not scoring._gpus_given()
    monkeypatch.setattr(ray, "get_gpu_ids", lambda: [0])
    assert scoring._gpus_given()

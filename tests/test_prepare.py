"""jobs.prepare: a source -> Parquet splits in drray's schema, the same splits and corruption
as meta-training builds in memory, deterministic for a seed, usable as data.source=parquet
(streamed or not); bad input refused in one line with nothing written."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

from drray.config import DataConfig
from drray.data.parquet import read_parquet
from drray.data.splits import build_splits

ROOT = Path(__file__).resolve().parents[1]
MNIST = ROOT.parent / "shared" / "data" / "mnist"
CORRUPT = "label_flip:0.3,pixel_noise:0.1"


def prepare(capsys, *args):
    from jobs.prepare import main

    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def assert_same_examples(a, b):
    for field in ("ids", "rows", "labels", "is_corrupted", "corruption", "corruption_level"):
        assert np.array_equal(getattr(a, field), getattr(b, field)), field


def test_prepare_digits_matches_meta_training_splits(tmp_path, capsys):
    out = tmp_path / "digits-noisy"
    code, stdout, err = prepare(capsys, "--source", "digits", "--corrupt", CORRUPT, "--shards", 4, "--seed", 3,
                                "--output", out)
    assert code == 0, err
    assert sorted(p.name for p in (out / "train").iterdir()) == [f"part-{i:05d}.parquet" for i in range(4)]
    assert (out / "heldout.parquet").is_file() and (out / "test.parquet").is_file()
    want = build_splits(DataConfig(source="digits", corruption=[{"kind": "label_flip", "fraction": 0.3},
                                                                {"kind": "pixel_noise", "fraction": 0.1}]), 3)
    shards = [read_parquet(out / "train" / f"part-{i:05d}.parquet") for i in range(4)]
    assert max(len(s) for s in shards) - min(len(s) for s in shards) <= 1
    got = build_splits(DataConfig(source="parquet", dir=str(out)), 3)  # shards read back in order
    assert_same_examples(got.train, want.train)
    assert_same_examples(got.heldout, want.heldout)
    assert_same_examples(got.test, want.test)
    assert not got.heldout.is_corrupted.any() and not got.test.is_corrupted.any()
    record = json.loads((out / "prepare.json").read_text())
    n = len(want.train)
    assert record["rows"] == {"train": n, "heldout": len(want.heldout), "test": len(want.test)}
    assert record["corrupted"] == {"label_flip": int(0.3 * n), "pixel_noise": int(0.1 * n)}
    assert record["seed"] == 3 and record["row_shape"] == [8, 8] and record["num_classes"] == 10
    assert f"train: {n} rows" in stdout and "heldout:" in stdout and "test:" in stdout

    streamed = build_splits(DataConfig(source="parquet", dir=str(out), stream=True), 3)
    assert streamed.train is None and streamed.train_path == str(out / "train")
    table = pads.dataset(streamed.train_path, format="parquet").to_table(columns=["id", "is_corrupted"])
    assert table.column("id").to_pylist() == want.train.ids.tolist()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind


def test_prepare_is_deterministic_for_a_seed(tmp_path, capsys):
    args = ["--source", "digits", "--corrupt", CORRUPT, "--shards", 3, "--max-train", 600]
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        assert prepare(capsys, *args, "--seed", seed, "--output", tmp_path / name)[0] == 0
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert len(files) == 6
    for file in files:
        assert (tmp_path / "a" / file).read_bytes() == (tmp_path / "b" / file).read_bytes(), file
    a, c = read_parquet(tmp_path / "a" / "train"), read_parquet(tmp_path / "c" / "train")
    assert len(a) == len(c) == 600 and not np.array_equal(a.ids, c.ids)


@pytest.mark.skipif(not (MNIST / "train-images-idx3-ubyte.gz").exists(), reason="no MNIST files")
def test_prepare_mnist(tmp_path, capsys):
    out = tmp_path / "mnist-noisy"
    code, _, err = prepare(capsys, "--source", "mnist", "--dir", MNIST, "--corrupt", "pixel_noise:0.1,label_flip:0.2",
                           "--shards", 16, "--max-train", 3000, "--output", out)
    assert code == 0, err
    record = json.loads((out / "prepare.json").read_text())
    assert record["rows"]["train"] == 3000 and record["rows"]["test"] == 10_000
    assert record["corrupted"] == {"label_flip": 600, "pixel_noise": 300}
    train = read_parquet(out / "train")
    assert train.rows.shape == (3000, 28, 28) and len(list((out / "train").iterdir())) == 16


def test_overwrite_replaces_an_existing_output(tmp_path, capsys):
    out = tmp_path / "data"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    code, _, err = prepare(capsys, "--max-train", 200, "--output", out, "--overwrite")
    assert code == 0, err
    assert not (out / "stale.txt").exists() and json.loads((out / "prepare.json").read_text())["rows"]["train"] == 200


def test_config_and_set_say_what_is_prepared(tmp_path, capsys):
    """The config's data section and run.seed are prepared; --set overrides the file and a short
    flag (one config key each) overrides --set."""
    config = tmp_path / "data.yaml"
    config.write_text("data: {source: digits, max_train: 300, corruption: [{kind: label_flip, fraction: 0.5}]}\n"
                      "run: {seed: 2}\n")
    code, _, err = prepare(capsys, "--config", config, "--set", "data.max_train=200", "--output", tmp_path / "a")
    assert code == 0, err
    record = json.loads((tmp_path / "a" / "prepare.json").read_text())
    assert record["rows"]["train"] == 200 and record["seed"] == 2 and record["corrupted"] == {"label_flip": 100}
    code, _, err = prepare(capsys, "--config", config, "--set", "data.max_train=200", "--max-train", 250,
                           "--corrupt", "none", "--seed", 5, "--output", tmp_path / "b")
    assert code == 0, err
    record = json.loads((tmp_path / "b" / "prepare.json").read_text())
    assert record["rows"]["train"] == 250 and record["seed"] == 5 and record["corrupted"] == {}
    want = build_splits(DataConfig(source="digits", max_train=250), 5)
    assert_same_examples(read_parquet(tmp_path / "b" / "train"), want.train)


@pytest.mark.parametrize("args,expected", [
    (["--source", "nope"], "data.source: unknown source 'nope'"),
    (["--corrupt", "blur:0.1"], "data.corruption: unknown corruption 'blur'"),
    (["--corrupt", "label_flip=0.1"], "expected KIND:FRACTION"),
    (["--corrupt", "label_flip:lots"], "is not a number"),
    (["--corrupt", "label_flip:1.5"], "data.corruption.0.fraction: Input should be less than or equal to 1"),
    (["--corrupt", "label_flip:0.6,pixel_noise:0.6"], "data.corruption: corruption fractions add up to more than 1"),
    (["--test-fraction", "1.5"], "error: --test-fraction 1.5: data.test_fraction: Input should be less than 1"),
    (["--heldout-fraction", "0"], "data.heldout_fraction: Input should be greater than 0"),
    (["--set", "data.test_fraction=0"], "error: --set data.test_fraction=0: data.test_fraction: Input should be greater than 0"),
    (["--shards", "0"], "--shards must be >= 1"),
    (["--shards", "5000"], "more than the"),
    (["--source", "mnist", "--dir", "/nonexistent/mnist"], "/nonexistent/mnist"),
    (["existing"], "already exists"),
    (["--source", "idx", "--dir", "SUB"], "overlaps data.dir"),  # --overwrite would remove the source
    (["--source", "text"], "error: no data.dir given; set data.dir to a folder of"),
    (["--source", "text", "--dir", "SRC", "--pattern", "/abs/*"], "error: data.pattern '/abs/*': "),
    (["--seq-len", "1"], "error: --seq-len 1: data.seq_len: Input should be greater than or equal to 2"),
])  # fmt: skip
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, args, expected):
    """Even with --overwrite, a refused run leaves an earlier output as it was."""
    out = tmp_path / "sub" / "out"
    out.mkdir(parents=True)
    (out / "mine.txt").write_text("keep")
    (tmp_path / "src").mkdir()
    folders = {"SUB": str(tmp_path / "sub"), "SRC": str(tmp_path / "src")}
    args = [] if args == ["existing"] else [folders.get(a, a) for a in args] + ["--overwrite"]
    before = sorted(tmp_path.rglob("*"))
    code, _, err = prepare(capsys, *args, "--output", out)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], err
    assert sorted(tmp_path.rglob("*")) == before  # nothing written, nothing removed


def test_prepare_job_as_a_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "jobs.prepare", "--corrupt", "label_flip:2",
                             "--output", str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and "data.corruption" in result.stderr
    assert not (tmp_path / "out").exists()


def test_publish_to_a_non_local_filesystem(tmp_path):
    """The URI path: files uploaded one by one under temporary names, prepare.json last."""
    from drray.data.prepare import _publish

    staging = tmp_path / "staging"
    (staging / "train").mkdir(parents=True)
    for name in ("train/part-00000.parquet", "heldout.parquet", "prepare.json"):
        (staging / name).write_text(name)
    (tmp_path / "remote").mkdir()
    calls = []

    class Recording(pafs.SubTreeFileSystem):  # not a LocalFileSystem: takes the upload path
        def move(self, src, dest):
            calls.append(dest)
            return super().move(src, dest)

    fs = Recording(str(tmp_path / "remote"), pafs.LocalFileSystem())
    _publish(staging, fs, "out")
    assert calls[-1] == "out/prepare.json" and len(calls) == 3
    assert (tmp_path / "remote" / "out" / "train" / "part-00000.parquet").read_text() == "train/part-00000.parquet"
    assert not list((tmp_path / "remote").rglob("*.uploading"))

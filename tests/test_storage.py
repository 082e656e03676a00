import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from drray.errors import ConfigError, DataError
from drray.storage import check_local_folder, check_output, check_separate, clear_output, parquet_files


def test_check_output_refuses_existing_unless_overwrite_and_removes_nothing(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "part-0.parquet").write_text("x")
    with pytest.raises(ConfigError, match="already exists; pass --overwrite"):
        check_output(str(target), overwrite=False)
    fs, path = check_output(f"file://{target}", overwrite=True)
    assert (target / "part-0.parquet").exists()  # removed only when the job is ready to write
    clear_output(fs, path)
    assert not target.exists()
    clear_output(fs, path)  # nothing there: nothing to do


def test_an_output_folder_that_cannot_be_made_is_refused_in_one_line(tmp_path):
    (tmp_path / "a_file").write_text("x")
    check_local_folder(str(tmp_path / "new" / "deeper"), "--out")  # a folder to be made: fine
    check_local_folder("s3://bucket/run", "--out")  # not a local path: the filesystem decides
    with pytest.raises(ConfigError, match=r"^--out .*/a_file is a file; give a folder"):
        check_local_folder(str(tmp_path / "a_file"), "--out")
    check_local_folder(str(tmp_path / "a_file"), "--output", may_exist_as_file=True)  # --overwrite replaces it
    under = tmp_path / "a_file" / "sub" / "out"
    with pytest.raises(ConfigError, match=rf"^--output {under}: {tmp_path / 'a_file'} is a file, not a folder"):
        check_output(str(under), overwrite=True)
    assert (tmp_path / "a_file").read_text() == "x"
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match=r"dangling is a link to nothing"):
        check_local_folder(str(tmp_path / "dangling" / "run"), "--out")


def test_parquet_files_reads_past_other_files(tmp_path):
    """A filter's output (part files + summary.json) is an input; a prepare root is not."""
    (tmp_path / "sub").mkdir()
    for name in ("b.parquet", "sub/a.parquet", ".hidden.parquet", "_tmp.parquet"):
        pq.write_table(pa.table({"x": [1]}), tmp_path / name)
    (tmp_path / "summary.json").write_text("{}")
    _, _, files = parquet_files(str(tmp_path))
    assert [f.removeprefix(str(tmp_path)) for f in files] == ["/b.parquet", "/sub/a.parquet"]
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .parquet files in this folder; pass a scored set"):
        parquet_files(str(tmp_path / "empty"), "a scored set")
    with pytest.raises(DataError, match="no such file or folder"):
        parquet_files(str(tmp_path / "missing"))
    (tmp_path / "prepare.json").write_text("{}")  # a jobs.prepare root: train, heldout and test together
    with pytest.raises(DataError, match="a prepared data set .* pass its train/ folder"):
        parquet_files(str(tmp_path))


def test_output_inside_the_input_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="overlaps --input"):
        check_separate(str(tmp_path / "in" / "out"), str(tmp_path / "in"))
    check_separate(str(tmp_path / "in2"), str(tmp_path / "in"))  # a shared prefix is not overlap


def test_atomic_write_syncs_the_file_and_then_its_directory(tmp_path, monkeypatch):
    """The data reaches the disk before the rename, and the rename before the call returns."""
    import os

    from drray.io import atomic_write_bytes

    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(os.path.realpath(f"/proc/self/fd/{fd}")),
                                                 real_fsync(fd)))
    atomic_write_bytes(tmp_path / "x.bin", b"data")
    assert (tmp_path / "x.bin").read_bytes() == b"data"
    assert len(synced) == 2 and synced[0].startswith(str(tmp_path / ".x.bin.")) and synced[1] == str(tmp_path)

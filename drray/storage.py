"""Where a run's outputs live: a local directory, or any pyarrow filesystem URI (s3://, gs://,
hdfs://, file://). For a URI the run writes to a local staging directory that is mirrored to
the URI after every checkpoint and at the end; each file is uploaded under a temporary name and
moved into place, so a reader never sees a half-written file."""
from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from drray.errors import ConfigError, DataError
from drray.io import current_umask

if TYPE_CHECKING:  # pyarrow is imported where a filesystem is used: a local run never loads it (~30 MB)
    import pyarrow.fs as pafs


def is_uri(location: str) -> bool:
    return "://" in str(location)


UPLOADING = ".uploading"  # a file being pushed, moved to its name once whole


class RunDir:
    def __init__(self, location: str, flag: str = "run.out", names: tuple[str, ...] | None = None):
        """flag: how the user gave `location`, for error messages (run.out, --out). names: the
        top-level files and folders the job writes there, the only ones a URI run pulls and
        pushes (None: all), so other files under the prefix are neither copied nor re-uploaded."""
        self.location, self.names = str(location), names
        self.fs = None
        if is_uri(self.location):
            import pyarrow.fs as pafs

            try:
                self.fs, self.remote = pafs.FileSystem.from_uri(self.location)
            except (ValueError, OSError) as exc:
                raise ConfigError(f"{flag} {self.location}: not a filesystem pyarrow can open ({exc})") from None
            self.local = Path(tempfile.mkdtemp(prefix="drray-out-"))
        else:
            self.local = Path(self.location)

    def __enter__(self) -> "RunDir":
        return self

    def __exit__(self, *exc) -> None:
        if self.fs is not None:  # the staging copy of a URI output: everything was pushed (or failed)
            shutil.rmtree(self.local, ignore_errors=True)

    def display(self, relative: str = "") -> str:
        """How to name a file of the run to the user (the URI, not the staging copy)."""
        if self.fs is None:
            return str(self.local / relative) if relative else str(self.local)
        return f"{self.location.rstrip('/')}/{relative}" if relative else self.location

    def _ours(self, relative: Path) -> bool:
        return self.names is None or relative.parts[0].removesuffix(UPLOADING) in self.names

    def _remote_files(self) -> list[pafs.FileInfo]:
        import pyarrow.fs as pafs

        selector = pafs.FileSelector(self.remote, allow_not_found=True, recursive=True)
        return [info for info in self.fs.get_file_info(selector)
                if info.type == pafs.FileType.File and self._ours(Path(info.path).relative_to(self.remote))]

    def pull(self) -> None:
        """Copy an earlier run's files down (to resume it, or to see that one is there). A file a
        cut push left half-uploaded (*.uploading) is deleted: the run writes it again."""
        if self.fs is None:
            return
        for info in self._remote_files():
            if info.path.endswith(UPLOADING):
                self.fs.delete_file(info.path)
                continue
            target = self.local / Path(info.path).relative_to(self.remote)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(info.path) as src:
                target.write_bytes(src.read())

    def push(self) -> None:
        if self.fs is None:
            return
        for path in sorted(p for p in self.local.rglob("*")
                           if p.is_file() and not p.name.startswith(".") and self._ours(p.relative_to(self.local))):
            final = f"{self.remote}/{path.relative_to(self.local).as_posix()}"
            self.fs.create_dir(final.rpartition("/")[0], recursive=True)
            temporary = final + UPLOADING
            with self.fs.open_output_stream(temporary) as dst:
                dst.write(path.read_bytes())
            self.fs.move(temporary, final)

    def clear_remote(self, names: list[str]) -> None:
        if self.fs is None:
            return
        for name in names:
            clear_output(self.fs, f"{self.remote}/{name}")


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any pyarrow filesystem URI."""
    import pyarrow.fs as pafs

    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{location}: not a filesystem pyarrow can open ({exc})") from None
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def check_local_folder(location: str, flag: str, may_exist_as_file: bool = False) -> None:
    """Refuse, in one line, a local output folder that cannot be made: the path is a regular file
    (unless may_exist_as_file: an output that --overwrite replaces) or lies under one."""
    if is_uri(location):
        return
    path = Path(location).absolute()
    for candidate in (path, *path.parents):
        try:
            if candidate.is_dir():
                return
            exists = candidate.exists()
        except OSError as exc:  # e.g. a parent this user may not search
            raise ConfigError(f"{flag} {location}: cannot look at {candidate} ({exc.strerror})") from None
        if not exists and candidate.is_symlink():
            raise ConfigError(f"{flag} {location}: {candidate} is a link to nothing; remove it or choose another {flag}")
        if exists:
            if candidate != path:
                raise ConfigError(f"{flag} {location}: {candidate} is a file, not a folder; choose another {flag}")
            if not may_exist_as_file:
                raise ConfigError(f"{flag} {location} is a file; give a folder (new or empty) for the outputs")
            return


def check_output(location: str, overwrite: bool, flag: str = "--output") -> tuple[pafs.FileSystem, str]:
    """Make sure a job may write `location`: an existing file or directory is refused unless
    overwrite. Nothing is removed here: call clear_output once every other check has passed, so
    a run refused for any reason leaves the old output as it was."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    if fs.get_file_info(path).type != pafs.FileType.NotFound and not overwrite:
        raise ConfigError(f"{location} already exists; pass --overwrite to replace it or choose another output")
    check_local_folder(location, flag, may_exist_as_file=True)
    return fs, path


def overlaps(a: str, b: str) -> bool:
    """Whether two resolved paths are the same or one lies inside the other."""
    a, b = a.rstrip("/"), b.rstrip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


def check_separate(output: str, source: str, flag: str = "--input") -> None:
    """Refuse an output that would replace (or be written inside) what the job reads."""
    (out_fs, out_path), (in_fs, in_path) = resolve(output), resolve(source)
    if type(out_fs) is type(in_fs) and overlaps(out_path, in_path):
        raise ConfigError(f"--output {output} overlaps {flag} {source}; write somewhere else")


def remove_local(path: Path) -> None:
    """Remove a local file or directory, if there is one (clear_output without loading pyarrow)."""
    shutil.rmtree(path) if path.is_dir() else path.unlink(missing_ok=True)


def clear_output(fs: pafs.FileSystem, path: str) -> None:
    """Remove a file or directory, if there is one."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    if info.type == pafs.FileType.Directory:
        fs.delete_dir(path)
    elif info.type == pafs.FileType.File:
        fs.delete_file(path)


def parquet_files(location: str, what: str = "a Parquet file or a folder of Parquet shards") -> tuple[
        pafs.FileSystem, str, list[str]]:
    """(filesystem, path, sorted .parquet files) of a file or a folder, searched recursively.
    Other files (a filter's summary.json) and names starting with '.' or '_' are left out, so
    the output of one job reads as the input of the next; a jobs.prepare root (prepare.json) is
    refused, as its splits are not one data set."""
    import pyarrow.fs as pafs

    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type == pafs.FileType.NotFound:
        raise DataError(f"{location}: no such file or folder; pass {what}")
    if info.type == pafs.FileType.File:
        return fs, path, [path]
    if fs.get_file_info(f"{path.rstrip('/')}/prepare.json").type == pafs.FileType.File:
        raise DataError(f"{location}: a prepared data set (train, heldout and test splits); pass its train/ "
                        "folder to score or filter the training rows")
    selector = pafs.FileSelector(path, recursive=True)
    files = sorted(
        entry.path for entry in fs.get_file_info(selector)
        if entry.type == pafs.FileType.File and entry.path.endswith(".parquet")
        and not any(part.startswith((".", "_")) for part in entry.path[len(path):].split("/") if part)
    )  # fmt: skip
    if not files:
        raise DataError(f"{location}: no .parquet files in this folder; pass {what}")
    return fs, path, files


def staging_dir_beside(path: str) -> Path:
    """A hidden directory beside a local output, so that moving it into place is one rename on
    one filesystem; its mode is what a plain mkdir gives (mkdtemp's 0700 would become the output's)."""
    parent = Path(path).parent
    parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{Path(path).name}.", suffix=".partial", dir=parent))
    staging.chmod(0o777 & ~current_umask())
    return staging


@contextmanager
def replacing_output(fs: pafs.FileSystem, path: str):
    """Yields where a job writes its new output; when the block ends without error, the output
    replaces whatever was at `path`. Locally it is written in a hidden folder beside `path` and
    renamed into place, so a failed job leaves the old output as it was. For a URI it is written
    in place (the old output removed first) and removed again if the job fails."""
    import pyarrow.fs as pafs

    if isinstance(fs, pafs.LocalFileSystem):
        staging = staging_dir_beside(path)
        try:
            yield str(staging / "output")
            clear_output(fs, path)
            os.rename(staging / "output", path)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return
    clear_output(fs, path)
    try:
        yield path
    except BaseException:
        clear_output(fs, path)
        raise

"""Where a run's outputs live: a local directory, or any pyarrow filesystem URI (s3://, gs://,
hdfs://, file://). For a URI the run writes to a local staging directory that is mirrored to
the URI after every checkpoint and at the end; each file is uploaded under a temporary name and
moved into place, so a reader never sees a half-written file."""
from __future__ import annotations

import tempfile
from pathlib import Path

import pyarrow.fs as pafs

from drray.errors import ConfigError


def is_uri(location: str) -> bool:
    return "://" in str(location)


class RunDir:
    def __init__(self, location: str):
        self.location = str(location)
        self.fs = None
        if is_uri(self.location):
            try:
                self.fs, self.remote = pafs.FileSystem.from_uri(self.location)
            except (ValueError, OSError) as exc:
                raise ConfigError(f"run.out={self.location}: not a filesystem pyarrow can open ({exc})") from None
            self.local = Path(tempfile.mkdtemp(prefix="drray-out-"))
        else:
            self.local = Path(self.location)

    def display(self, relative: str = "") -> str:
        """How to name a file of the run to the user (the URI, not the staging copy)."""
        if self.fs is None:
            return str(self.local / relative) if relative else str(self.local)
        return f"{self.location.rstrip('/')}/{relative}" if relative else self.location

    def _remote_files(self) -> list[pafs.FileInfo]:
        selector = pafs.FileSelector(self.remote, allow_not_found=True, recursive=True)
        return [info for info in self.fs.get_file_info(selector) if info.type == pafs.FileType.File]

    def pull(self) -> None:
        """Copy an earlier run's files down (to resume it, or to see that one is there)."""
        if self.fs is None:
            return
        for info in self._remote_files():
            target = self.local / Path(info.path).relative_to(self.remote)
            target.parent.mkdir(parents=True, exist_ok=True)
            with self.fs.open_input_stream(info.path) as src:
                target.write_bytes(src.read())

    def push(self) -> None:
        if self.fs is None:
            return
        for path in sorted(p for p in self.local.rglob("*") if p.is_file() and not p.name.startswith(".")):
            final = f"{self.remote}/{path.relative_to(self.local).as_posix()}"
            self.fs.create_dir(final.rpartition("/")[0], recursive=True)
            temporary = final + ".uploading"
            with self.fs.open_output_stream(temporary) as dst:
                dst.write(path.read_bytes())
            self.fs.move(temporary, final)

    def clear_remote(self, names: list[str]) -> None:
        if self.fs is None:
            return
        for name in names:
            target = f"{self.remote}/{name}"
            info = self.fs.get_file_info(target)
            if info.type == pafs.FileType.Directory:
                self.fs.delete_dir(target)
            elif info.type == pafs.FileType.File:
                self.fs.delete_file(target)


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path) for a local path or any pyarrow filesystem URI."""
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(location)
        except (ValueError, OSError) as exc:
            raise ConfigError(f"{location}: not a filesystem pyarrow can open ({exc})") from None
    return pafs.LocalFileSystem(), str(Path(location).resolve())


def claim_output(location: str, overwrite: bool) -> tuple[pafs.FileSystem, str]:
    """Make sure a job may write `location`: an existing file or directory is refused unless
    overwrite, and then removed. Call before any work, so a refusal leaves nothing half-done."""
    fs, path = resolve(location)
    info = fs.get_file_info(path)
    if info.type != pafs.FileType.NotFound:
        if not overwrite:
            raise ConfigError(f"{location} already exists; pass --overwrite to replace it or choose another output")
        fs.delete_dir(path) if info.type == pafs.FileType.Directory else fs.delete_file(path)
    return fs, path

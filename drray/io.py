"""Local file plumbing every part shares: atomic writes, YAML errors in one line, path checks."""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Optional

import yaml

from drray.errors import ConfigError


def current_umask() -> int:
    """The process's umask, read without setting it (os.umask would, for a moment, for every thread)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: the only portable way is to set it and put it back
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~current_umask())  # mkstemp's 0600 would hide a shared run
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    _fsync_directory(path.parent)


def _fsync_directory(directory: Path) -> None:
    """Makes the rename itself durable: without it a power loss can bring back the old name."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems (NFS, some FUSE) cannot fsync a directory
        pass
    finally:
        os.close(fd)


def atomic_torch_save(obj, path: Path) -> None:
    import torch  # here: the config, which imports this module, loads without torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def yaml_error(path: Path, exc: yaml.YAMLError) -> ConfigError:
    """`FILE:LINE:COLUMN: not valid YAML (what the parser expected)`, on one line."""
    mark = getattr(exc, "problem_mark", None)
    where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(f"{where}: not valid YAML ({problem})".replace("\n", " "))


def first_existing(*candidates: Path) -> Optional[Path]:
    return next((path for path in candidates if path.exists()), None)


def not_a_folder(path: Path) -> str:
    """Why `path` is no folder to read: it is a file, or it is not there."""
    return "is a file, not a folder" if path.exists() else "does not exist"

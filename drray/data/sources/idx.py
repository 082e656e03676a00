"""MNIST-format (IDX) data: the `idx` source for any such directory, and `mnist`, the same with
MNIST's checksums and a real download for machines that are online."""
from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.request
from pathlib import Path
from typing import Optional

import numpy as np

from drray.config import DataConfig
from drray.data.examples import ExampleSet
from drray.errors import DataError
from drray.io import atomic_write_bytes, first_existing, not_a_folder
from drray.registry import DATA_SOURCES

IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


MNIST_MD5 = dict(zip(IDX_FILES, (
    "6bbc9ace898e44ae57da46a324031adb", "a25bea736e30d166cdddb491f175f624",
    "2646ac647ad5339dbf082846283269ea", "27ae3e4e09519cfbb04c329615203637",
)))  # fmt: skip


MNIST_MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


def read_idx(path: Path, ndim: int) -> tuple[np.ndarray, bytes]:
    """(read-only array, decompressed bytes) of a uint8 IDX file with `ndim` dims, plain or .gz."""
    try:
        raw = gzip.decompress(Path(path).read_bytes()) if str(path).endswith(".gz") else Path(path).read_bytes()
    except (OSError, EOFError) as exc:  # a damaged gzip stream is one of these too
        raise DataError(f"{path}: cannot read ({exc}); re-download the file".replace("\n", " ")) from None
    header = 4 + 4 * ndim
    if raw[:4] != struct.pack(">I", 0x0800 | ndim):
        magic = raw[:4].hex() or "missing"
        raise DataError(f"{path}: not a uint8 IDX file with {ndim} dims (magic {magic}); check the file")
    if len(raw) < header:
        raise DataError(f"{path}: IDX header truncated at {len(raw)} bytes; re-download the file")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != np.prod(shape, dtype=np.int64):
        raise DataError(f"{path}: header says {shape}, but {len(raw) - header} data bytes follow; re-download the file")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape), raw


def _find(directory: Path, name: str) -> Optional[Path]:
    return first_existing(directory / name, directory / f"{name}.gz")


def _read_idx_split(directory: Path, prefix: str, checksums: Optional[dict[str, str]]):
    """(images, labels) of the `prefix` ("train" or "t10k") files, md5-checked against `checksums`."""
    arrays = []
    for name, ndim in ((f"{prefix}-images-idx3-ubyte", 3), (f"{prefix}-labels-idx1-ubyte", 1)):
        path = _find(directory, name)
        if path is None:
            raise DataError(f"{directory / name}[.gz]: file missing; set data.dir to an MNIST-format directory")
        array, raw = read_idx(path, ndim)
        digest = hashlib.md5(raw).hexdigest()
        if checksums is not None and digest != checksums[name]:
            raise DataError(
                f"{path}: md5 of the decompressed bytes is {digest}, expected {checksums[name]}; the file is damaged "
                "or not MNIST, re-download it (or use data.source=idx for other IDX data)"
            )
        arrays.append((path, array))
    (images_path, images), (labels_path, labels) = arrays
    if len(images) != len(labels):
        raise DataError(f"{labels_path}: {len(labels)} labels for {len(images)} images in {images_path.name}; fix one")
    return images, labels


def _load_idx_dir(directory: Path, checksums: Optional[dict[str, str]], num_classes: Optional[int]):
    if not directory.is_dir():
        raise DataError(f"data.dir {directory} {not_a_folder(directory)}; set data.dir to an MNIST-format directory")
    (train_images, train_labels), (test_images, test_labels) = (
        _read_idx_split(directory, prefix, checksums) for prefix in ("train", "t10k")
    )
    if num_classes is None:  # idx: ten classes unless the labels say more
        num_classes = max(10, int(max(train_labels.max(initial=0), test_labels.max(initial=0))) + 1)
    n_train = len(train_images)  # test ids follow the train ids, so ids are unique over both
    return (
        ExampleSet.clean(np.arange(n_train), train_images, train_labels, num_classes),
        ExampleSet.clean(n_train + np.arange(len(test_images)), test_images, test_labels, num_classes),
    )


@DATA_SOURCES.register("idx")
def load_idx_source(cfg: DataConfig):
    """Any MNIST-format directory: {train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]."""
    if cfg.dir is None:
        raise DataError("data.source=idx needs data.dir; set it to an MNIST-format directory")
    return _load_idx_dir(Path(cfg.dir), None, None)


@DATA_SOURCES.register("mnist")
def load_mnist_source(cfg: DataConfig):
    """MNIST, checksum-verified; from data.dir (default ../shared/data/mnist), or downloaded."""
    directory = Path(cfg.dir) if cfg.dir is not None else Path("..") / "shared" / "data" / "mnist"
    missing = [name for name in IDX_FILES if _find(directory, name) is None]
    if missing and cfg.download:
        download_mnist(directory, missing)
    elif missing:
        raise DataError(
            f"{directory / missing[0]}[.gz]: MNIST file missing; set data.dir to the MNIST folder or data.download=true"
        )
    return _load_idx_dir(directory, MNIST_MD5, 10)


def download_mnist(directory: Path, names=IDX_FILES, mirrors=MNIST_MIRRORS) -> None:
    """Fetch `names` (.gz) from the first mirror that answers; md5-verified, written atomically."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in names:
        errors = []
        for mirror in mirrors:
            try:
                with urllib.request.urlopen(f"{mirror}{name}.gz", timeout=60) as response:
                    payload = response.read()
                digest = hashlib.md5(gzip.decompress(payload)).hexdigest()
            except (OSError, EOFError) as exc:  # URLError is an OSError; so is a bad gzip stream
                errors.append(f"{mirror}: {exc}")
                continue
            if digest != MNIST_MD5[name]:
                errors.append(f"{mirror}: md5 {digest} != {MNIST_MD5[name]}")
                continue
            atomic_write_bytes(directory / f"{name}.gz", payload)
            break
        else:
            detail = "; ".join(errors).replace("\n", " ")
            raise DataError(f"{directory / name}.gz: download failed ({detail}); copy the file there by hand")

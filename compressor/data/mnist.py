"""Read MNIST from its four standard IDX files into uint8 tensors.

The files (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte``,
``t10k-labels-idx1-ubyte``, each plain or gzipped) are looked for directly in the data directory,
then under ``MNIST/raw/`` (torchvision's layout). IDX is parsed here with numpy: the magic number,
the element type, the dimensions and the payload size are all checked, so a damaged or truncated
file is reported by name instead of producing garbage.
"""
from __future__ import annotations

import gzip
import os
import zlib
from typing import Dict, List

import numpy as np
import torch

from .base import ArraySplits, DatasetError

MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
MNIST_SUBDIR = os.path.join("MNIST", "raw")

# IDX type codes (third byte of the magic number) -> big-endian numpy dtype.
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str) -> np.ndarray:
    """Parse one IDX file (plain, or gzipped when the name ends in ``.gz``) into a numpy array.

    Raises ``DatasetError`` naming the file when it cannot be read, its magic number is not IDX, or
    its payload is shorter or longer than its header says.
    """
    try:
        if path.endswith(".gz"):
            with gzip.open(path, "rb") as f:
                raw = f.read()
        else:
            with open(path, "rb") as f:
                raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        # gzip.BadGzipFile is an OSError; a truncated gzip stream raises EOFError.
        raise DatasetError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4:
        raise DatasetError(f"{path} is not an IDX file: only {len(raw)} bytes")
    zero, type_code, ndim = int.from_bytes(raw[0:2], "big"), raw[2], raw[3]
    if zero != 0 or type_code not in _IDX_TYPES or ndim == 0:
        raise DatasetError(f"{path} is not an IDX file: bad magic number 0x{raw[:4].hex()}")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"{path} is truncated: header needs {header} bytes, file has {len(raw)}")
    shape = tuple(int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_IDX_TYPES[type_code])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    got = len(raw) - header
    if got != expected:
        what = "truncated" if got < expected else "longer than its header says"
        raise DatasetError(f"{path} is {what}: shape {shape} needs {expected} bytes of data, "
                           f"file has {got}")
    arr = np.frombuffer(raw, dtype=dtype, count=expected // dtype.itemsize, offset=header)
    return arr.reshape(shape).astype(dtype.newbyteorder("="), copy=False)


def expected_mnist_files(data_dir: str) -> str:
    """The one-line description of what we look for, used in 'not found' errors."""
    names = ", ".join(f"{n}[.gz]" for n in MNIST_FILES.values())
    return f"expected {names} in {data_dir} or {os.path.join(data_dir, MNIST_SUBDIR)}"


def find_mnist(data_dir: str) -> Dict[str, str]:
    """Paths of the four MNIST files, from the first layout that holds all four.

    Each file may be plain or gzipped independently (plain wins when both exist).
    """
    for folder in (data_dir, os.path.join(data_dir, MNIST_SUBDIR)):
        found: Dict[str, str] = {}
        for key, name in MNIST_FILES.items():
            for candidate in (name, name + ".gz"):
                path = os.path.join(folder, candidate)
                if os.path.isfile(path):
                    found[key] = path
                    break
        if len(found) == len(MNIST_FILES):
            return found
    reason = "" if os.path.isdir(data_dir) else " (no such directory)"
    raise DatasetError(f"MNIST not found in {data_dir}{reason}: {expected_mnist_files(data_dir)}")


def _check(arr: np.ndarray, path: str, ndim: int, magic: int) -> None:
    if arr.dtype != np.uint8 or arr.ndim != ndim:
        raise DatasetError(f"{path} has the wrong IDX header for MNIST: expected magic number "
                           f"{magic} (uint8, {ndim} dimensions), got {arr.dtype} with shape "
                           f"{arr.shape}")


def load_mnist(data_dir: str) -> ArraySplits:
    """MNIST as uint8 images (N, 1, 28, 28) and int64 labels: 60000 training, 10000 test."""
    paths = find_mnist(data_dir)
    out: List[torch.Tensor] = []
    for split in ("train", "test"):
        ip, lp = paths[f"{split}_images"], paths[f"{split}_labels"]
        images, labels = read_idx(ip), read_idx(lp)
        _check(images, ip, 3, 2051)
        _check(labels, lp, 1, 2049)
        if images.shape[1:] != (28, 28):
            raise DatasetError(f"{ip} holds {images.shape[1]}x{images.shape[2]} images; "
                               f"MNIST images are 28x28")
        if len(images) != len(labels):
            raise DatasetError(f"{ip} holds {len(images)} images but {lp} holds {len(labels)} "
                               f"labels")
        if len(labels) and labels.max() > 9:
            raise DatasetError(f"{lp} has label {int(labels.max())}; MNIST labels are 0-9")
        out.append(torch.from_numpy(images.copy()).unsqueeze(1))
        out.append(torch.from_numpy(labels.astype(np.int64)))
    return ArraySplits(out[0], out[1], out[2], out[3], tuple(str(d) for d in range(10)))

